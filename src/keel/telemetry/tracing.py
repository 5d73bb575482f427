"""OpenTelemetry tracing owned by one App: its own tracer provider, spans for runs, steps, calls.

Nothing is global and nothing leaves the machine unless the config says so:

- ``telemetry_tracing: false`` (default) and no endpoint: no tracer provider is made; the span
  helpers hand out OpenTelemetry's non-recording span and the gateway opens no span at all.
- ``telemetry_tracing: true``: an SDK ``TracerProvider`` owned by this App makes spans in process;
  they are dropped unless an exporter is added (:meth:`Tracing.add_exporter`, e.g. a test's
  ``InMemorySpanExporter``). Trace ids go into audit records.
- ``telemetry_otlp_endpoint``: spans are also batched to that OTLP/HTTP collector (protobuf;
  ``OTEL_EXPORTER_OTLP_HEADERS`` and friends apply). Environment variables alone never turn
  export on.
- ``telemetry_global_tracer: true``: the provider is also installed as the process-global one.

The span tree of a durable run (GenAI semantic conventions on model and tool calls)::

    run <workflow>                      keel.run.id, keel.workflow, keel.tenant, keel.run.status
      [phase <name>]                    plan, retrieve, decide, act, verify, respond (Run.phase)
        step <n> <kind> <target>        keel.step.id, keel.step.kind, keel.step.target
          chat <model>                  gen_ai.operation.name=chat, gen_ai.request.*, usage …
          execute_tool <tool>           gen_ai.operation.name=execute_tool, gen_ai.tool.name

Thread safety: share one ``Tracing``; spans follow the context (``contextvars``) of the task or
thread that opened them, including ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from keel.errors import KeelError, UsageError
from keel.telemetry.logs import bind_log_context, reset_log_context

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["AttributeValue", "Tracing", "current_trace_id", "traces_url"]

AttributeValue = str | bool | int | float | tuple[str, ...]

_PROPAGATOR = TraceContextTextMapPropagator()
_NO_TRACER = trace.NoOpTracer()


def current_trace_id() -> str | None:
    """The W3C trace id (32 lowercase hex digits) of the current span context, or None."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector base URL (``/v1/traces`` appended once)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracing:
    """An App's tracer provider and the spans Keel makes; see the module docstring."""

    def __init__(
        self,
        *,
        enabled: bool = False,
        service_name: str = "keel",
        otlp_endpoint: str | None = None,
        set_global: bool = False,
    ) -> None:
        self.enabled = enabled or otlp_endpoint is not None
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer = _NO_TRACER
        if not self.enabled:
            return
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: service_name}), shutdown_on_exit=False
        )
        if otlp_endpoint is not None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.add_exporter(OTLPSpanExporter(endpoint=traces_url(otlp_endpoint)), provider)
        if set_global:
            trace.set_tracer_provider(provider)
        self.provider = provider
        self.tracer = provider.get_tracer("keel")

    def add_exporter(
        self, exporter: SpanExporter, provider: TracerProvider | None = None, *, batch: bool = True
    ) -> None:
        """Send finished spans to ``exporter`` too (batched in a background thread, or one by one
        on the ending thread with ``batch=False``, as tests want)."""
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        target = provider or self.provider
        if target is None:
            raise UsageError("tracing is off: set telemetry_tracing (or an OTLP endpoint) first")
        target.add_span_processor(
            BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        )

    def flush(self, timeout_millis: int = 30_000) -> bool:
        """Export the spans that have ended; True when every exporter took them in time."""
        return self.provider is None or self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop the exporters. Spans ended afterwards are dropped."""
        if self.provider is not None:
            self.provider.shutdown()

    # -- spans ---------------------------------------------------------------------------------

    @contextmanager
    def scope(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue | None],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        log: Mapping[str, str | None] | None = None,
        span: bool = True,
    ) -> Iterator[Span]:
        """A span named ``name`` (None attributes are left out) made current for the block, and
        ``log`` fields bound to the log context (``span=False``: only those). A ``KeelError``
        leaving the block marks the span as failed with its code (its message is not recorded:
        it may hold data); other exceptions (the runtime's control flow) leave the status."""
        token = bind_log_context(**log) if log else None
        try:
            if not (span and self.enabled):
                yield INVALID_SPAN
                return
            with self.tracer.start_as_current_span(
                name,
                kind=kind,
                attributes={k: v for k, v in attributes.items() if v is not None},
                record_exception=False,
                set_status_on_exception=False,
            ) as current:
                try:
                    yield current
                except KeelError as exc:
                    fail(current, exc.code)
                    raise
        finally:
            if token is not None:
                reset_log_context(token)

    @contextmanager
    def remote_parent(self, headers: Mapping[str, str]) -> Iterator[None]:
        """Make the caller's W3C ``traceparent``/``tracestate`` the current context (even with
        tracing off: its trace id then still goes into audit records)."""
        token = otel_context.attach(_PROPAGATOR.extract(headers))
        try:
            yield
        finally:
            otel_context.detach(token)


def fail(span: Span, code: str, description: str | None = None) -> None:
    """Mark ``span`` as failed with the error code ``code`` (``error.type``)."""
    span.set_attribute("error.type", code)
    span.set_status(Status(StatusCode.ERROR, description or code))
