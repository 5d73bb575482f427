"""The gateway's call observer: one span per governed call, and the call counters.

Implements ``keel.gateway.gateway.CallObserver``. ``span(request)`` opens the call's span around
``Gateway.call`` / ``Gateway.acall`` (None when tracing is off, so the gateway skips it);
``observe`` runs once per call after its audit record committed and fills in what is known only
then: the resolved target, the verdict and rule, the record's chain and sequence number, and for
model calls the OpenTelemetry GenAI attributes (``gen_ai.operation.name=chat``,
``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.request.max_tokens``,
``gen_ai.usage.input_tokens``, ``gen_ai.response.finish_reasons`` …). A call the caller drives
itself (``Gateway.open``, for streams) has no enclosing span: ``observe`` records it as a span
spanning its measured latency.

Error messages go on spans only redacted (``keel.audit.Redactor``); arguments and results never.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from keel.audit import Record, Redactor
from keel.errors import KeelError
from keel.gateway import CallContext, CallRequest
from keel.telemetry.metrics import UNRESOLVED, Metrics
from keel.telemetry.tracing import AttributeValue, Tracing, current_trace_id

__all__ = ["GatewayObserver", "call_outcome"]

#: The request whose span ``span()`` made current (``observe`` annotates it, or makes one).
_OPEN: ContextVar[CallRequest | None] = ContextVar("keel_open_call", default=None)
_MAX_NAME = 120


class GatewayObserver:
    """Spans (when ``tracing`` is enabled) and counters (when ``metrics`` is given) per call.

    Thread-safe; never raises from ``observe`` for a well-formed context (the gateway guards it
    anyway).
    """

    def __init__(self, tracing: Tracing, metrics: Metrics | None, redactor: Redactor) -> None:
        self._tracing = tracing
        self._metrics = metrics
        self._redactor = redactor

    # -- CallObserver ------------------------------------------------------------------------------

    def span(self, request: CallRequest) -> AbstractContextManager[object] | None:
        if not self._tracing.enabled:
            return None
        return self._span(request)

    @contextmanager
    def _span(self, request: CallRequest) -> Iterator[None]:
        model = request.kind == "model"
        operation = "chat" if model else "execute_tool"
        token = _OPEN.set(request)
        try:
            with self._tracing.tracer.start_as_current_span(
                f"{operation} {_label(request.tool)}",
                kind=SpanKind.CLIENT if model else SpanKind.INTERNAL,
                attributes={"gen_ai.operation.name": operation},
                record_exception=False,
                set_status_on_exception=False,
            ):
                yield
        finally:
            _OPEN.reset(token)

    def trace_id(self) -> str | None:
        return current_trace_id()

    def observe(
        self, ctx: CallContext, record: Record, latency_ms: float, error: BaseException | None
    ) -> None:
        entry = record.entry
        call = ctx.call
        kind = call.kind if call is not None else ctx.request.kind
        target = call.target if call is not None else UNRESOLVED
        verdict = entry.decision or "deny"
        outcome = call_outcome(entry.kind, entry.body)
        code = _code(error, entry.body) if outcome in ("error", "refused") else None
        if self._metrics is not None:
            self._metrics.record_call(
                kind, target, verdict, outcome, latency_ms / 1000.0, ctx.cost, code
            )
        if not self._tracing.enabled:
            return
        if _OPEN.get() is ctx.request:
            self._annotate(trace.get_current_span(), ctx, record, outcome, code, error)
            return
        ended = time.time_ns()
        model = kind == "model"
        span = self._tracing.tracer.start_span(
            f"{'chat' if model else 'execute_tool'} {_label(target)}",
            kind=SpanKind.CLIENT if model else SpanKind.INTERNAL,
            start_time=ended - int(latency_ms * 1_000_000),
        )
        self._annotate(span, ctx, record, outcome, code, error)
        span.end(end_time=ended)

    # -- attributes -------------------------------------------------------------------------------

    def _annotate(
        self,
        span: Span,
        ctx: CallContext,
        record: Record,
        outcome: str,
        code: str | None,
        error: BaseException | None,
    ) -> None:
        if not span.is_recording():
            return
        entry = record.entry
        attributes: dict[str, AttributeValue | None] = {
            "keel.call_id": entry.call_id,
            "keel.tool": entry.tool,
            "keel.tenant": entry.tenant,
            "keel.agent": entry.agent,
            "keel.run.id": entry.run_id,
            "keel.step.id": entry.step_id,
            "keel.verdict": entry.decision,
            "keel.rule_id": entry.rule_id,
            "keel.outcome": outcome,
            "keel.record.chain": record.chain,
            "keel.record.seq": record.seq,
            "keel.cost.usd": str(ctx.cost.usd) if outcome == "ok" else None,
        }
        call = ctx.call
        if call is not None and call.kind == "model":
            attributes.update(_model_attributes(ctx, outcome))
            name = attributes.get("gen_ai.request.model") or call.target
            span.update_name(f"chat {_label(name)}")
        elif call is not None:
            attributes["gen_ai.operation.name"] = "execute_tool"
            attributes["gen_ai.tool.name"] = call.target
            span.update_name(f"execute_tool {_label(call.target)}")
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if code is not None:
            span.set_attribute("error.type", code)
            message = str(error) if error is not None else code
            text = self._redactor.redact(message)
            span.set_status(Status(StatusCode.ERROR, str(text)[:500]))


def call_outcome(kind: str, body: Mapping[str, Any]) -> str:
    """What became of a governed call, from its audit record's ``kind`` and ``body``: ``ok`` or
    ``error`` (executed), ``cached``, ``replayed``, ``shadow`` or ``refused`` (not executed)."""
    if kind == "call":
        return "error" if "error" in body else "ok"
    if body.get("cached"):
        return "cached"
    if body.get("replayed"):
        return "replayed"
    if body.get("shadow"):
        return "shadow"
    return "refused"


def _code(error: BaseException | None, body: Mapping[str, Any]) -> str:
    if isinstance(error, KeelError):
        return error.code
    recorded = body.get("error")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("code"), str):
        return str(recorded["code"])
    return type(error).__name__ if error is not None else "error"


def _model_attributes(ctx: CallContext, outcome: str) -> dict[str, AttributeValue | None]:
    """GenAI semantic-convention attributes of a model call, from its request and response."""
    arguments = ctx.arguments or {}
    tool = ctx.tool
    provider = getattr(getattr(tool, "provider", None), "name", None)
    requested = getattr(tool, "provider_model", None) or arguments.get("model")
    attributes: dict[str, AttributeValue | None] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": _str(requested),
        "gen_ai.request.max_tokens": _int(arguments.get("max_tokens")),
        "gen_ai.request.temperature": _float(arguments.get("temperature")),
        "gen_ai.request.top_p": _float(arguments.get("top_p")),
        "gen_ai.request.seed": _int(arguments.get("seed")),
        "keel.model": ctx.call.target if ctx.call is not None else None,
    }
    n = _int(arguments.get("n"))
    if n is not None and n != 1:
        attributes["gen_ai.request.choice.count"] = n
    response: Any = ctx.result
    if response is None and ctx.replay is not None:
        response = ctx.replay.get("value")
    if isinstance(response, Mapping) and outcome in ("ok", "cached", "replayed"):
        provider = _str(response.get("provider")) or provider
        attributes["gen_ai.response.model"] = _str(response.get("model"))
        attributes["gen_ai.response.id"] = _str(response.get("response_id"))
        usage = response.get("usage")
        if isinstance(usage, Mapping):
            attributes["gen_ai.usage.input_tokens"] = _int(usage.get("input_tokens"))
            attributes["gen_ai.usage.output_tokens"] = _int(usage.get("output_tokens"))
        choices = response.get("choices")
        if isinstance(choices, list):
            reasons = tuple(
                str(c["finish_reason"])
                for c in choices
                if isinstance(c, Mapping) and c.get("finish_reason") is not None
            )
            attributes["gen_ai.response.finish_reasons"] = reasons or None
        if outcome == "cached":
            attributes["keel.cached"] = True
    attributes["gen_ai.provider.name"] = _str(provider)
    attributes["gen_ai.system"] = _str(provider)  # the older name of gen_ai.provider.name
    return attributes


def _label(name: object) -> str:
    """A target name as it may appear in a span name (printable, bounded)."""
    text = name if isinstance(name, str) else "?"
    return text.encode("unicode_escape").decode("ascii")[:_MAX_NAME]


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
