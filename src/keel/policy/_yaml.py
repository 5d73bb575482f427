"""Strict YAML reading for policy files: composed nodes with line numbers, precise errors.

Policies are read from PyYAML's *composed* node tree (never ``yaml.load``), so every value keeps
its line, duplicate keys can be refused, and nothing is constructed but plain scalars. Scalars are
resolved with a small YAML-1.2-like schema: only ``true``/``false`` are booleans (``yes``, ``no``,
``on``, ``off`` and ``NO`` stay strings), integers are decimal, ``17:00`` is a string (YAML 1.1
would read it as the base-60 integer 1020), and there are no floats: numbers become ``Decimal``
from their written text, so ``0.1`` is exactly one tenth.

Every failure is a :class:`keel.errors.ConfigError` whose message reads
``<file>:<line>: key '<dotted.key>': <problem>`` and whose context holds ``file``, ``line``,
``column``, ``key`` and, when there is a closed set of choices, ``accepted``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import NoReturn

import yaml

from keel.errors import ConfigError

__all__ = [
    "MAX_POLICY_BYTES",
    "MapView",
    "Reader",
    "compose",
    "join_key",
    "suggest",
]

#: Policy files larger than this are refused (they are hand-written documents).
MAX_POLICY_BYTES = 1024 * 1024

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_NULL = "tag:yaml.org,2002:null"
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with a YAML-1.2-like set of implicit scalar types (see the module docstring)."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}  # noqa: RUF012


_StrictLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_StrictLoader.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)
_StrictLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)
_StrictLoader.add_implicit_resolver(
    _NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)

_NAME_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHOW_MAX = 60


def join_key(path: str, key: str | int) -> str:
    """``rules`` + 2 -> ``rules[2]``; ``tools`` + ``allow`` -> ``tools.allow``;
    ``constraints`` + ``billing.refund`` -> ``constraints[billing.refund]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _NAME_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key}]"


def _show(value: str) -> str:
    if len(value) > _SHOW_MAX:
        value = value[: _SHOW_MAX - 3] + "..."
    return repr(value)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _NULL:
            return "nothing (null)"
        if node.tag == _BOOL:
            return f"the boolean {node.value}"
        if node.tag in (_INT, _FLOAT):
            return f"the number {node.value}"
        return f"the string {_show(node.value)}"
    return "an unsupported value"  # pragma: no cover - the composer yields only these three


