"""Durable workflows: replay, timers, non-determinism, kill switch, failure and re-drive."""

from __future__ import annotations

from typing import Any

import pytest

from keel import App
from keel.audit import query
from keel.testing import FrozenClock, RecordingTool, ScriptedModel

SCOPES = ["bank:read", "bank:write", "models:invoke"]


def bank_tools(app: App) -> dict[str, RecordingTool]:
    tools = {
        "balance": RecordingTool("bank.balance", scope="bank:read", result={"usd": 500}),
        "transfer": RecordingTool(
            "bank.transfer",
            scope="bank:write",
            effect="irreversible",
            idempotent=True,
            result=lambda args, ctx: {"ok": True, "key": ctx.idempotency_key},
        ),
        "notify": RecordingTool("bank.notify", scope="bank:write", effect="reversible"),
    }
    for tool in tools.values():
        app.register(tool)
    return tools


def test_a_workflow_runs_to_completion_and_every_transition_is_recorded(app: App) -> None:
    tools = bank_tools(app)

    @app.workflow("payout", agent="payout-bot", scopes=SCOPES)
    async def payout(run: Any, payload: dict[str, Any]) -> dict[str, Any]:
        balance = await run.tool("bank.balance", {})
        receipt = await run.tool("bank.transfer", {"to": payload["to"], "amount": 10})
        run.state["done"] = True
        return {"balance": balance["usd"], "receipt": receipt}

    record = app.runtime.submit("payout", {"to": "acct-1"})
    assert app.runtime.worker().drain() == {"completed": 1}
    done = app.runtime.get(record.run_id)
    assert done.status == "completed"
    assert done.result["receipt"]["key"] == f"{record.run_id}/1"
    assert done.state == {"done": True}
    assert [s.status for s in app.runtime.steps(record.run_id)] == ["succeeded", "succeeded"]
    other = app.runtime.submit("payout", {"to": "acct-2"})  # not run: no steps yet
    batch = app.runtime.runs.steps_of([record.run_id, other.run_id, "run_unknown"])
    assert batch[record.run_id] == app.runtime.steps(record.run_id)
    assert batch[other.run_id] == [] and batch["run_unknown"] == []
    transitions = [
        r.entry.rule_id for r in reversed(query(app.store, run_id=record.run_id, kind="control"))
    ]
    assert transitions == ["run.submitted", "run.started", "run.completed"]
    assert tools["transfer"].calls == 1
    assert app.verify_audit().ok


def test_durable_sleep_replays_completed_steps_without_executing_them(
    app: App, clock: FrozenClock
) -> None:
    tools = bank_tools(app)

    @app.workflow("slow", agent="bot", scopes=SCOPES)
    async def slow(run: Any, _input: Any) -> str:
        await run.tool("bank.transfer", {"to": "a", "amount": 1})
        await run.sleep(3 * 24 * 3600)  # three days
        await run.tool("bank.notify", {"msg": "done"})
        return "ok"

    record = app.runtime.submit("slow")
    worker = app.runtime.worker()
    assert worker.drain() == {"waiting": 1}
    assert worker.drain() == {}  # nothing is runnable while it sleeps
    clock.advance(days=3, seconds=1)
    assert worker.drain() == {"completed": 1}
    assert tools["transfer"].calls == 1  # replayed from the journal, not executed again
    assert tools["notify"].calls == 1
    assert app.runtime.get(record.run_id).result == "ok"


def test_changed_code_parks_the_run_instead_of_diverging(app: App, clock: FrozenClock) -> None:
    tools = bank_tools(app)
    version = {"n": 1}

    @app.workflow("changing", agent="bot", scopes=SCOPES)
    async def changing(run: Any, _input: Any) -> None:
        await run.tool("bank.balance" if version["n"] == 1 else "bank.notify", {})
        await run.sleep(60)

    record = app.runtime.submit("changing")
    app.runtime.worker().drain()
    version["n"] = 2
    clock.advance(seconds=61)
    assert app.runtime.worker().drain() == {"parked": 1}
    parked = app.runtime.get(record.run_id)
    assert parked.error is not None and parked.error["error"] == "nondeterminism"
    assert tools["notify"].calls == 0


