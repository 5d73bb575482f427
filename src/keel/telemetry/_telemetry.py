"""``Telemetry``: one App's tracing, metrics and the gateway observer, built from its config."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Final

from opentelemetry.trace import Span, SpanKind

from keel.audit import Redactor
from keel.config import KeelConfig
from keel.telemetry.metrics import Metrics, StateSources
from keel.telemetry.observer import GatewayObserver
from keel.telemetry.tracing import Tracing, current_trace_id, fail

__all__ = ["Telemetry"]

#: Run statuses that end a run's span as failed.
_FAILED_RUNS: Final = frozenset({"failed", "killed", "parked", "escalated", "cancelled"})


class Telemetry:
    """Tracing, metrics and the gateway's call observer of one App. Thread-safe.

    ``observer`` is None when both tracing and metrics are off: the gateway then does no
    telemetry work at all. ``metrics`` is None when metrics are off.
    """

    def __init__(
        self, *, redactor: Redactor, tracing: Tracing | None = None, metrics: Metrics | None = None
    ) -> None:
        self.redactor = redactor
        self.tracing = tracing or Tracing()
        self.metrics = metrics
        self.observer: GatewayObserver | None = (
            GatewayObserver(self.tracing, metrics, redactor)
            if metrics is not None or self.tracing.enabled
            else None
        )

    @classmethod
    def from_config(
        cls, config: KeelConfig, *, redactor: Redactor, sources: StateSources | None = None
    ) -> Telemetry:
        """Telemetry as ``config`` says (``telemetry_*`` settings); ``sources`` feed the
        scrape-time metrics."""
        tracing = Tracing(
            enabled=config.telemetry_tracing,
            service_name=config.telemetry_service_name,
            otlp_endpoint=config.telemetry_otlp_endpoint,
            set_global=config.telemetry_global_tracer,
        )
        metrics: Metrics | None = None
        if config.telemetry_metrics:
            metrics = Metrics()
            if sources is not None:
                metrics.add_state(sources)
        return cls(redactor=redactor, tracing=tracing, metrics=metrics)

    # -- spans of the runtime ----------------------------------------------------------------------

    def run_span(
        self, *, run_id: str, workflow: str, tenant: str, agent: str
    ) -> AbstractContextManager[Span]:
        """The span of one execution of a run (until it ends or waits); binds the log context."""
        return self.tracing.scope(
            f"run {workflow}",
            {
                "keel.run.id": run_id,
                "keel.workflow": workflow,
                "keel.tenant": tenant,
                "gen_ai.agent.name": agent,
            },
            log={"run_id": run_id, "workflow": workflow},
        )

    def end_run(self, span: Span, status: str) -> None:
        """Record the status a run execution ended in (failed ones mark the span failed)."""
        span.set_attribute("keel.run.status", status)
        if status in _FAILED_RUNS:
            fail(span, f"run_{status}")

    def step_span(
        self, *, run_id: str, step_id: str, kind: str, target: str, replayed: bool = False
    ) -> AbstractContextManager[Span]:
        """The span of one step; a step answered from the journal gets none (only log ids)."""
        return self.tracing.scope(
            f"step {kind} {target}",
            {
                "keel.run.id": run_id,
                "keel.step.id": step_id,
                "keel.step.kind": kind,
                "keel.step.target": target,
            },
            log={"run_id": run_id, "step_id": step_id},
            span=not replayed,
        )

    def phase_span(self, name: str, *, run_id: str | None = None) -> AbstractContextManager[Span]:
        """A named phase of an agent loop (plan, retrieve, decide, act, verify, respond): a
        span that the steps inside it nest under."""
        return self.tracing.scope(
            f"phase {name}", {"keel.phase": name, "keel.run.id": run_id}, log={"phase": name}
        )

    # -- the server --------------------------------------------------------------------------------

    @contextmanager
    def request_span(self, headers: Mapping[str, str], method: str) -> Iterator[Span]:
        """An HTTP request: the caller's ``traceparent`` (if any) becomes the parent context,
        and with tracing on a server span covers the request."""
        parent = self.tracing.remote_parent(headers) if "traceparent" in headers else nullcontext()
        with (
            parent,
            self.tracing.scope(
                method, {"http.request.method": method}, kind=SpanKind.SERVER
            ) as span,
        ):
            yield span

    # -- reading -----------------------------------------------------------------------------------

    @staticmethod
    def trace_id() -> str | None:
        """The current W3C trace id, or None."""
        return current_trace_id()

    def close(self) -> None:
        """Flush and stop span export (the App calls this when it closes)."""
        self.tracing.shutdown()
