"""Budgets and rate limits through the gateway: reserve before, settle after, never overspend."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from keel import App, KeelConfig
from keel.audit import query
from keel.errors import ApprovalRequired, BudgetExceeded, RateLimited
from keel.testing import FrozenClock, RecordingTool, ScriptedModel

POLICY = """
policy: budgets
scope: {tenant: acme}
tools: {allow: [pay.send, loop.step, ping.once, billing.refund]}
models: {allow: ["*"]}
max_tool_calls_per_task: 5
spending_limit_usd: 20
caps:
  - {id: tenant-money, tools: [pay.send], per: [tenant], window: none, max_usd: 100}
  - id: refunds-per-customer-day
    tools: [billing.refund]
    per: [arguments.customer_id]
    window: day
    max_calls: 2
    max_usd: 300
    sum_argument: amount
rate_limits:
  - {id: per-agent, scope: agent, tools: [ping.once], requests: 3, per: 1m}
"""


@pytest.fixture
def app(tmp_path: Path, store_url: str) -> Iterator[App]:
    config = KeelConfig(
        store_url=store_url,
        home=tmp_path / "home",
        models={"prices": {"scripted:*": {"input": "1000", "output": "1000"}}},
    )
    with App(config, clock=FrozenClock()) as keel_app:
        keel_app.add_policy(POLICY)
        yield keel_app


def test_fifty_concurrent_ten_dollar_calls_on_a_hundred_dollar_cap(app: App) -> None:
    """ATTACKS.md #35: at most 10 succeed, the balance never goes negative."""
    pay = RecordingTool("pay.send", scope="pay:write", effect="irreversible", cost_usd="10")
    app.register(pay)
    agents = [app.agent(f"bot-{i}", tenant="acme", scopes=["pay:write"]) for i in range(50)]
    barrier = threading.Barrier(50)
    outcomes: list[str] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            agents[i].call("pay.send", {"n": i})
            outcomes.append("ok")
        except BudgetExceeded:
            outcomes.append("budget")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 10
    assert pay.calls == 10
    line = next(line for line in app.ledger.report(tenant="acme") if "tenant-money" in line.cap_id)
    assert line.spent_usd == Decimal("100")
    assert line.reserved_usd == 0
    denials = query(app.store, decision="deny", limit=100)
    assert len(denials) == 40
    assert all(r.entry.rule_id == "budget:budgets#tenant-money" for r in denials)
    assert app.verify_audit().ok


def test_a_runaway_loop_is_stopped_by_the_task_cap(app: App) -> None:
    step = RecordingTool("loop.step", scope="loop:run")
    app.register(step)
    agent = app.agent("looper", tenant="acme", scopes=["loop:run"])
    stopped = None
    alerts = 0
    for i in range(50):
        try:
            agent.call("loop.step", {"i": i}, run_id="run-1", step_id=str(i))
        except ApprovalRequired as exc:  # the burn alert at 80% of the cap: a person is asked
            alerts += exc.context["rule_id"] == "burn:task-tool-calls"
        except BudgetExceeded as exc:  # a naive agent that keeps going hits the hard cap
            stopped = exc
            break
    assert alerts == 1
    assert stopped is not None
    assert step.calls == 5  # max_tool_calls_per_task
    record = query(app.store, run_id="run-1", limit=1)[0]
    assert record.entry.decision == "deny"
    assert record.entry.rule_id == "budget:task-tool-calls"


def test_rate_limit_names_retry_after_and_is_keyed_on_identity(app: App) -> None:
    ping = RecordingTool("ping.once", scope="ping:run")
    app.register(ping)
    agent = app.agent("bursty", tenant="acme", scopes=["ping:run"])
    for i in range(3):
        agent.call("ping.once", {"i": i}, run_id=f"r{i}")
    with pytest.raises(RateLimited) as info:
        # A fresh token (new jti) and a new run do not evade a limit keyed on the agent.
        app.agent("bursty", tenant="acme", scopes=["ping:run"]).call("ping.once", {}, run_id="x")
    assert info.value.retry_after > 0
    context = info.value.context
    (record,) = query(
        app.store, chain=context["record_chain"], before_seq=context["record_seq"] + 1, limit=1
    )
    assert record.seq == context["record_seq"]
    assert record.entry.rule_id == "rate:budgets#per-agent"
    assert query(app.store, run_id="x")[0].entry.rule_id == "rate:budgets#per-agent"
    app.agent("other", tenant="acme", scopes=["ping:run"]).call("ping.once", {}, run_id="y")
    assert ping.calls == 4


