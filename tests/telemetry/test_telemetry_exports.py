"""The public surface of keel.telemetry, pinned: a change to it is a deliberate one."""

from __future__ import annotations

import keel.telemetry

EXPECTED = [
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


def test_exports() -> None:
    assert sorted(keel.telemetry.__all__) == sorted(EXPECTED)
    for name in EXPECTED:
        assert getattr(keel.telemetry, name) is not None
