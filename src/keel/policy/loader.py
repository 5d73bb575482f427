"""Reading policy files: text or files -> PolicyDocument -> CompiledPolicy -> PolicySet.

Every problem is a :class:`keel.errors.ConfigError` whose message starts ``<file>:<line>:`` and
names the dotted key, with ``file``, ``line``, ``column`` and ``key`` in its context.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from keel.errors import ConfigError
from keel.policy._parse import parse_document
from keel.policy._yaml import compose
from keel.policy.compiler import CompiledPolicy
from keel.policy.document import PolicyDocument
from keel.policy.engine import PolicySet

__all__ = ["load_policies", "load_policy", "load_policy_file", "parse_policy"]

_SUFFIXES = (".yaml", ".yml")


def parse_policy(text: str | bytes, *, source_name: str = "<policy>") -> PolicyDocument:
    """Parse and validate YAML text into a normalized :class:`PolicyDocument`."""
    return parse_document(compose(text, source_name), source_name)


def _read(path: Path, source_name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{source_name}: cannot read policy file: {exc.strerror or exc}",
            context={"file": source_name, "line": None, "key": ""},
        ) from None


def load_policy_file(
    path: str | os.PathLike[str], *, source_name: str | None = None
) -> CompiledPolicy:
    """Read, validate and compile one policy file (``source_name`` defaults to the path)."""
    name = source_name if source_name is not None else os.fspath(path)
    data = _read(Path(path), name)
    return CompiledPolicy(parse_policy(data, source_name=name), source=name)


def _looks_like_path(text: str) -> bool:
    stripped = text.strip()
    return "\n" not in stripped and ": " not in stripped and stripped.endswith(_SUFFIXES)


def load_policy(
    path_or_text: str | bytes | os.PathLike[str], *, source_name: str | None = None
) -> CompiledPolicy:
    """Load one policy from a path or from YAML text, validated and compiled.

    A ``pathlib.Path`` (any ``os.PathLike``) is read as a file, and so is a one-line ``str``
    ending in ``.yaml``/``.yml`` (without ``": "``); any other ``str`` or ``bytes`` is YAML
    text. ``source_name`` names the source in error messages (default: the path, or
    ``<policy>`` for text).
    """
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and _looks_like_path(path_or_text)
    ):
        path = path_or_text if isinstance(path_or_text, os.PathLike) else path_or_text.strip()
        return load_policy_file(path, source_name=source_name)
    name = source_name if source_name is not None else "<policy>"
    return CompiledPolicy(parse_policy(path_or_text, source_name=name), source=name)


def load_policies(paths: Iterable[str | os.PathLike[str]]) -> PolicySet:
    """A PolicySet from files and folders (a folder contributes its ``*.yaml``/``*.yml`` files,
    in name order, not recursively). Documents keep the order given; names must be unique."""
    compiled: list[CompiledPolicy] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
            compiled.extend(load_policy_file(p) for p in files)
        else:
            compiled.append(load_policy_file(path))
    return PolicySet(compiled)
