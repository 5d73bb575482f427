"""Canonical JSON, digests, and strict parsing of untrusted JSON.

Canonical JSON (sorted keys, no insignificant whitespace, UTF-8, no NaN/Infinity) is what every
hash in Keel is computed over: audit chain entries, argument digests, idempotency fingerprints and
approval bindings. Two equal values always give the same bytes.

``parse_json`` is the only way untrusted JSON text enters Keel: it refuses duplicate keys (a
parser differential between the policy check and the tool is an attack, ATTACKS.md #7), NaN and
Infinity, text over a size cap and nesting deeper than a depth cap, without recursing in Python.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from keel.errors import InvalidRequestError, PayloadTooLargeError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "canonical_json",
    "check_depth",
    "check_limits",
    "digest",
    "parse_json",
    "sha256_hex",
]

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 64


def _default(value: object) -> object:
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise InvalidRequestError(f"non-finite number {value} cannot be encoded as JSON")
        return str(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.hex()
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    raise InvalidRequestError(
        f"value of type {type(value).__name__} cannot be encoded as JSON",
        context={"type": type(value).__name__},
    )


_ENCODER = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    default=_default,
)


def canonical_json(value: Any) -> str:
    """Encode ``value`` as canonical JSON text (raises InvalidRequestError if it cannot)."""
    try:
        return _ENCODER.encode(value)
    except ValueError as exc:  # NaN / Infinity, circular references
        raise InvalidRequestError(f"value cannot be encoded as canonical JSON: {exc}") from None


def sha256_hex(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def digest(value: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + sha256_hex(canonical_json(value))


def _reject_constant(name: str) -> Any:
    raise InvalidRequestError(f"JSON constant {name} is not allowed")


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequestError(
                f"duplicate JSON key {key!r}: each key may appear once per object",
                code="duplicate_key",
                context={"key": key},
            )
        result[key] = value
    return result


#: What the depth scan must look at: brackets, quotes and backslashes (one character class, so
#: the regex engine skips the text between them quickly).
_STRUCTURE = re.compile(r'[\\"\[\]{}]')


def _text_depth(text: str) -> int:
    """Maximum bracket nesting of JSON text, ignoring brackets inside strings. No recursion.

    Jumps from one structural character to the next (a regex does the scanning), so text with
    long strings costs little Python work."""
    depth = best = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURE.finditer(text):
        ch = match.group()
        at = match.start()
        if at == escaped_at:  # the character after a backslash in a string is text
            continue
        if ch == "\\":
            if in_string:
                escaped_at = at + 1
        elif ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "[{":
            depth += 1
            if depth > best:
                best = depth
        else:
            depth -= 1
    return best


def _text_depth_slow(text: str) -> int:
    """The character-by-character reference for ``_text_depth`` (used by the tests)."""
    depth = best = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > best:
                best = depth
        elif ch in "]}":
            depth -= 1
    return best


def parse_json(
    data: str | bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    what: str = "JSON body",
) -> Any:
    """Parse untrusted JSON strictly: size cap, depth cap, no duplicate keys, no NaN/Infinity."""
    size = len(data)
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes; the limit is {max_bytes} bytes",
            context={"size": size, "limit": max_bytes},
        )
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"{what} is not valid UTF-8: {exc}") from None
    else:
        text = data
    if ("[" in text or "{" in text) and _text_depth(text) > max_depth:
        raise PayloadTooLargeError(
            f"{what} nests deeper than {max_depth} levels",
            code="too_deep",
            context={"limit": max_depth},
        )
    try:
        value = json.loads(
            text, object_pairs_hook=_pairs_no_duplicates, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="malformed_json",
            context={"line": exc.lineno, "column": exc.colno},
        ) from None
    if "\\u" in text and _has_lone_surrogate(value):
        raise InvalidRequestError(
            f"{what} escapes a lone surrogate (\\ud800-\\udfff): that is not Unicode text",
            code="malformed_json",
        )
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a parsed JSON value holds a string that cannot be UTF-8 (a lone surrogate)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return True
    return False


def check_depth(value: Any, *, max_depth: int = DEFAULT_MAX_DEPTH, what: str = "arguments") -> None:
    """Refuse nesting deeper than ``max_depth`` or non-string keys. Iterative: no RecursionError."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            if depth > max_depth:
                raise PayloadTooLargeError(
                    f"{what} nest deeper than {max_depth} levels",
                    code="too_deep",
                    context={"limit": max_depth},
                )
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidRequestError(
                        f"{what} have a non-string key {key!r}; JSON object keys are strings"
                    )
                if isinstance(sub, (Mapping, list, tuple)):
                    stack.append((sub, depth + 1))
        elif isinstance(item, (list, tuple)):
            if depth > max_depth:
                raise PayloadTooLargeError(
                    f"{what} nest deeper than {max_depth} levels",
                    code="too_deep",
                    context={"limit": max_depth},
                )
            for sub in item:
                if isinstance(sub, (Mapping, list, tuple)):
                    stack.append((sub, depth + 1))


def check_limits(
    value: Any,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    what: str = "arguments",
) -> str:
    """Check a decoded value against depth and size caps; return its canonical JSON."""
    check_depth(value, max_depth=max_depth, what=what)
    text = canonical_json(value)
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{what} are {size} bytes; the limit is {max_bytes} bytes",
            context={"size": size, "limit": max_bytes},
        )
    return text
