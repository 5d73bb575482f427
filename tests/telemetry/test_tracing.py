"""Spans: run → step → call nesting, GenAI attributes, trace ids in audit records, opt-in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_trace_id

from keel import App
from keel.audit import Record, query
from keel.errors import PolicyDenied, ToolError, UsageError
from keel.gateway import CallContext, CallRequest, Gateway
from keel.testing import FrozenClock, RecordingTool

from .conftest import SCOPES, build, by_name, sqlite_config

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 50, **extra}


def test_run_step_and_call_spans_nest_and_model_calls_carry_genai_attributes(
    traced: App, spans: InMemorySpanExporter
) -> None:
    @traced.workflow("triage-flow", agent="triage-bot", scopes=SCOPES, tenant="acme")
    async def flow(run: Any, data: Any) -> dict[str, Any]:
        order = await run.tool("orders.lookup", {"order_id": data["order_id"]})
        answer = await run.model(ask("I want a refund", model="triage"))
        return {"order": order, "answer": answer["choices"][0]["text"]}

    record = traced.runtime.submit("triage-flow", {"order_id": "A-1"})
    assert traced.runtime.worker().drain() == {"completed": 1}
    found = by_name(spans)
    run = found["run triage-flow"]
    tool_step, model_step = found["step tool orders.lookup"], found["step model triage"]
    tool_call, chat = found["execute_tool orders.lookup"], found["chat triage"]

    assert run.parent is None
    for step in (tool_step, model_step):
        assert step.parent is not None and step.parent.span_id == run.context.span_id
    assert tool_call.parent is not None and tool_call.parent.span_id == tool_step.context.span_id
    assert chat.parent is not None and chat.parent.span_id == model_step.context.span_id
    traces = {s.context.trace_id for s in (run, tool_step, model_step, tool_call, chat)}
    assert traces == {run.context.trace_id}

    assert run.attributes is not None and run.attributes["keel.run.id"] == record.run_id
    assert run.attributes["keel.run.status"] == "completed"
    assert tool_step.attributes is not None and tool_step.attributes["keel.step.id"] == "0"
    assert tool_call.attributes is not None
    assert tool_call.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool_call.attributes["gen_ai.tool.name"] == "orders.lookup"
    assert tool_call.attributes["keel.verdict"] == "allow"

    assert chat.kind is SpanKind.CLIENT
    attributes = chat.attributes
    assert attributes is not None
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "triage"
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.provider.name"] == "scripted"
    assert attributes["gen_ai.system"] == "scripted"
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    (model_record,) = query(traced.store, tool="triage", kind="call")
    cost = model_record.entry.body["cost"]
    assert attributes["gen_ai.usage.input_tokens"] == cost["input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == cost["output_tokens"] > 0
    assert attributes["keel.run.id"] == record.run_id
    assert attributes["keel.step.id"] == "1"


def test_the_trace_id_in_each_audit_record_is_its_spans(
    traced: App, spans: InMemorySpanExporter
) -> None:
    @traced.workflow("lookup", agent="bot", scopes=SCOPES, tenant="acme")
    async def lookup(run: Any, _data: Any) -> None:
        await run.tool("orders.lookup", {"order_id": "A-1"})

    record = traced.runtime.submit("lookup")
    traced.runtime.worker().drain()
    run_trace = format_trace_id(by_name(spans)["run lookup"].context.trace_id)
    records = query(traced.store, run_id=record.run_id, kind="call")
    assert [r.entry.body["trace_id"] for r in records] == [run_trace]

    # Outside a run, the call's own span is the root of its trace.
    spans.clear()
    agent = traced.agent("bot", tenant="acme", scopes=SCOPES)
    result = agent.call("orders.lookup", {"order_id": "A-2"})
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    entry = _record(traced, result.record_chain, result.record_seq)
    assert entry.entry.body["trace_id"] == format_trace_id(span.context.trace_id)
    assert span.attributes is not None
    assert span.attributes["keel.record.seq"] == result.record_seq
    assert span.attributes["keel.record.chain"] == result.record_chain
    assert span.attributes["keel.call_id"] == result.call_id

    # A trace id the caller names wins over the current span's.
    named = agent.call("orders.lookup", {"order_id": "A-3"}, trace_id="caller-trace")
    assert _record(traced, named.record_chain, named.record_seq).entry.body["trace_id"] == (
        "caller-trace"
    )


def _record(app: App, chain: str | None, seq: int | None) -> Record:
    return next(r for r in query(app.store, limit=1000) if (r.chain, r.seq) == (chain, seq))


def test_phases_group_steps_and_replayed_steps_get_no_span(
    traced: App, spans: InMemorySpanExporter
) -> None:
    clock = traced.clock
    assert isinstance(clock, FrozenClock)

    @traced.workflow("phased", agent="bot", scopes=SCOPES, tenant="acme")
    async def phased(run: Any, _data: Any) -> None:
        with run.phase("plan"):
            await run.tool("orders.lookup", {"order_id": "A-1"})
        await run.sleep(60)
        with run.phase("act"):
            await run.tool("orders.lookup", {"order_id": "A-2"})

    traced.runtime.submit("phased")
    worker = traced.runtime.worker()
    assert worker.drain() == {"waiting": 1}
    clock.advance(seconds=61)
    assert worker.drain() == {"completed": 1}
    finished = spans.get_finished_spans()
    runs = [s for s in finished if s.name == "run phased"]
    steps = [s for s in finished if s.name == "step tool orders.lookup"]
    assert [r.attributes["keel.run.status"] for r in runs if r.attributes] == [
        "waiting",
        "completed",
    ]
    assert len(steps) == 2  # the first step replayed on resume: no second span for it
    phases = {s.context.span_id: s for s in finished if s.name.startswith("phase ")}
    parents = [phases[s.parent.span_id].name for s in steps if s.parent is not None]
    assert parents == ["phase plan", "phase act"]
    for phase in phases.values():
        assert phase.parent is not None
        assert phase.parent.span_id in {r.context.span_id for r in runs}


def test_a_refused_or_failed_call_marks_its_span_without_leaking_secrets(
    traced: App, spans: InMemorySpanExporter
) -> None:
    @traced.tool("ops.leak", scope="ops:run")
    def leak() -> None:
        raise RuntimeError(f"upstream refused key {SECRET}")

    traced.add_policy("policy: leak\nscope: {tenant: acme}\ntools: {allow: [ops.leak]}\n")
    traced.register(RecordingTool("payroll.export", scope="ops:run"))
    agent = traced.agent("bot", tenant="acme", scopes=SCOPES)
    with pytest.raises(PolicyDenied):
        agent.call("payroll.export", {})
    with pytest.raises(ToolError):
        agent.call("ops.leak", {})
    refused, failed = spans.get_finished_spans()
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.attributes is not None
    assert refused.attributes["keel.verdict"] == "deny"
    assert refused.attributes["keel.outcome"] == "refused"
    assert refused.attributes["error.type"] == "policy_denied"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["keel.outcome"] == "error"
    assert failed.status.description is not None
    assert "[REDACTED:openai_key:" in failed.status.description
    for span in (refused, failed):
        assert SECRET not in repr(span.to_json())


def test_a_cached_model_answer_is_marked_on_its_span(
    traced: App, spans: InMemorySpanExporter
) -> None:
    agent = traced.agent("bot", tenant="acme", scopes=SCOPES)
    request = ask("refund please", model="triage", temperature=0)
    first = agent.model(request)
    second = agent.model(request)
    assert not first.result.cached and second.result.cached
    chats = [s for s in spans.get_finished_spans() if s.name == "chat triage"]
    assert [s.attributes.get("keel.outcome") for s in chats if s.attributes] == ["ok", "cached"]
    assert chats[1].attributes is not None and chats[1].attributes["keel.cached"] is True


def test_tracing_is_off_by_default_and_then_costs_no_span(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    with build(config) as app:
        assert app.telemetry.tracing.provider is None
        observer = app.telemetry.observer
        assert observer is not None  # metrics are on by default
        assert observer.span(CallRequest(tool="orders.lookup", arguments={}, token="t")) is None
        with pytest.raises(UsageError):
            app.telemetry.tracing.add_exporter(InMemorySpanExporter())
        result = app.agent("bot", tenant="acme", scopes=SCOPES).call("orders.lookup", {})
        assert _record(app, result.record_chain, result.record_seq).entry.body["trace_id"] is None
    quiet = config.model_copy(update={"telemetry_metrics": False})
    with build(quiet) as app:
        assert app.telemetry.observer is None and app.telemetry.metrics is None


class _Broken:
    """An observer that fails at everything it is asked."""

    def span(self, request: CallRequest) -> None:
        return None

    def trace_id(self) -> str | None:
        raise RuntimeError("observer down")

    def observe(self, ctx: CallContext, record: Record, latency_ms: float, error: Any) -> None:
        raise RuntimeError("observer down")


def test_a_failing_observer_never_changes_a_calls_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with build(sqlite_config(tmp_path)) as app:
        gateway = Gateway(
            store=app.store,
            audit=app.audit,
            redactor=app.redactor,
            clock=app.clock,
            guards=app.gateway.guards,
            observer=_Broken(),
        )
        app.register(RecordingTool("payroll.export", scope="ops:run"))
        token = app.mint_token("bot", tenant="acme", scopes=SCOPES)
        result = gateway.call(CallRequest(tool="orders.lookup", arguments={}, token=token))
        assert result.value == {"status": "paid"}
        with pytest.raises(PolicyDenied):
            gateway.call(CallRequest(tool="payroll.export", arguments={}, token=token))
        assert "the call observer failed" in caplog.text
        record = _record(app, result.record_chain, result.record_seq)
        assert record.entry.body["trace_id"] is None
        assert app.verify_audit().ok