def test_kill_switch_reaches_a_waiting_run(app: App, clock: FrozenClock) -> None:
    tools = bank_tools(app)

    @app.workflow("killable", agent="bot", scopes=SCOPES)
    async def killable(run: Any, _input: Any) -> None:
        await run.tool("bank.balance", {})
        await run.sleep(60)
        await run.tool("bank.transfer", {"to": "x", "amount": 5})

    record = app.runtime.submit("killable")
    app.runtime.worker().drain()
    app.kill_switches.engage("workflow", "killable", reason="incident", actor="sre")
    clock.advance(seconds=61)
    assert app.runtime.worker().drain() == {"killed": 1}
    assert tools["transfer"].calls == 0
    assert app.runtime.get(record.run_id).status == "killed"


def test_a_failed_run_is_dead_lettered_and_can_be_re_driven(app: App) -> None:
    tools = bank_tools(app)
    flaky = RecordingTool("bank.flaky", scope="bank:read", fail_times=1, retryable=False)
    app.register(flaky)

    @app.workflow("fragile", agent="bot", scopes=SCOPES)
    async def fragile(run: Any, _input: Any) -> str:
        await run.tool("bank.transfer", {"to": "y", "amount": 3})
        await run.tool("bank.flaky", {})
        return "ok"

    record = app.runtime.submit("fragile")
    assert app.runtime.worker().drain() == {"failed": 1}
    failed = app.runtime.get(record.run_id)
    assert failed.error is not None and failed.error["error"] == "tool_error"
    app.runtime.retry(record.run_id)
    assert app.runtime.worker().drain() == {"completed": 1}
    assert tools["transfer"].calls == 1  # the completed step replayed
    assert flaky.calls == 2


def test_retryable_failures_of_safe_steps_are_retried(app: App) -> None:
    flaky = RecordingTool("bank.flaky", scope="bank:read", fail_times=2, retryable=True, result=7)
    app.register(flaky)

    @app.workflow("retrying", agent="bot", scopes=SCOPES)
    async def retrying(run: Any, _input: Any) -> Any:
        return await run.tool("bank.flaky", {})

    record = app.runtime.submit("retrying")
    assert app.runtime.worker().drain() == {"completed": 1}
    assert app.runtime.get(record.run_id).result == 7
    assert flaky.calls == 3


def test_escalation_ends_the_run_with_the_reason(app: App) -> None:
    @app.workflow("unsure", agent="bot", scopes=SCOPES)
    async def unsure(run: Any, _input: Any) -> None:
        run.escalate("confidence 0.4 is below the 0.85 gate")

    record = app.runtime.submit("unsure")
    assert app.runtime.worker().drain() == {"escalated": 1}
    assert "0.85" in str(app.runtime.get(record.run_id).error)


def test_a_dead_workers_run_is_picked_up_after_its_lease(app: App, clock: FrozenClock) -> None:
    tools = bank_tools(app)

    @app.workflow("leased", agent="bot", scopes=SCOPES)
    async def leased(run: Any, _input: Any) -> str:
        await run.tool("bank.balance", {})
        return "ok"

    record = app.runtime.submit("leased")
    claimed = app.runtime.runs.claim("worker-that-dies", app.runtime.worker().lease)
    assert claimed is not None and claimed.run_id == record.run_id
    assert app.runtime.worker().drain() == {}  # still leased
    clock.advance(minutes=5)
    assert app.runtime.worker().drain() == {"completed": 1}
    assert tools["balance"].calls == 1
    rules = [r.entry.rule_id for r in query(app.store, run_id=record.run_id, kind="control")]
    assert "run.recovered" in rules


