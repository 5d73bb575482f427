"""Apps with telemetry for the tests: an in-memory span exporter, a loopback HTTP server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from keel import App, KeelConfig
from keel.testing import FrozenClock, RecordingTool, Reply, Rule, ScriptedModel

POLICY = """
policy: telemetry
scope: {tenant: acme}
tools: {allow: [orders.lookup, billing.refund, ops.fail]}
models: {allow: ["*"]}
approvers: [finance]
require_approval_if_over: {billing.refund: 100}
spending_limit_usd: 100
"""

MODELS = {"prices": {"scripted:*": {"input": "1.00", "output": "2.00"}}}
SCOPES = ["orders:read", "billing:write", "ops:run", "models:invoke"]


def build(config: KeelConfig, clock: FrozenClock | None = None) -> App:
    """An App with the test policy, three tools and a scripted model ``triage``."""
    app = App(config, clock=clock or FrozenClock())
    app.add_policy(POLICY)
    app.register(
        RecordingTool(
            "orders.lookup", scope="orders:read", result={"status": "paid"}, cost_usd="0.25"
        )
    )
    app.register(RecordingTool("billing.refund", scope="billing:write", effect="irreversible"))
    app.register(RecordingTool("ops.fail", scope="ops:run", fail_times=99, retryable=False))
    model = ScriptedModel([Rule(r"refund", Reply(text="category: refund"))], default="other")
    app.add_model("triage", model)
    return app


def sqlite_config(folder: Path, **settings: Any) -> KeelConfig:
    """A config on a SQLite file in ``folder``, with the test model prices."""
    return KeelConfig(
        store_url=f"sqlite:///{folder / 'keel.db'}",
        home=folder / "home",
        models=MODELS,
        **settings,
    )


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(tmp_path: Path, spans: InMemorySpanExporter) -> Iterator[App]:
    """An App on SQLite with tracing on; its spans go to ``spans`` as they end."""
    with build(sqlite_config(tmp_path, telemetry_tracing=True)) as app:
        app.telemetry.tracing.add_exporter(spans, batch=False)
        yield app


@contextmanager
def serving(app: App) -> Iterator[str]:
    """``app``'s HTTP server on a free loopback port; yields its base URL."""
    from keel.server import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(app), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            threading.Event().wait(0.05)
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def by_name(spans: InMemorySpanExporter) -> dict[str, Any]:
    """The finished spans by name (the last of each name)."""
    return {span.name: span for span in spans.get_finished_spans()}
