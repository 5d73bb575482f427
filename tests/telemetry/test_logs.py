"""Structured logs: JSON lines with run/step/trace ids, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from keel import App
from keel.telemetry import JsonFormatter, log_config, log_context

from .conftest import SCOPES, by_name

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture
def lines(traced: App) -> Iterator[io.StringIO]:
    """What the ``shop`` logger writes, as JSON lines formatted with the App's redactor."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(redactor=traced.redactor))
    logger = logging.getLogger("shop")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_lines_are_json_with_run_step_and_trace_ids_and_no_secrets(
    traced: App, spans: InMemorySpanExporter, lines: io.StringIO
) -> None:
    log = logging.getLogger("shop")

    @traced.tool("shop.charge", scope="ops:run")
    def charge(amount: int) -> dict[str, Any]:
        log.info("charging with key %s", SECRET, extra={"api_key": "plain-secret", "usd": amount})
        try:
            raise RuntimeError(f"gateway said: bad key {SECRET}")
        except RuntimeError:
            log.exception("charge failed once")
        return {"charged": amount}

    traced.add_policy("policy: shop\nscope: {tenant: acme}\ntools: {allow: [shop.charge]}\n")

    @traced.workflow("checkout", agent="shop-bot", scopes=SCOPES, tenant="acme")
    async def checkout(run: Any, _data: Any) -> None:
        await run.tool("orders.lookup", {"order_id": "A-1"})
        await run.tool("shop.charge", {"amount": 5})

    record = traced.runtime.submit("checkout")
    assert traced.runtime.worker().drain() == {"completed": 1}
    first, second = parsed(lines)
    call_span = by_name(spans)["execute_tool shop.charge"]
    for line in (first, second):
        assert line["logger"] == "shop"
        assert line["run_id"] == record.run_id
        assert line["workflow"] == "checkout"
        assert line["step_id"] == "1"
        assert line["trace_id"] == format_trace_id(call_span.context.trace_id)
        assert line["span_id"] == format_span_id(call_span.context.span_id)
    assert first["level"] == "info"
    marker = traced.redactor.redact(SECRET)
    assert first["message"] == f"charging with key {marker}"  # the audit log's marker
    assert first["api_key"].startswith("[REDACTED:secret:")
    assert first["usd"] == 5
    assert second["level"] == "error"
    assert marker in second["exception"] and "RuntimeError" in second["exception"]
    assert SECRET not in lines.getvalue()
    assert "plain-secret" not in lines.getvalue()


def test_log_context_outside_runs_and_without_tracing() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("keel.tests.telemetry")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with log_context(run_id="run_1", step_id=None):
            logger.warning("password=hunter2 for %s", "ops@example.com")
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    inside, after = parsed(stream)
    assert inside["run_id"] == "run_1" and "step_id" not in inside and "trace_id" not in inside
    assert "hunter2" not in inside["message"] and "ops@example.com" not in inside["message"]
    assert "run_id" not in after
    assert inside["ts"].endswith("+00:00")


def test_the_json_log_config_is_built_for_uvicorn_and_keel(traced: App) -> None:
    assert log_config("text") is None
    config = log_config("json", redactor=traced.redactor)
    assert config is not None
    assert set(config["loggers"]) == {"uvicorn", "uvicorn.error", "uvicorn.access", "keel"}
    spec = dict(config["formatters"]["json"])
    formatter = spec.pop("()")(**spec)
    assert isinstance(formatter, JsonFormatter)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s", (SECRET,), None)
    record.color_message = "ignored"
    line = json.loads(formatter.format(record))
    assert line["message"] == traced.redactor.redact(SECRET)
    assert "color_message" not in line


def test_keel_serve_writes_json_log_lines_without_secrets(tmp_path: Path) -> None:
    (tmp_path / "keel.yaml").write_text(
        f"store_url: sqlite:///{tmp_path / 'keel.db'}\nhome: {tmp_path / 'home'}\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "keel.cli", "serve", "--port", str(port)]
    command += ["--log-format", "json", "--config", str(tmp_path / "keel.yaml")]
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        assert httpx.get(f"{base}/healthz", params={"token": SECRET}).status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    records = [json.loads(line) for line in (out + err).splitlines() if line.strip()]
    assert records, err
    assert {r["logger"] for r in records} >= {"uvicorn.error", "uvicorn.access"}
    assert SECRET not in out + err
    assert any("[REDACTED:" in r["message"] for r in records if r["logger"] == "uvicorn.access")


def test_keel_serve_refuses_an_unknown_log_format(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "keel.cli", "serve", "--log-format", "xml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "--log-format" in done.stdout + done.stderr
    assert not (tmp_path / ".keel").exists()
