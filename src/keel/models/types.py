"""The model interface's data: requests, responses, usage and stream chunks.

Everything here is a frozen dataclass, validated on construction, so a request that exists is a
request a provider may send. Bad input raises ``InvalidRequestError`` whose ``context["field"]``
names the offending field and whose message says what is accepted.

Records (``to_dict`` / ``from_dict``) carry a schema version ``v``. Compatibility policy: a reader
accepts every version up to its own and refuses newer ones (``from_dict`` raises
``InvalidRequestError`` with code ``schema_version``), so an old process never misreads a record
written by a newer Keel; a cache treats such a record as a miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast, get_args

from keel.canonical import canonical_json, check_depth, digest, parse_json
from keel.errors import InvalidRequestError, KeelError

__all__ = [
    "MAX_N",
    "MAX_STOP_SEQUENCES",
    "MAX_TOKENS_CAP",
    "RECORD_VERSION",
    "Choice",
    "FinishReason",
    "Message",
    "ModelRequest",
    "ModelResponse",
    "Role",
    "StreamChunk",
    "ToolCall",
    "ToolCallDelta",
    "ToolDef",
    "Usage",
]

#: The largest ``max_tokens`` a request may ask for. No model generates more than 128k tokens in
#: one answer today; the cap leaves room for growth and refuses absurd values (a typo, an attack
#: on the budget) before any price is looked up.
MAX_TOKENS_CAP: Final = 262_144
#: The largest ``n`` (choices per request).
MAX_N: Final = 16
#: At most this many stop sequences (OpenAI's limit).
MAX_STOP_SEQUENCES: Final = 4
#: Version of the ``to_dict`` records of this module.
RECORD_VERSION: Final = 1

Role = Literal["system", "user", "assistant", "tool"]
#: Normalized finish reasons; providers map theirs onto these.
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "other"]
_ROLES: Final = frozenset(get_args(Role))
_FINISH: Final = frozenset(get_args(FinishReason))
_TOOL_CHOICES: Final = frozenset({"auto", "none", "required"})
_MAX_NAME: Final = 128


def _bad(field_name: str, message: str, **context: Any) -> InvalidRequestError:
    return InvalidRequestError(message, context={"field": field_name, **context})


def _check_int(value: object, field_name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(
            field_name,
            f"{field_name} must be an integer from {low} to {high}, got {type(value).__name__}",
        )
    if not low <= value <= high:
        raise _bad(
            field_name,
            f"{field_name} must be from {low} to {high}, got {value}",
            value=value,
            low=low,
            high=high,
        )
    return value


def _check_float(
    value: object, field_name: str, low: float, high: float, *, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(field_name, f"{field_name} must be a number, got {type(value).__name__}")
    number = float(value)
    too_low = number <= low if low_open else number < low
    if not math.isfinite(number) or too_low or number > high:
        bracket = "(" if low_open else "["
        raise _bad(
            field_name,
            f"{field_name} must be in {bracket}{low}, {high}], got {value}",
            value=str(value),
        )
    return number


def _check_name(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise _bad(field_name, f"{field_name} must be a string of 1 to {_MAX_NAME} characters")
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise _bad(field_name, f"{field_name} {value!r} contains whitespace or control characters")
    return value


def _check_schema(value: object, field_name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(field_name, f"{field_name} must be a JSON schema object")
    schema = dict(value)
    check_depth(schema, what=field_name)
    canonical_json(schema)  # refuses values JSON cannot carry
    return schema


# -- tool calls --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model asked for.

    ``arguments_json`` is the raw text the model produced. ``ToolCall(id, name, text)`` parses
    it strictly (``keel.canonical.parse_json``: no duplicate keys, no NaN); the result is
    ``arguments`` (a JSON object) or, when the text is not a JSON object, ``error`` says why and
    ``arguments`` is None. An empty text means ``{}`` (some servers send it for tools without
    parameters). Providers refuse responses with an ``error`` unless configured to keep them.
    """

    id: str
    name: str
    arguments_json: str
    arguments: Mapping[str, Any] | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arguments_json, str):
            raise _bad("arguments_json", "tool call arguments_json must be a string")
        if self.arguments is None and self.error is None:
            parsed, error = _parse_arguments(self.arguments_json)
            object.__setattr__(self, "arguments", parsed)
            object.__setattr__(self, "error", error)

    @classmethod
    def of(cls, id: str, name: str, arguments: Mapping[str, Any]) -> ToolCall:
        """A tool call from decoded arguments (their canonical JSON becomes the raw text)."""
        return cls(id, name, canonical_json(dict(arguments)), dict(arguments), None)

    @property
    def ok(self) -> bool:
        """True if the arguments parsed to a JSON object."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments_json}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolCall:
        return cls(str(data["id"]), str(data["name"]), str(data["arguments"]))


def _parse_arguments(text: str) -> tuple[dict[str, Any] | None, str | None]:
    if not text.strip():
        return {}, None
    try:
        value = parse_json(text, what="tool call arguments")
    except KeelError as exc:
        return None, exc.message
    if not isinstance(value, dict):
        return None, f"tool call arguments must be a JSON object, got {type(value).__name__}"
    return value, None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: ``index`` identifies the call within its choice; ``id``
    and ``name`` arrive once (usually first), ``arguments`` is the next fragment of raw JSON."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


# -- messages and tools ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One conversation turn.

    ``system`` and ``user`` turns carry ``content``; an ``assistant`` turn carries ``content``
    and/or ``tool_calls``; a ``tool`` turn carries a tool's result as ``content`` and the
    ``tool_call_id`` it answers (``name``: the tool). Content is plain text.
    """

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise _bad("role", f"message role must be one of {sorted(_ROLES)}, got {self.role!r}")
        if self.content is not None and not isinstance(self.content, str):
            raise _bad("content", "message content must be text (a string) or None")
        calls = tuple(self.tool_calls)
        object.__setattr__(self, "tool_calls", calls)
        if calls and self.role != "assistant":
            raise _bad("tool_calls", f"only assistant messages carry tool_calls, not {self.role}")
        if self.role == "tool" and not self.tool_call_id:
            raise _bad("tool_call_id", "a tool message needs the tool_call_id it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise _bad("tool_call_id", "only tool messages carry a tool_call_id")
        if self.content is None and not (self.role == "assistant" and calls):
            raise _bad("content", f"a {self.role} message needs content")
        if self.name is not None:
            _check_name(self.name, "name")

    @classmethod
    def system(cls, content: str) -> Message:
        return cls("system", content)

    @classmethod
    def user(cls, content: str, *, name: str | None = None) -> Message:
        return cls("user", content, name=name)

    @classmethod
    def assistant(cls, content: str | None = None, tool_calls: Iterable[ToolCall] = ()) -> Message:
        return cls("assistant", content, tuple(tool_calls))

    @classmethod
    def tool(cls, tool_call_id: str, content: str, *, name: str | None = None) -> Message:
        return cls("tool", content, tool_call_id=tool_call_id, name=name)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        return cls(
            role=data.get("role"),  # type: ignore[arg-type]  # validated in __post_init__
            content=data.get("content"),
            tool_calls=tuple(ToolCall.from_dict(c) for c in data.get("tool_calls") or ()),
            tool_call_id=data.get("tool_call_id"),
            name=data.get("name"),
        )

    def _normalized(self) -> dict[str, Any]:
        data = self.to_dict()
        if self.tool_calls:
            data["tool_calls"] = [
                {
                    "id": c.id,
                    "name": c.name,
                    "arguments": c.arguments if c.ok else c.arguments_json,
                }
                for c in self.tool_calls
            ]
        return data


@dataclass(frozen=True, slots=True)
class ToolDef:
    """A tool the model may call: name, description, and a JSON schema of its parameters.

    Names may contain dots (``billing.refund``); providers translate them to the characters
    their wire format accepts and back.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    def __post_init__(self) -> None:
        _check_name(self.name, "tools.name")
        if not isinstance(self.description, str):
            raise _bad("tools.description", "a tool description must be a string")
        object.__setattr__(self, "parameters", _check_schema(self.parameters, "tools.parameters"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolDef:
        return cls(
            name=data.get("name"),  # type: ignore[arg-type]  # validated in __post_init__
            description=data.get("description", ""),
            parameters=data.get("parameters", {"type": "object", "properties": {}}),
        )


# -- the request -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model call, provider-neutral.

    ``max_tokens`` is required (1..``MAX_TOKENS_CAP``): it bounds the worst-case cost reserved
    before the call. ``n`` (1..``MAX_N``) asks for several choices. ``tool_choice`` is ``"auto"``,
    ``"none"``, ``"required"`` or the name of one of ``tools``. ``output_schema`` asks for
    structured output (a JSON schema the answer must match; ``ModelResponse.parsed`` holds it).
    ``temperature`` is in [0, 2], ``top_p`` in (0, 1]. ``metadata`` is for Keel (task class,
    trace ids): it is never sent to a provider and is not part of ``digest()``.
    """

    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    tools: tuple[ToolDef, ...] = ()
    tool_choice: str | None = None
    output_schema: Mapping[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.model, "model")
        messages = tuple(self.messages)
        if not messages:
            raise _bad("messages", "a model request needs at least one message")
        for index, message in enumerate(messages):
            if not isinstance(message, Message):
                raise _bad("messages", f"messages[{index}] is not a Message", index=index)
        object.__setattr__(self, "messages", messages)
        _check_int(self.max_tokens, "max_tokens", 1, MAX_TOKENS_CAP)
        _check_int(self.n, "n", 1, MAX_N)
        tools = tuple(self.tools)
        names = [tool.name for tool in tools]
        if len(set(names)) != len(names):
            raise _bad("tools", "tool names must be unique within a request")
        object.__setattr__(self, "tools", tools)
        choice = self.tool_choice
        if choice is not None and choice not in _TOOL_CHOICES and choice not in names:
            raise _bad(
                "tool_choice",
                "tool_choice must be 'auto', 'none', 'required' or the name of a tool in "
                f"the request, got {choice!r}",
            )
        if self.tool_choice in ("required",) and not tools:
            raise _bad("tool_choice", "tool_choice 'required' needs at least one tool")
        if self.output_schema is not None:
            object.__setattr__(
                self, "output_schema", _check_schema(self.output_schema, "output_schema")
            )
        if self.temperature is not None:
            value = _check_float(self.temperature, "temperature", 0.0, 2.0)
            object.__setattr__(self, "temperature", value)
        if self.top_p is not None:
            value = _check_float(self.top_p, "top_p", 0.0, 1.0, low_open=True)
            object.__setattr__(self, "top_p", value)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
            raise _bad(
                "stop",
                f"stop takes at most {MAX_STOP_SEQUENCES} non-empty strings",
                count=len(stop),
            )
        object.__setattr__(self, "stop", stop)
        if self.seed is not None:
            _check_int(self.seed, "seed", -(2**63), 2**63 - 1)
        if not isinstance(self.metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()
        ):
            raise _bad("metadata", "metadata must map strings to strings")
        object.__setattr__(self, "metadata", dict(self.metadata))

    # -- derived ---------------------------------------------------------------------------------

    @property
    def deterministic(self) -> bool:
        """True if repeating the request should give the same answer.

        That is: one choice (``n == 1``) and greedy sampling — ``temperature == 0``, or no
        temperature given but a ``seed`` fixed. ``temperature > 0`` is never deterministic, seed
        or not: providers document seeds as best effort.
        """
        if self.n != 1:
            return False
        if self.temperature is None:
            return self.seed is not None
        return self.temperature == 0.0

    def last_input(self) -> Message:
        """The newest user or tool message (what the model is answering), else the last one."""
        for message in reversed(self.messages):
            if message.role in ("user", "tool"):
                return message
        return self.messages[-1]

    def to_dict(self) -> dict[str, Any]:
        """The record form (``from_dict`` reverses it); includes ``metadata``."""
        data = self._normalized()
        data["metadata"] = dict(self.metadata)
        data["messages"] = [m.to_dict() for m in self.messages]
        return data

    def _normalized(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "model": self.model,
            "messages": [m._normalized() for m in self.messages],
            "max_tokens": self.max_tokens,
            "tools": [t.to_dict() for t in self.tools],
            "tool_choice": self.tool_choice,
            "output_schema": self.output_schema,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "n": self.n,
            "stop": list(self.stop),
            "seed": self.seed,
        }

    def digest(self) -> str:
        """``sha256:<hex>`` of the normalized request (canonical JSON, without ``metadata``).

        Equal requests give equal digests whatever the formatting of tool-call arguments in the
        history; used as the cache key and to bind approvals to the exact request.
        """
        return digest(self._normalized())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRequest:
        _check_version(data)
        try:
            return cls(
                model=data.get("model"),  # type: ignore[arg-type]  # validated in __post_init__
                messages=tuple(Message.from_dict(m) for m in data.get("messages") or ()),
                max_tokens=data.get("max_tokens"),  # type: ignore[arg-type]
                tools=tuple(ToolDef.from_dict(t) for t in data.get("tools") or ()),
                tool_choice=data.get("tool_choice"),
                output_schema=data.get("output_schema"),
                temperature=data.get("temperature"),
                top_p=data.get("top_p"),
                n=data.get("n", 1),
                stop=tuple(data.get("stop") or ()),
                seed=data.get("seed"),
                metadata=data.get("metadata") or {},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidRequestError(f"model request record is malformed: {exc}") from None


def _check_version(data: Mapping[str, Any]) -> None:
    version = data.get("v", RECORD_VERSION)
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise InvalidRequestError(
            f"record version {version!r} is newer than this Keel understands ({RECORD_VERSION})",
            code="schema_version",
            context={"found": version, "supported": RECORD_VERSION},
        )


# -- usage and responses -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call consumed.

    ``input_tokens`` counts every input token, including ``cached_input_tokens`` (read from the
    provider's prompt cache, billed at the cached rate) and ``cache_write_tokens`` (written to
    it). ``estimated`` is True when the provider did not report usage and Keel estimated it.
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens"):
            _check_int(getattr(self, name), f"usage.{name}", 0, 2**53)
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise _bad(
                "usage.cached_input_tokens",
                "cached and cache-write tokens are part of input_tokens and cannot exceed it",
            )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.estimated or other.estimated,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "estimated": self.estimated,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            int(data["input_tokens"]),
            int(data["output_tokens"]),
            int(data.get("cached_input_tokens", 0)),
            int(data.get("cache_write_tokens", 0)),
            bool(data.get("estimated", False)),
        )


@dataclass(frozen=True, slots=True)
class Choice:
    """One of several answers (``n > 1``): text, tool calls, parsed output, finish reason."""

    text: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    parsed: Any = None
    finish_reason: FinishReason = "stop"
    refusal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tool_calls": [c.to_dict() for c in self.tool_calls],
            "parsed": self.parsed,
            "finish_reason": self.finish_reason,
            "refusal": self.refusal,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Choice:
        return cls(
            text=data.get("text"),
            tool_calls=tuple(ToolCall.from_dict(c) for c in data.get("tool_calls") or ()),
            parsed=data.get("parsed"),
            finish_reason=_finish(data.get("finish_reason")),
            refusal=data.get("refusal"),
        )


def _finish(value: object) -> FinishReason:
    return cast(FinishReason, value) if value in _FINISH else "other"


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """A provider's answer, normalized.

    ``text``, ``tool_calls``, ``parsed`` (structured output, when the request had an
    ``output_schema``), ``finish_reason`` and ``refusal`` describe the first choice;
    ``more_choices`` holds the others when ``n > 1``. ``usage`` covers all choices.
    ``latency_ms`` is wall time from the call to the answer, retries included. ``cached`` is
    True when the answer came from Keel's response cache (it cost nothing).
    """

    model: str
    provider: str
    text: str | None
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    parsed: Any = None
    finish_reason: FinishReason = "stop"
    latency_ms: int = 0
    response_id: str | None = None
    refusal: str | None = None
    more_choices: tuple[Choice, ...] = ()
    cached: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        object.__setattr__(self, "more_choices", tuple(self.more_choices))
        if self.finish_reason not in _FINISH:
            raise _bad("finish_reason", f"finish_reason must be one of {sorted(_FINISH)}")

    @property
    def choices(self) -> tuple[Choice, ...]:
        """Every choice, the first one included."""
        first = Choice(self.text, self.tool_calls, self.parsed, self.finish_reason, self.refusal)
        return (first, *self.more_choices)

    def to_message(self) -> Message:
        """The first choice as an assistant message, to append to the conversation."""
        text = self.text if self.text is not None or self.tool_calls else ""
        return Message.assistant(text, self.tool_calls)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "model": self.model,
            "provider": self.provider,
            "response_id": self.response_id,
            "latency_ms": self.latency_ms,
            "usage": self.usage.to_dict(),
            "choices": [c.to_dict() for c in self.choices],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelResponse:
        _check_version(data)
        try:
            choices = [Choice.from_dict(c) for c in data["choices"]]
            first = choices[0]
            return cls(
                model=str(data["model"]),
                provider=str(data["provider"]),
                text=first.text,
                usage=Usage.from_dict(data["usage"]),
                tool_calls=first.tool_calls,
                parsed=first.parsed,
                finish_reason=first.finish_reason,
                latency_ms=int(data.get("latency_ms", 0)),
                response_id=data.get("response_id"),
                refusal=first.refusal,
                more_choices=tuple(choices[1:]),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"model response record is malformed: {exc}") from None


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One event of a streamed answer.

    ``delta`` is the next piece of text of choice ``index``; ``tool_calls`` are pieces of tool
    calls. The last chunk of every stream has ``usage`` and ``response`` (the assembled
    ``ModelResponse``) set, and ``finish_reason``; no chunk before it does.
    """

    delta: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    index: int = 0
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    response: ModelResponse | None = None

    @property
    def final(self) -> bool:
        return self.response is not None
