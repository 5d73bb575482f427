"""OTLP export: to a collector stand-in on loopback when configured, nothing at all otherwise;
and the caller's ``traceparent`` honoured by the server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from keel import App
from keel.audit import query
from keel.telemetry.tracing import traces_url

from .conftest import SCOPES, build, serving, sqlite_config

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP collector stand-in: records every POST (path, content type, body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, bytes]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                collector.posts.append((self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[tuple[str, str, Any]]:
        """(service name, span name, span) of everything posted to /v1/traces."""
        found = []
        for path, _type, body in self.posts:
            assert path == "/v1/traces"
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append((attributes.get("service.name", ""), span.name, span))
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    stand_in = Collector()
    thread = threading.Thread(target=stand_in.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        stand_in.server.shutdown()
        stand_in.server.server_close()
        thread.join(10)


def test_spans_go_to_the_configured_collector(tmp_path: Path, collector: Collector) -> None:
    config = sqlite_config(
        tmp_path, telemetry_otlp_endpoint=collector.url, telemetry_service_name="keel-test"
    )
    with build(config) as app:
        assert app.telemetry.tracing.enabled  # an endpoint implies tracing
        result = app.agent("bot", tenant="acme", scopes=SCOPES).call("orders.lookup", {})
        (record,) = [r for r in query(app.store, kind="call") if r.seq == result.record_seq]
    # Closing the App flushed the batch.
    assert collector.posts and collector.posts[0][1] == "application/x-protobuf"
    ((service, name, span),) = collector.spans()
    assert (service, name) == ("keel-test", "execute_tool orders.lookup")
    assert span.trace_id.hex() == record.entry.body["trace_id"]


def test_nothing_is_sent_unless_an_endpoint_is_configured(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The standard variables alone never turn export on.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url(collector.url))
    for settings in ({}, {"telemetry_tracing": True}):
        with build(sqlite_config(tmp_path / str(len(settings)), **settings)) as app:
            agent = app.agent("bot", tenant="acme", scopes=SCOPES)
            agent.call("orders.lookup", {})
            app.telemetry.tracing.flush()
    assert collector.posts == []


def test_traces_url() -> None:
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"


def test_the_callers_traceparent_reaches_the_audit_record_even_without_tracing(
    tmp_path: Path,
) -> None:
    with build(sqlite_config(tmp_path)) as app, serving(app) as base:
        token = app.mint_token("remote-bot", tenant="acme", scopes=SCOPES)
        response = httpx.post(
            f"{base}/v1/calls",
            json={"tool": "orders.lookup", "arguments": {}},
            headers={
                "Authorization": f"Bearer {token}",
                "traceparent": f"00-{TRACE}-{PARENT}-01",
            },
        )
        assert response.status_code == 200
        seq = response.json()["record"]["seq"]
        (record,) = [r for r in query(app.store, kind="call") if r.seq == seq]
        assert record.entry.body["trace_id"] == TRACE


def test_with_tracing_a_server_span_joins_the_callers_trace(
    traced: App, spans: InMemorySpanExporter
) -> None:
    token = traced.mint_token("remote-bot", tenant="acme", scopes=SCOPES)
    with serving(traced) as base:
        response = httpx.post(
            f"{base}/v1/calls",
            json={"tool": "orders.lookup", "arguments": {}},
            headers={"Authorization": f"Bearer {token}", "traceparent": f"00-{TRACE}-{PARENT}-01"},
        )
        assert response.status_code == 200
        # The server span ends after the response went out: wait until it has.
        done = threading.Event()
        for _ in range(600):
            if any(s.kind is SpanKind.SERVER for s in spans.get_finished_spans()):
                break
            done.wait(0.05)
    (server,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    (call,) = [s for s in spans.get_finished_spans() if s.name == "execute_tool orders.lookup"]
    assert server.name == "POST /v1/calls"
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT
    assert format(server.context.trace_id, "032x") == TRACE
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert call.parent is not None and call.parent.span_id == server.context.span_id
