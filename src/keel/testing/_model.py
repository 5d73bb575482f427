"""``ScriptedModel``: the one fake model in Keel, a deterministic ``Provider`` driven by rules.

Rules are tried in order against the request; the first that matches answers. A rule matches
the newest user or tool message (``on`` narrows which) with a regex, or the whole request with a
callable. Its ``Reply`` is a template: ``$name`` / ``${name}`` are filled from the regex's named
groups, ``$g1``, ``$g2`` … from its numbered groups and ``$input`` with the matched message
(``$$`` is a literal dollar). A reply may also be computed by a callable.

Seeded fault injection (``FaultPlan``) makes it misbehave like real models do, reproducibly:

- ``malformed_json``: tool-call arguments (or structured output) cut in half — the model layer
  refuses the answer with ``ModelResponseInvalid``, exactly as for an HTTP provider;
- ``wrong_tool_args``: valid JSON that breaks the tool's schema (a required argument dropped, a
  wrong type, an unexpected argument) — for the gateway's validation to catch;
- ``never_finish``: the conversation never ends: every turn calls a tool again (decided once per
  conversation, so a run that draws it loops until a cap stops it);
- ``obey_injection``: when a tool result contains instructions naming a tool ("call
  ``billing.refund`` with {...}"), the model follows them;
- ``latency_ms``: a fixed delay or a ``(low, high)`` range per call.

Every draw comes from ``random.Random`` seeded with the plan's seed, the request digest and how
often that digest was seen: the same requests in the same order give the same answers, also
when calls run concurrently. Usage is computed with ``keel.models.tokens``. Every request is
recorded in ``requests``.

Thread/task safe: share one instance between tasks and threads.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from keel.canonical import canonical_json, digest
from keel.core import Clock, SystemClock
from keel.errors import UsageError
from keel.models import (
    FinishReason,
    ModelRequest,
    ModelResponse,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
    estimate_input_tokens,
    estimate_output_tokens,
)

# The same checks as the HTTP providers, so a scripted fault fails exactly like a real one.
from keel.models._common import InvalidToolArguments, build_response, make_choice

__all__ = ["FaultPlan", "Reply", "Rule", "ScriptedModel"]


@dataclass(frozen=True)
class Reply:
    """What the scripted model says: text and/or tool calls ``(name, arguments)``.

    ``parsed`` is structured output: its canonical JSON becomes the text. Strings in ``text`` and
    in tool arguments are templates (see the module docstring).
    """

    text: str | None = None
    tool_calls: Sequence[tuple[str, Mapping[str, Any]]] = ()
    parsed: Any = None
    finish_reason: FinishReason | None = None


Responder = Reply | str | Callable[[ModelRequest, "re.Match[str] | None"], "Reply | str"]


@dataclass(frozen=True)
class Rule:
    """When ``match`` matches, answer with ``reply``.

    ``match`` is a regex (searched in the newest user or tool message; ``on`` restricts the
    role of that message) or a predicate over the request. ``times`` limits how often the rule
    fires (None: always).
    """

    match: str | re.Pattern[str] | Callable[[ModelRequest], bool]
    reply: Responder
    on: Literal["user", "tool", "any"] = "any"
    times: int | None = None


@dataclass(frozen=True)
class FaultPlan:
    """Seeded misbehaviour; probabilities in [0, 1]. See the module docstring."""

    seed: int = 0
    malformed_json: float = 0.0
    wrong_tool_args: float = 0.0
    never_finish: float = 0.0
    obey_injection: float = 0.0
    latency_ms: float | tuple[float, float] = 0.0

    def __post_init__(self) -> None:
        for name in ("malformed_json", "wrong_tool_args", "never_finish", "obey_injection"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"FaultPlan.{name} is a probability in [0, 1], got {value}")
        low, high = (
            self.latency_ms if isinstance(self.latency_ms, tuple) else (self.latency_ms,) * 2
        )
        if not 0 <= low <= high:
            raise UsageError("FaultPlan.latency_ms must be >= 0 (or a (low, high) range)")


@dataclass
class _Draft:
    text: str | None
    calls: list[ToolCall] = field(default_factory=list)
    finish: FinishReason = "stop"
    faults: list[str] = field(default_factory=list)


_INJECTED_CALL = re.compile(
    r"(?i)\b(?:call|run|invoke|use|execute)\s+(?:the\s+)?(?:tool\s+)?[`'\"]?([a-z][\w.-]*[a-z0-9_])"
)


class ScriptedModel:
    """A deterministic fake ``Provider``; see the module docstring."""

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        *,
        default: Responder = "OK",
        name: str = "scripted",
        faults: FaultPlan | None = None,
        invalid_tool_arguments: InvalidToolArguments = "raise",
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.rules = tuple(rules)
        self.default = default
        self.faults = faults or FaultPlan()
        self._invalid_tool_arguments: InvalidToolArguments = invalid_tool_arguments
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._fired: dict[int, int] = {}
        self._requests: list[ModelRequest] = []
        self.injected: list[str] = []

    @property
    def requests(self) -> list[ModelRequest]:
        """Every request received, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self._requests)

    # -- the script ------------------------------------------------------------------------------

    def _register(self, request: ModelRequest) -> tuple[str, int]:
        key = request.digest()
        with self._lock:
            self._requests.append(request)
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
        return key, seen

    def _draw(self, *parts: object) -> float:
        return random.Random(canonical_json([self.faults.seed, *map(str, parts)])).random()

    def _respond(self, request: ModelRequest) -> tuple[Responder, re.Match[str] | None]:
        last = request.last_input()
        for index, rule in enumerate(self.rules):
            found: re.Match[str] | None = None
            if callable(rule.match):
                hit = bool(rule.match(request))
            else:
                if rule.on != "any" and last.role != rule.on:
                    continue
                found = re.search(rule.match, last.content or "")
                hit = found is not None
            if not hit:
                continue
            with self._lock:
                fired = self._fired.get(index, 0)
                if rule.times is not None and fired >= rule.times:
                    continue
                self._fired[index] = fired + 1
            return rule.reply, found
        return self.default, None

    def _draft(self, request: ModelRequest, key: str, seen: int) -> _Draft:
        responder, found = self._respond(request)
        reply = responder(request, found) if callable(responder) else responder
        if isinstance(reply, str):
            reply = Reply(text=reply)
        values = _template_values(request, found)
        text = reply.text
        if reply.parsed is not None:
            text = canonical_json(reply.parsed)
        elif text is not None:
            text = string.Template(text).safe_substitute(values)
        calls = [
            ToolCall.of(f"call_{key[7:15]}_{seen}_{i}", name, _fill(dict(args), values))
            for i, (name, args) in enumerate(reply.tool_calls)
        ]
        draft = _Draft(text, calls, reply.finish_reason or ("tool_calls" if calls else "stop"))
        self._never_finish(request, draft, key, seen)
        self._obey_injection(request, draft, key, seen)
        self._wrong_tool_args(request, draft, key, seen)
        self._malformed_json(request, draft, key, seen)
        return draft

    def _never_finish(self, request: ModelRequest, draft: _Draft, key: str, seen: int) -> None:
        plan = self.faults
        if not plan.never_finish or not request.tools:
            return
        opening = []
        for message in request.messages:
            opening.append(message.to_dict())
            if message.role == "user":
                break
        if self._draw("never_finish", digest(opening)) >= plan.never_finish:
            return
        draft.faults.append("never_finish")
        if draft.calls:
            return
        previous = [c for m in request.messages for c in m.tool_calls]
        if previous:
            last = previous[-1]
            draft.calls = [
                ToolCall.of(f"call_{key[7:15]}_{seen}_loop", last.name, last.arguments or {})
            ]
        else:
            draft.calls = [ToolCall.of(f"call_{key[7:15]}_{seen}_loop", request.tools[0].name, {})]
        draft.text = None
        draft.finish = "tool_calls"

    def _obey_injection(self, request: ModelRequest, draft: _Draft, key: str, seen: int) -> None:
        plan = self.faults
        last = request.last_input()
        if not plan.obey_injection or last.role != "tool" or not last.content:
            return
        target = _injected_tool(last.content, [t.name for t in request.tools], last.name)
        if target is None:
            return
        if self._draw("obey_injection", key, seen) >= plan.obey_injection:
            return
        name, arguments = target
        draft.faults.append("obey_injection")
        with self._lock:
            self.injected.append(name)
        draft.calls = [ToolCall.of(f"call_{key[7:15]}_{seen}_inj", name, arguments)]
        draft.text = None
        draft.finish = "tool_calls"

    def _wrong_tool_args(self, request: ModelRequest, draft: _Draft, key: str, seen: int) -> None:
        plan = self.faults
        if not plan.wrong_tool_args or not draft.calls:
            return
        if self._draw("wrong_tool_args", key, seen) >= plan.wrong_tool_args:
            return
        draft.faults.append("wrong_tool_args")
        call = draft.calls[0]
        schemas = {t.name: t.parameters for t in request.tools}
        arguments = _break_arguments(dict(call.arguments or {}), schemas.get(call.name, {}))
        draft.calls[0] = ToolCall.of(call.id, call.name, arguments)

    def _malformed_json(self, request: ModelRequest, draft: _Draft, key: str, seen: int) -> None:
        plan = self.faults
        structured = request.output_schema is not None and draft.text is not None
        if not plan.malformed_json or not (draft.calls or structured):
            return
        if self._draw("malformed_json", key, seen) >= plan.malformed_json:
            return
        draft.faults.append("malformed_json")
        if draft.calls:
            call = draft.calls[0]
            draft.calls[0] = ToolCall(call.id, call.name, _cut(call.arguments_json))
        elif draft.text is not None:
            draft.text = _cut(draft.text)

    async def _prepare(self, request: ModelRequest) -> tuple[_Draft, float]:
        start = self._clock.monotonic()
        key, seen = self._register(request)
        latency = self.faults.latency_ms
        if isinstance(latency, tuple):
            low, high = latency
            latency = low + (high - low) * self._draw("latency", key, seen)
        if latency > 0:
            await asyncio.sleep(latency / 1000.0)
        return self._draft(request, key, seen), start

    def _finish(self, request: ModelRequest, draft: _Draft, start: float) -> ModelResponse:
        context = {"provider": self.name, "model": request.model, "faults": draft.faults}
        choice = make_choice(
            request,
            text=draft.text,
            tool_calls=draft.calls,
            finish_reason=draft.finish,
            refusal=None,
            invalid_tool_arguments=self._invalid_tool_arguments,
            context=context,
        )
        choices = [choice] * request.n
        output = estimate_output_tokens(draft.text, draft.calls) * request.n
        usage = Usage(estimate_input_tokens(request), output)
        elapsed = max(0, round((self._clock.monotonic() - start) * 1000))
        return build_response(
            request,
            choices,
            provider=self.name,
            model=request.model,
            usage=usage,
            latency_ms=elapsed,
            response_id=f"scripted-{request.digest()[7:19]}",
        )

    # -- Provider --------------------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer ``request`` from the rules, with the planned faults."""
        draft, start = await self._prepare(request)
        return self._finish(request, draft, start)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamChunk]:
        """The same answer as ``complete``, in pieces; the last chunk carries usage."""
        draft, start = await self._prepare(request)
        for piece in _pieces(draft.text or ""):
            yield StreamChunk(delta=piece)
        for index, call in enumerate(draft.calls):
            yield StreamChunk(tool_calls=(ToolCallDelta(index, call.id, call.name),))
            for piece in _pieces(call.arguments_json):
                yield StreamChunk(tool_calls=(ToolCallDelta(index, arguments=piece),))
        final = self._finish(request, draft, start)
        yield StreamChunk(finish_reason=final.finish_reason, usage=final.usage, response=final)


