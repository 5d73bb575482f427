"""Argument screening for upstream MCP tools: paths and URLs the gateway will not pass on.

An upstream tool does its own I/O, so Keel can only stop what it is handed. Besides the pinned
JSON schema, every string in a call's arguments is checked:

- **Paths** (ATTACKS.md #30): a string that looks like a path (by its argument name, or by its
  shape: ``/``, ``~``, ``\\``, ``C:\\``) may not contain a NUL byte, a ``..`` segment (also
  percent-encoded, once or twice), a ``~`` home reference or a Windows device/UNC prefix
  (``\\\\?\\``, ``\\\\.\\``, ``\\\\server``). With ``path_roots`` configured for the upstream, an
  absolute path must lie under one of them once symlinks are resolved (on this machine: stdio
  upstreams run here), so a link pointing outside is refused too.
- **URLs** (#31): a string with a scheme (``x://``) must be http(s) and pass the egress policy
  (``keel.net``): no loopback, private, link-local or metadata addresses unless ``egress_allow``
  lets them, resolved now, a name that does not resolve refused. The upstream fetches it, so
  Keel cannot pin the address; it refuses what it can see is wrong.

A refusal is an ``AuthorizationError`` (``path_refused`` / ``egress_denied``): the call is
denied and recorded before anything reaches the upstream.
"""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from keel.errors import AuthorizationError, EgressDenied, InvalidRequestError, ToolError
from keel.net import EgressPolicy
from keel.tools import ArgumentValidator
from keel.tools.names import describe_char

__all__ = ["ScreenedArguments", "check_path", "check_url"]

_PATH_NAMES = re.compile(
    r"(^|_)(path|paths|file|files|filename|filepath|dir|dirs|directory|folder|root|cwd|"
    r"source|destination|dest|target)($|_)",
    re.IGNORECASE,
)
_SCHEME = re.compile(
    r"^\s*([A-Za-z][A-Za-z0-9+.-]{0,30}://|(file|gopher|dict|ldap|jar|netdoc|ftp|sftp|tftp):)",
    re.IGNORECASE,
)
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_DEVICE = re.compile(r"^(\\\\|//)[?.]?[\\/]?")


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    stack: list[tuple[Any, str]] = [(value, key)]
    while stack:
        item, name = stack.pop()
        if isinstance(item, str):
            yield name, item
        elif isinstance(item, Mapping):
            stack.extend((v, str(k)) for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((v, name) for v in item)


def _decoded(text: str) -> list[str]:
    forms = [text]
    for _ in range(3):
        nxt = urllib.parse.unquote(forms[-1])
        if nxt == forms[-1]:
            break
        forms.append(nxt)
    return forms


def _looks_like_path(name: str, text: str) -> bool:
    if _PATH_NAMES.search(name):
        return True
    return text.startswith(("/", "~", "\\", "./", "../")) or bool(_DRIVE.match(text))


def check_path(tool: str, name: str, text: str, roots: Sequence[str]) -> None:
    """Refuse a path-like argument that escapes (see the module docstring)."""

    def refuse(why: str) -> AuthorizationError:
        return AuthorizationError(
            f"argument {name!r} of {tool} is refused: {why}",
            code="path_refused",
            context={"tool": tool, "argument": name, "reason": why},
        )

    for form in _decoded(text):
        if "\x00" in form:
            raise refuse("it contains a NUL byte")
        normalized = form.replace("\\", "/")
        if ".." in normalized.split("/"):
            raise refuse("it contains a '..' segment (path traversal)")
        if _DEVICE.match(form):
            raise refuse("Windows device and UNC paths are not accepted")
        if form.startswith("~"):
            raise refuse("home-directory references ('~') are not accepted")
    if roots and (text.startswith("/") or _DRIVE.match(text)):
        real = os.path.realpath(text)
        for root in roots:
            base = os.path.realpath(root)
            if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
                return
        raise refuse(
            f"it is outside the allowed folders ({', '.join(roots)}) once links are resolved"
        )


def check_url(tool: str, name: str, text: str, egress: EgressPolicy) -> None:
    """Refuse a URL argument the egress policy refuses (or that does not resolve)."""
    try:
        egress.resolve(text.strip())
    except EgressDenied as exc:
        raise EgressDenied(
            f"argument {name!r} of {tool}: {exc.message}",
            context={**exc.context, "tool": tool, "argument": name},
        ) from None
    except ToolError:
        raise EgressDenied(
            f"argument {name!r} of {tool}: its host does not resolve here, so Keel cannot "
            "check where it points; refused",
            context={"tool": tool, "argument": name, "reason": "dns"},
        ) from None


def check_keys(tool: str, raw: Any) -> None:
    """Refuse argument names (at any depth) that are not what they look like: invisible
    characters, or text that Unicode normalization (NFKC) would change — a full-width letter, a
    ligature, a look-alike composed form (ATTACKS.md #29). An upstream schema that accepts any
    property would otherwise let ``аmount`` (Cyrillic а) slip past a rule on ``amount``."""
    stack: list[Any] = [raw]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for key, value in item.items():
                text = str(key)
                bad = next((ch for ch in text if _invisible_char(ch)), None)
                if bad is None and unicodedata.normalize("NFKC", text) != text:
                    bad = next(ch for ch in text if unicodedata.normalize("NFKC", ch) != ch)
                if bad is None and not text.isascii() and _mixed_scripts(text):
                    bad = next(ch for ch in text if not ch.isascii())
                if bad is not None:
                    raise InvalidRequestError(
                        f"argument name {text.encode('unicode_escape').decode()!r} of {tool} "
                        f"contains {describe_char(bad)}; argument names must be plain text",
                        code="invalid_arguments",
                        context={"tool": tool},
                    )
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _invisible_char(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cf", "Cc", "Co", "Cn")


def _mixed_scripts(text: str) -> bool:
    """Latin letters mixed with letters of another script in one name (``pаyee``)."""
    scripts = set()
    for ch in text:
        if ch.isalpha():
            scripts.add(unicodedata.name(ch, "?").split(" ")[0])
    return len(scripts) > 1


class ScreenedArguments:
    """An argument validator: the upstream's schema, then the path and URL screens."""

    __slots__ = ("_egress", "_inner", "_roots", "json_schema")

    def __init__(
        self, inner: ArgumentValidator, *, egress: EgressPolicy, roots: Sequence[str] = ()
    ) -> None:
        self._inner = inner
        self._egress = egress
        self._roots = tuple(roots)
        self.json_schema = inner.json_schema

    def validate(self, tool: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(tool, raw)
        arguments = self._inner.validate(tool, raw)
        for name, text in _strings(arguments):
            if _SCHEME.match(text) and not _DRIVE.match(text):
                check_url(tool, name, text, self._egress)
            elif _looks_like_path(name, text) or "\x00" in text:
                check_path(tool, name, text, self._roots)
        return arguments