def test_model_steps_are_governed_and_replayed(app: App, clock: FrozenClock) -> None:
    model = ScriptedModel(default="category: refund")
    app.add_model("triage", model)

    @app.workflow("triage-flow", agent="bot", scopes=SCOPES)
    async def triage(run: Any, text: str) -> str:
        answer = await run.model(
            {"model": "triage", "messages": [{"role": "user", "content": text}], "max_tokens": 10}
        )
        await run.sleep(5)
        return str(answer["choices"][0]["text"])

    record = app.runtime.submit("triage-flow", "I want my money back")
    app.runtime.worker().drain()
    clock.advance(seconds=6)
    app.runtime.worker().drain()
    assert app.runtime.get(record.run_id).result == "category: refund"
    assert model.calls == 1


def test_unknown_workflow_and_bad_input_are_refused(app: App) -> None:
    from keel.errors import InvalidRequestError, PayloadTooLargeError

    with pytest.raises(InvalidRequestError):
        app.runtime.submit("nope")

    @app.workflow("small", agent="bot", scopes=SCOPES)
    async def small(run: Any, _input: Any) -> None:
        return None

    with pytest.raises(PayloadTooLargeError):
        app.runtime.submit("small", {"blob": "x" * (2 * 1024 * 1024)})


def test_a_run_waits_for_approval_then_executes_exactly_once(app: App, clock: FrozenClock) -> None:
    from keel.approvals import Operator

    tools = bank_tools(app)

    @app.workflow("big-payout", agent="payout-bot", scopes=SCOPES)
    async def big(run: Any, amount: int) -> Any:
        await run.tool("bank.balance", {})
        return await run.tool("bank.transfer", {"to": "acct-9", "amount": amount})

    record = app.runtime.submit("big-payout", 5000, on_behalf_of="finance@example.com")
    worker = app.runtime.worker()
    assert worker.drain() == {"waiting": 1}
    step = app.runtime.steps(record.run_id)[1]
    assert step.status == "waiting_approval" and step.approval_id
    clock.advance(days=2)  # a person takes two days; the wait costs nothing
    assert worker.drain() == {}
    with pytest.raises(Exception, match="requester"):  # the requester cannot approve itself
        app.approvals.approve(
            step.approval_id, Operator("finance@example.com", frozenset({"approver"}))
        )
    # Past its 24 h deadline the request escalated: the approver role no longer suffices.
    with pytest.raises(Exception, match="escalated"):
        app.approvals.approve(step.approval_id, Operator("ana", frozenset({"approver"})))
    assert worker.drain() == {}  # still waiting, for the escalation target
    app.approvals.approve(step.approval_id, Operator("olu", frozenset({"admin"})), note="ok")
    assert worker.drain() == {"completed": 1}
    assert tools["transfer"].calls == 1
    assert tools["balance"].calls == 1  # replayed on resume, not executed again
    assert app.runtime.get(record.run_id).result["ok"] is True
    assert app.verify_audit().ok


def test_a_denied_approval_fails_the_step_with_the_reason(app: App) -> None:
    from keel.approvals import Operator

    tools = bank_tools(app)

    @app.workflow("denied-payout", agent="payout-bot", scopes=SCOPES)
    async def denied(run: Any, amount: int) -> Any:
        return await run.tool("bank.transfer", {"to": "acct-9", "amount": amount})

    record = app.runtime.submit("denied-payout", 9000)
    worker = app.runtime.worker()
    worker.drain()
    step = app.runtime.steps(record.run_id)[0]
    assert step.approval_id is not None
    app.approvals.deny(
        step.approval_id, Operator("ana", frozenset({"approver"})), reason="vendor unknown"
    )
    assert worker.drain() == {"failed": 1}
    failed = app.runtime.get(record.run_id)
    assert "vendor unknown" in str(failed.error)
    assert tools["transfer"].calls == 0
