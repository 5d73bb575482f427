"""Telemetry of one App: OpenTelemetry spans, Prometheus metrics and structured JSON logs.

    app = App(KeelConfig(telemetry_tracing=True))      # spans in process; nothing exported
    app.telemetry.tracing.add_exporter(exporter)        # e.g. an OTLP or in-memory exporter
    app.telemetry.metrics.render()                      # what GET /metrics serves

Spans (``keel.telemetry.tracing``): run → [phase] → step → call, GenAI semantic conventions on
model calls; OTLP export only when ``telemetry_otlp_endpoint`` is set. Metrics
(``keel.telemetry.metrics``): a registry per App, call counters from the gateway observer and
state (approvals, runs, spend, breakers, cache) read at scrape time. Logs
(``keel.telemetry.logs``): JSON lines with run/step/trace ids, secrets redacted.

The gateway defines the observer interface (``keel.gateway.gateway.CallObserver``) and never
imports this package; without telemetry it does no telemetry work.
"""

from __future__ import annotations

from keel.telemetry._telemetry import Telemetry
from keel.telemetry.logs import JsonFormatter, bind_log_context, log_config, log_context
from keel.telemetry.metrics import Metrics, StateCollector, StateSources
from keel.telemetry.observer import GatewayObserver
from keel.telemetry.tracing import Tracing, current_trace_id

__all__ = [
    "GatewayObserver",
    "JsonFormatter",
    "Metrics",
    "StateCollector",
    "StateSources",
    "Telemetry",
    "Tracing",
    "bind_log_context",
    "current_trace_id",
    "log_config",
    "log_context",
]