def suggest(word: str, choices: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` when ``word`` is close to one of ``choices``, else ``''``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Reader:
    """Reads typed values out of composed nodes and raises located ConfigErrors."""

    def __init__(self, source: str) -> None:
        self.source = source

    # -- errors ---------------------------------------------------------------------------------

    def fail(
        self,
        node: yaml.Node | None,
        key: str,
        problem: str,
        *,
        accepted: Sequence[str] | None = None,
    ) -> NoReturn:
        raise self.error(node, key, problem, accepted=accepted)

    def error(
        self,
        node: yaml.Node | None,
        key: str,
        problem: str,
        *,
        accepted: Sequence[str] | None = None,
    ) -> ConfigError:
        """The located ConfigError for ``problem`` at ``node`` (``key`` is the dotted key)."""
        line = node.start_mark.line + 1 if node is not None else None
        column = node.start_mark.column + 1 if node is not None else None
        where = f"{self.source}:{line}" if line is not None else self.source
        message = f"{where}: key {key!r}: {problem}" if key else f"{where}: {problem}"
        context: dict[str, object] = {
            "file": self.source,
            "line": line,
            "column": column,
            "key": key,
        }
        if accepted is not None:
            context["accepted"] = list(accepted)
        return ConfigError(message, context=context)

    # -- containers -----------------------------------------------------------------------------

    def mapping(self, node: yaml.Node, key: str, allowed: Collection[str] | None = None) -> MapView:
        if not isinstance(node, yaml.MappingNode) or node.tag != _MAP:
            self.fail(node, key, f"expected a mapping, got {_kind(node)}")
        return MapView(self, node, key, allowed)

    def items(self, node: yaml.Node, key: str) -> Iterator[tuple[str, yaml.Node]]:
        """Items of a list, with their dotted keys (``rules[0]``, ``rules[1]`` ...)."""
        if not isinstance(node, yaml.SequenceNode) or node.tag != _SEQ:
            self.fail(node, key, f"expected a list, got {_kind(node)}")
        for index, item in enumerate(node.value):
            yield join_key(key, index), item

    # -- scalars --------------------------------------------------------------------------------

    def _scalar(self, node: yaml.Node, key: str, expected: str) -> yaml.ScalarNode:
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, key, f"expected {expected}, got {_kind(node)}")
        if node.tag not in (_BOOL, _INT, _FLOAT, _NULL, _STR):
            self.fail(node, key, f"unsupported YAML tag {node.tag!r}; write a plain value")
        return node

    def string(
        self,
        node: yaml.Node,
        key: str,
        *,
        pattern: re.Pattern[str] | None = None,
        what: str = "a string",
    ) -> str:
        scalar = self._scalar(node, key, what)
        if scalar.tag in (_BOOL, _NULL):
            self.fail(node, key, f"expected {what}, got {_kind(node)}")
        text: str = scalar.value
        if not text.strip():
            self.fail(node, key, f"expected {what}, got an empty string")
        if pattern is not None and not pattern.fullmatch(text):
            self.fail(node, key, f"{_show(text)} is not {what}")
        return text

    def strings(
        self,
        node: yaml.Node,
        key: str,
        *,
        pattern: re.Pattern[str] | None = None,
        what: str = "a string",
    ) -> tuple[str, ...]:
        """A string or a list of strings (duplicates removed, order kept)."""
        if isinstance(node, yaml.ScalarNode):
            return (self.string(node, key, pattern=pattern, what=what),)
        seen: dict[str, None] = {}
        for item_key, item in self.items(node, key):
            seen[self.string(item, item_key, pattern=pattern, what=what)] = None
        return tuple(seen)

    def boolean(self, node: yaml.Node, key: str) -> bool:
        scalar = self._scalar(node, key, "true or false")
        if scalar.tag != _BOOL:
            self.fail(node, key, f"expected true or false, got {_kind(node)}")
        return bool(scalar.value.lower() == "true")

    def integer(
        self, node: yaml.Node, key: str, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        scalar = self._scalar(node, key, "a whole number")
        if scalar.tag != _INT:
            self.fail(node, key, f"expected a whole number, got {_kind(node)}")
        value = int(scalar.value)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            self.fail(node, key, f"{value} is out of range; expected {bounds}")
        return value

    def number(self, node: yaml.Node, key: str) -> Decimal:
        """A finite number as an exact Decimal (a quoted number such as ``"19.99"`` is accepted)."""
        scalar = self._scalar(node, key, "a number")
        if scalar.tag in (_INT, _FLOAT, _STR):
            try:
                value = Decimal(scalar.value.strip())
            except InvalidOperation:
                value = Decimal("NaN")
            if value.is_finite() and len(scalar.value) <= 64:
                return value
        raise self.error(node, key, f"expected a number, got {_kind(node)}")

    def choice(self, node: yaml.Node, key: str, options: Sequence[str]) -> str:
        scalar = self._scalar(node, key, "one of " + ", ".join(options))
        text: str = scalar.value
        if scalar.tag in (_NULL, _BOOL) or text not in options:
            shown = _show(text) if scalar.tag == _STR else _kind(node)
            self.fail(
                node,
                key,
                f"{shown} is not one of {', '.join(options)}{suggest(text, options)}",
                accepted=options,
            )
        return text

    def value(self, node: yaml.Node, key: str) -> str | Decimal | bool | None:
        """Any plain scalar: a string, an exact number, a boolean or null."""
        scalar = self._scalar(node, key, "a plain value (string, number, true/false or null)")
        if scalar.tag == _NULL:
            return None
        if scalar.tag == _BOOL:
            return bool(scalar.value.lower() == "true")
        if scalar.tag in (_INT, _FLOAT):
            return self.number(node, key)
        text: str = scalar.value
        return text


class MapView:
    """A mapping node checked for duplicate and unknown keys, read key by key."""

    def __init__(
        self, reader: Reader, node: yaml.MappingNode, key: str, allowed: Collection[str] | None
    ) -> None:
        self.reader = reader
        self.node = node
        self.key = key
        self._values: dict[str, yaml.Node] = {}
        self._keys: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL:
                reader.fail(key_node, key, "mapping keys must be plain strings")
            name: str = key_node.value
            if key_node.tag == "tag:yaml.org,2002:merge":
                reader.fail(key_node, key, "YAML merge keys ('<<') are not supported")
            if name in self._values:
                first = self._keys[name].start_mark.line + 1
                reader.fail(
                    key_node,
                    join_key(key, name),
                    f"duplicate key: {name!r} is already given at line {first}",
                )
            if allowed is not None and name not in allowed:
                where = f"in {key!r}" if key else "at the top level"
                reader.fail(
                    key_node,
                    join_key(key, name),
                    f"unknown key {name!r}{suggest(name, allowed)}; "
                    f"accepted {where}: {', '.join(sorted(allowed))}",
                    accepted=sorted(allowed),
                )
            self._values[name] = value_node
            self._keys[name] = key_node

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __len__(self) -> int:
        return len(self._values)

    def names(self) -> list[str]:
        return list(self._values)

    def get(self, name: str) -> yaml.Node | None:
        return self._values.get(name)

    def key_node(self, name: str) -> yaml.Node:
        return self._keys[name]

    def path(self, name: str) -> str:
        return join_key(self.key, name)

    def require(self, name: str) -> yaml.Node:
        node = self._values.get(name)
        if node is None:
            where = f"{self.key!r}" if self.key else "the document"
            self.reader.fail(
                self.node, self.path(name), f"missing required key {name!r} in {where}"
            )
        return node

    def entries(self) -> Iterator[tuple[str, str, yaml.Node]]:
        """(name, dotted key, value node) for every entry, in file order."""
        for name, value in self._values.items():
            yield name, self.path(name), value


def compose(text: str | bytes, source: str) -> yaml.Node:
    """Compose one YAML document into nodes; refuse empty, oversized, invalid or multi-doc input."""
    reader = Reader(source)
    if len(text) > MAX_POLICY_BYTES:
        reader.fail(None, "", f"policy file is {len(text)} bytes; the limit is {MAX_POLICY_BYTES}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            reader.fail(
                None, "", f"policy file is not UTF-8 text ({exc.reason} at byte {exc.start})"
            )
    try:
        node = yaml.compose(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        where = f"{source}:{line}:{column}" if mark is not None else source
        problem = exc.problem or exc.context or "malformed YAML"
        raise ConfigError(
            f"{where}: not valid YAML: {problem}",
            context={"file": source, "line": line, "column": column, "key": ""},
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{source}: not valid YAML: {exc}", context={"file": source, "line": None, "key": ""}
        ) from None
    except RecursionError:
        raise ConfigError(
            f"{source}: YAML nests too deeply", context={"file": source, "line": None, "key": ""}
        ) from None
    if node is None:
        reader.fail(None, "", "the file is empty; expected a policy document (a mapping)")
    return node
