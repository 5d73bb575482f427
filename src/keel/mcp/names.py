"""Names of upstream MCP tools inside Keel: ``<upstream>.<tool>``, canonical and collision-free.

An upstream's tool names are whatever its author chose (``get_current_time``, ``echoText``,
``read-file``). Keel maps each to one canonical segment — ASCII letters, digits, ``_`` and ``-``,
camelCase split into snake_case — and prefixes the upstream's alias, so two upstreams can never
shadow each other (ATTACKS.md #28) and a policy matches on (server, tool). A name with anything
else in it (a Cyrillic ``е``, a zero-width joiner, a full-width letter: #29) is refused, not
folded: a look-alike must never reach a rule written for another tool. Two upstream names that
map to the same Keel name (``getTime`` and ``get_time``) are both refused rather than resolved
by order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from keel.errors import InvalidRequestError
from keel.tools.names import MAX_NAME_LENGTH, check_tool_name, describe_char

__all__ = ["check_alias", "keel_names", "keel_tool_name"]

_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_UPSTREAM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def check_alias(alias: object) -> str:
    """An upstream's alias (the first segment of its tools' names): one lowercase segment."""
    if isinstance(alias, str) and _ALIAS.fullmatch(alias):
        return alias
    raise InvalidRequestError(
        f"upstream name {alias!r} is not valid: one lowercase segment such as 'crm' or "
        "'time-server' (letters, digits, '_' and '-', starting with a letter, at most 63)",
        code="invalid_upstream_name",
    )


def keel_tool_name(alias: str, upstream_name: object) -> str:
    """The Keel name of ``upstream_name`` offered by upstream ``alias``; InvalidRequestError
    naming the offending character if it cannot be mapped without folding."""
    if not isinstance(upstream_name, str):
        raise InvalidRequestError(
            f"upstream {alias} offered a tool name that is not a string", code="invalid_tool_name"
        )
    if not _UPSTREAM_NAME.fullmatch(upstream_name):
        for index, ch in enumerate(upstream_name):
            if not (ch.isascii() and (ch.isalnum() or ch in "_-")):
                raise InvalidRequestError(
                    f"upstream {alias} offers a tool named "
                    f"{upstream_name.encode('unicode_escape').decode()!r} with "
                    f"{describe_char(ch)} at position {index}; only ASCII letters, digits, '_' "
                    "and '-' are accepted in upstream tool names",
                    code="invalid_tool_name",
                    context={"upstream": alias, "position": index},
                )
        raise InvalidRequestError(
            f"upstream {alias} offers a tool named {upstream_name!r}, which does not start "
            "with a letter",
            code="invalid_tool_name",
            context={"upstream": alias},
        )
    segment = _CAMEL.sub("_", upstream_name).lower()
    name = f"{alias}.{segment}"
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequestError(
            f"upstream {alias} offers a tool name of {len(upstream_name)} characters; Keel "
            f"names are at most {MAX_NAME_LENGTH}",
            code="invalid_tool_name",
            context={"upstream": alias},
        )
    return check_tool_name(name)


def keel_names(alias: str, upstream_names: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Map an upstream's offered names: ``(keel name -> upstream name, refused name -> why)``.

    Names that collide after mapping are all refused; so are names offered twice.
    """
    mapped: dict[str, list[str]] = {}
    refused: dict[str, str] = {}
    for upstream_name in upstream_names:
        try:
            name = keel_tool_name(alias, upstream_name)
        except InvalidRequestError as exc:
            refused[str(upstream_name)] = exc.message
            continue
        mapped.setdefault(name, []).append(upstream_name)
    accepted: dict[str, str] = {}
    for name, sources in mapped.items():
        if len(sources) == 1:
            accepted[name] = sources[0]
            continue
        for source in sources:
            refused[source] = (
                f"upstream {alias} offers {len(sources)} tools that all map to {name!r} "
                f"({', '.join(repr(s) for s in sorted(sources))}); none is exposed"
            )
    return accepted, refused
