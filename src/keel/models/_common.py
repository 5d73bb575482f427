"""What every provider does to an answer once it is decoded: tool names back from the wire,
tool arguments checked, structured output parsed and validated, usage reported or estimated."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from keel.canonical import canonical_json, parse_json
from keel.core import Clock
from keel.errors import InvalidRequestError, KeelError, ModelResponseInvalid
from keel.models.tokens import estimate_input_tokens, estimate_output_tokens
from keel.models.types import (
    Choice,
    FinishReason,
    ModelRequest,
    ModelResponse,
    ToolCall,
    Usage,
)

__all__ = [
    "InvalidToolArguments",
    "StreamAssembler",
    "WireNames",
    "build_response",
    "check_output",
    "elapsed_ms",
    "estimated_usage",
    "is_count",
    "json_list",
    "make_choice",
    "schema_validator",
    "text_or_none",
]

#: What a provider does with tool-call arguments that are not a JSON object: ``raise``
#: ``ModelResponseInvalid`` (default), or ``keep`` the call with ``ToolCall.error`` set so an
#: agent loop can tell the model what was wrong.
InvalidToolArguments = Literal["raise", "keep"]

_WIRE_OK: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class WireNames:
    """Tool names as a provider's wire format accepts them (``[A-Za-z0-9_-]{1,64}``), and back.

    ``billing.refund`` travels as ``billing__refund``; a name that would collide or is too long
    gets a short hash suffix. Names the model invents are passed back unchanged.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._to: dict[str, str] = {}
        self._from: dict[str, str] = {}
        pending = []
        for name in dict.fromkeys(names):
            if _WIRE_OK.fullmatch(name):
                self._to[name] = self._from[name] = name
            else:
                pending.append(name)
        for name in pending:
            wire = re.sub(r"[^A-Za-z0-9_-]", "_", name.replace(".", "__"))
            if len(wire) > 64 or wire in self._from:
                suffix = hashlib.sha256(name.encode()).hexdigest()[:8]
                wire = f"{wire[:55]}_{suffix}"
            self._to[name] = wire
            self._from[wire] = name

    def to_wire(self, name: str) -> str:
        return self._to.get(name, name)

    def from_wire(self, name: str) -> str:
        return self._from.get(name, name)

    @classmethod
    def for_request(cls, request: ModelRequest, extra: Sequence[str] = ()) -> WireNames:
        names = [t.name for t in request.tools]
        for message in request.messages:
            names.extend(c.name for c in message.tool_calls)
        return cls([*names, *extra])


@functools.lru_cache(maxsize=256)
def _validator(schema_text: str) -> Any:
    import jsonschema

    schema = parse_json(schema_text)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequestError(
            f"output_schema is not a valid JSON schema: {exc.message}",
            context={"field": "output_schema"},
        ) from None
    return jsonschema.Draft202012Validator(schema)


def schema_validator(schema: Mapping[str, Any]) -> Any:
    """A cached draft 2020-12 validator; ``InvalidRequestError`` if the schema is invalid."""
    return _validator(canonical_json(schema))


def check_output(
    request: ModelRequest, text: str | None, finish_reason: str, context: Mapping[str, Any]
) -> Any:
    """The structured output in ``text``, parsed and checked against ``request.output_schema``."""
    assert request.output_schema is not None
    provider = context.get("provider")
    if text is None:
        raise ModelResponseInvalid(
            f"{provider} returned no text for a structured-output request", context=context
        )
    try:
        value = parse_json(text, what="structured output")
    except KeelError as exc:
        hint = " (the answer hit max_tokens)" if finish_reason == "length" else ""
        raise ModelResponseInvalid(
            f"{provider} returned structured output that is not valid JSON{hint}: {exc.message}",
            context={**context, "finish_reason": finish_reason},
        ) from None
    errors = sorted(
        schema_validator(request.output_schema).iter_errors(value), key=lambda e: list(e.path)
    )
    if errors:
        parts = [f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in errors[:3]]
        raise ModelResponseInvalid(
            f"{provider} returned structured output that does not match the schema: "
            + "; ".join(parts),
            context={**context, "errors": len(errors)},
        )
    return value