def test_worst_case_model_reservation_refuses_huge_requests(app: App) -> None:
    """ATTACKS.md #40: n and max_tokens are paid for up front at worst case, not after."""
    model = ScriptedModel(default="ok")
    app.add_model("expensive", model)
    agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
    request = {"model": "expensive", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BudgetExceeded) as info:
        agent.model({**request, "max_tokens": 4000, "n": 16}, run_id="r1")
    assert info.value.context["cap"] == "task"
    assert model.calls == 0
    outcome = agent.model({**request, "max_tokens": 5}, run_id="r1")
    assert outcome.result.cost.usd > 0
    line = next(line for line in app.ledger.report(run_id="r1") if line.cap_id == "task")
    assert line.spent_usd == outcome.result.cost.usd  # settled to the actual, not the reservation
    assert line.reserved_usd == 0


def test_argument_keyed_cap_refunds_per_customer_per_day(app: App) -> None:
    refund = RecordingTool("billing.refund", scope="billing:write", effect="irreversible")
    app.register(refund)
    agent = app.agent("bot", tenant="acme", scopes=["billing:write"])
    agent.call("billing.refund", {"customer_id": "c1", "amount": 100}, run_id="a")
    agent.call("billing.refund", {"customer_id": "c1", "amount": 150}, run_id="b")
    with pytest.raises(BudgetExceeded):
        agent.call("billing.refund", {"customer_id": "c1", "amount": 10}, run_id="c")
    agent.call("billing.refund", {"customer_id": "c2", "amount": 250}, run_id="d")
    with pytest.raises(BudgetExceeded):  # c2 would exceed $300 of refunds
        agent.call("billing.refund", {"customer_id": "c2", "amount": 60}, run_id="e")
    assert refund.calls == 3


def test_burn_alert_requires_approval_once(app: App) -> None:
    pay = RecordingTool("pay.send", scope="pay:write", effect="irreversible", cost_usd="4")
    app.register(pay)
    agent = app.agent("bot", tenant="acme", scopes=["pay:write"])
    # spending_limit_usd 20 per run: the call that reaches 80% ($16) needs a person.
    agent.call("pay.send", {}, run_id="r")
    agent.call("pay.send", {}, run_id="r")
    agent.call("pay.send", {}, run_id="r")
    with pytest.raises(ApprovalRequired) as info:
        agent.call("pay.send", {}, run_id="r")
    assert info.value.context["rule_id"].startswith("burn:")
    assert pay.calls == 3
    line = next(line for line in app.ledger.report(run_id="r") if line.cap_id == "task")
    assert line.reserved_usd == 0  # the stopped call released its hold


def test_a_failed_model_call_spends_nothing(app: App) -> None:
    """A malformed provider answer is recorded; its hold is released, nothing is settled."""
    from keel.errors import ModelResponseInvalid
    from keel.testing import FaultPlan, Reply, Rule

    broken = ScriptedModel(
        [Rule(r".", Reply(tool_calls=[("orders.lookup", {"order_id": "A"})]))],
        faults=FaultPlan(seed=1, malformed_json=1.0),
    )
    app.add_model("flaky", broken)
    agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
    request = {"model": "flaky", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20}
    with pytest.raises(ModelResponseInvalid):
        agent.model(request, run_id="r")
    line = next(line for line in app.ledger.report(run_id="r") if line.cap_id == "task")
    assert line.spent_usd == 0
    assert line.reserved_usd == 0
    record = query(app.store, limit=1)[0]
    assert record.entry.body["error"]["code"] == "model_response_invalid"
