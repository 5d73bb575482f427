"""Canonical tool names.

A tool name is lowercase ASCII: segments of ``[a-z][a-z0-9_-]*`` joined by dots
(``billing.refund``, ``crm.contacts.update``), at most 128 characters. Anything else is refused
with a message naming the offending character, so a look-alike (Cyrillic ``е`` in ``gеt_time``),
a zero-width joiner or a full-width letter can never register a tool or match a policy rule meant
for another one (ATTACKS.md #29).
"""

from __future__ import annotations

import re
import unicodedata

from keel.errors import InvalidRequestError

__all__ = ["MAX_NAME_LENGTH", "check_model_name", "check_tool_name", "describe_char"]

MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)*")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")


def describe_char(ch: str) -> str:
    name = unicodedata.name(ch, "unnamed character")
    return f"U+{ord(ch):04X} {name}"


def check_tool_name(name: object, *, what: str = "tool name") -> str:
    """Return ``name`` if it is canonical, else raise InvalidRequestError saying why."""
    if not isinstance(name, str):
        raise InvalidRequestError(
            f"{what} must be a string, got {type(name).__name__}", code="invalid_tool_name"
        )
    if _NAME.fullmatch(name) and len(name) <= MAX_NAME_LENGTH:
        return name
    if not name:
        raise InvalidRequestError(f"{what} is empty", code="invalid_tool_name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequestError(
            f"{what} is {len(name)} characters; at most {MAX_NAME_LENGTH} are allowed",
            code="invalid_tool_name",
        )
    for index, ch in enumerate(name):
        if not ch.isascii():
            folded = unicodedata.normalize("NFKC", ch)
            hint = f" (looks like {folded!r})" if folded.isascii() and folded != ch else ""
            raise InvalidRequestError(
                f"{what} {name.encode('unicode_escape').decode()!r} contains non-ASCII "
                f"character {describe_char(ch)} at position {index}{hint}; tool names are "
                "lowercase ASCII letters, digits, '_', '-' and '.'",
                code="invalid_tool_name",
                context={"position": index, "codepoint": f"U+{ord(ch):04X}"},
            )
    raise InvalidRequestError(
        f"{what} {name!r} is not canonical: use dot-separated lowercase segments that start "
        "with a letter, e.g. 'billing.refund'",
        code="invalid_tool_name",
    )


def check_model_name(name: object) -> str:
    """Model names are looser than tool names (``gpt-4.1-mini``, ``llama3.1:8b``,
    ``meta-llama/Llama-3-8B``) but still printable ASCII only: no look-alikes, no invisible
    characters."""
    if isinstance(name, str) and _MODEL_NAME.fullmatch(name) and len(name) <= MAX_NAME_LENGTH:
        return name
    if isinstance(name, str):
        for index, ch in enumerate(name):
            if not ch.isascii() or not ch.isprintable():
                raise InvalidRequestError(
                    f"model name {name.encode('unicode_escape').decode()!r} contains "
                    f"{describe_char(ch)} at position {index}; model names are printable ASCII",
                    code="invalid_model_name",
                    context={"position": index},
                )
    raise InvalidRequestError(
        f"model name {name!r} is not valid: letters, digits and . _ : / @ + - only, at most "
        f"{MAX_NAME_LENGTH} characters",
        code="invalid_model_name",
    )