def _check_tool_calls(
    calls: Sequence[ToolCall], policy: InvalidToolArguments, context: Mapping[str, Any]
) -> None:
    if policy == "keep":
        return
    for call in calls:
        if call.error is not None:
            raise ModelResponseInvalid(
                f"{context.get('provider')} returned arguments for tool {call.name!r} that are "
                f"not a JSON object: {call.error}",
                context={**context, "tool": call.name, "tool_call_id": call.id},
            )


def make_choice(
    request: ModelRequest,
    *,
    text: str | None,
    tool_calls: Sequence[ToolCall],
    finish_reason: FinishReason,
    refusal: str | None,
    invalid_tool_arguments: InvalidToolArguments,
    context: Mapping[str, Any],
) -> Choice:
    """A checked choice: tool arguments parsed, structured output parsed and validated."""
    _check_tool_calls(tool_calls, invalid_tool_arguments, context)
    parsed: Any = None
    if request.output_schema is not None and refusal is None and not tool_calls:
        parsed = check_output(request, text, finish_reason, context)
    return Choice(text, tuple(tool_calls), parsed, finish_reason, refusal)


def estimated_usage(request: ModelRequest, choices: Sequence[Choice]) -> Usage:
    """Usage estimated with ``keel.models.tokens`` (``estimated=True``)."""
    output = sum(estimate_output_tokens(c.text, c.tool_calls) for c in choices)
    return Usage(estimate_input_tokens(request), output, estimated=True)


def build_response(
    request: ModelRequest,
    choices: Sequence[Choice],
    *,
    provider: str,
    model: str,
    usage: Usage,
    latency_ms: int,
    response_id: str | None,
) -> ModelResponse:
    first = choices[0]
    return ModelResponse(
        model=model,
        provider=provider,
        text=first.text,
        usage=usage,
        tool_calls=first.tool_calls,
        parsed=first.parsed,
        finish_reason=first.finish_reason,
        latency_ms=latency_ms,
        response_id=response_id,
        refusal=first.refusal,
        more_choices=tuple(choices[1:]),
    )


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _PartialChoice:
    text: list[str] = field(default_factory=list)
    has_text: bool = False
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finish_reason: FinishReason | None = None


class StreamAssembler:
    """Collects streamed deltas per choice and tool-call index into complete choices."""

    def __init__(self) -> None:
        self._choices: dict[int, _PartialChoice] = {}

    def _choice(self, index: int) -> _PartialChoice:
        return self._choices.setdefault(index, _PartialChoice())

    def text(self, index: int, delta: str) -> None:
        choice = self._choice(index)
        choice.has_text = True
        choice.text.append(delta)

    def refusal(self, index: int, delta: str) -> None:
        self._choice(index).refusal.append(delta)

    def tool_call(
        self, index: int, call_index: int, id: str | None, name: str | None, arguments: str
    ) -> None:
        call = self._choice(index).calls.setdefault(call_index, _PartialCall())
        if id:
            call.id = id
        if name and not call.name:
            call.name = name
        call.arguments.append(arguments)

    def finish(self, index: int, reason: FinishReason) -> None:
        self._choice(index).finish_reason = reason

    @property
    def indexes(self) -> list[int]:
        return sorted(self._choices)

    def parts(
        self, index: int, names: WireNames
    ) -> tuple[str | None, list[ToolCall], FinishReason | None, str | None]:
        """(text, tool calls, finish reason, refusal) of choice ``index``."""
        choice = self._choice(index)
        calls = [
            ToolCall(
                call.id or f"call_{index}_{position}",
                names.from_wire(call.name),
                "".join(call.arguments),
            )
            for position, call in sorted(choice.calls.items())
        ]
        text = "".join(choice.text) if choice.has_text else None
        refusal = "".join(choice.refusal) if choice.refusal else None
        return text, calls, choice.finish_reason, refusal


def text_or_none(value: object) -> str | None:
    """``value`` if it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def is_count(value: object) -> bool:
    """True for a non-negative int (not a bool): a token count."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def json_list(value: object, what: str, provider: str, context: Mapping[str, Any]) -> list[Any]:
    """``value`` as a list (None → []), or ``ModelResponseInvalid``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ModelResponseInvalid(f"{provider} sent {what} that is not a list", context=context)
    return value


def elapsed_ms(clock: Clock, start: float) -> int:
    """Whole milliseconds since ``start`` (a ``clock.monotonic()`` reading)."""
    return max(0, round((clock.monotonic() - start) * 1000))