def _template_values(request: ModelRequest, found: re.Match[str] | None) -> dict[str, str]:
    values = {"input": request.last_input().content or ""}
    if found is not None:
        values.update({f"g{i}": g or "" for i, g in enumerate(found.groups(), start=1)})
        values.update({k: v for k, v in found.groupdict().items() if v is not None})
    return values


def _fill(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return string.Template(value).safe_substitute(values)
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    return value


def _injected_tool(
    content: str, offered: Sequence[str], source: str | None
) -> tuple[str, dict[str, Any]] | None:
    """The tool an injected instruction in ``content`` names, and the arguments it gives."""
    candidates: list[tuple[int, str]] = []
    for name in offered:
        if name == source:
            continue
        position = content.find(name)
        if position >= 0:
            candidates.append((position, name))
    if not candidates:
        found = _INJECTED_CALL.search(content)
        if found is None or found.group(1) == source:
            return None
        candidates.append((found.start(1), found.group(1)))
    position, name = min(candidates)
    return name, _arguments_after(content, position + len(name))


def _arguments_after(content: str, start: int) -> dict[str, Any]:
    brace = content.find("{", start)
    if brace < 0 or brace - start > 40:
        return {}
    try:
        value, _ = json.JSONDecoder().raw_decode(content, brace)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _break_arguments(arguments: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Valid JSON that breaks ``schema``: drop a required argument, else mistype one, else add
    one the schema does not know."""
    required = [r for r in schema.get("required", []) if r in arguments]
    if required:
        del arguments[sorted(required)[0]]
        return arguments
    properties = schema.get("properties")
    if isinstance(properties, dict) and properties:
        name = sorted(properties)[0]
        declared = properties[name].get("type") if isinstance(properties[name], dict) else None
        arguments[name] = ["not", "a", "string"] if declared == "string" else "not-a-number"
        return arguments
    arguments["unexpected_argument"] = True
    return arguments


def _cut(text: str) -> str:
    """``text`` cut in half and left open, so that it is never valid JSON."""
    return text[: len(text) // 2] + "{"


def _pieces(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
