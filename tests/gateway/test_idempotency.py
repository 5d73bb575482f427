from __future__ import annotations

import threading

import pytest

from keel import App
from keel.errors import IdempotencyInFlight, IdempotencyMismatch, ToolError
from keel.testing import FrozenClock, RecordingTool

from .conftest import SCOPES, Tools

REFUND = {"order_id": "A-1", "amount": 40, "destination": "original_payment_method"}


def test_same_key_same_arguments_runs_once_and_replays(app: App, tools: Tools) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    first = agent.call("billing.refund", REFUND, idempotency_key="k1")
    second = agent.call("billing.refund", dict(REFUND), idempotency_key="k1")
    assert tools.refund.calls == 1
    assert not first.replayed
    assert second.replayed
    assert second.value == first.value
    assert first.value["key"] == "k1"  # the key reaches the tool, to pass to the system of record


def test_same_key_different_arguments_is_an_error(app: App, tools: Tools) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    agent.call("billing.refund", REFUND, idempotency_key="k1")
    with pytest.raises(IdempotencyMismatch):
        agent.call("billing.refund", {**REFUND, "amount": 41}, idempotency_key="k1")
    assert tools.refund.calls == 1


def test_key_in_flight_is_a_conflict(app: App, tools: Tools, clock: FrozenClock) -> None:
    entered = threading.Event()
    release = threading.Event()

    def slow(args: dict[str, object], ctx: object) -> str:
        entered.set()
        release.wait(10)
        return "done"

    blocking = RecordingTool("slow.thing", scope="orders:read", result=slow)
    app.register(blocking)
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(agent.call("slow.thing", {}, idempotency_key="k2").value)
    )
    worker.start()
    assert entered.wait(10)
    with pytest.raises(IdempotencyInFlight) as info:
        agent.call("slow.thing", {}, idempotency_key="k2")
    assert info.value.retryable
    release.set()
    worker.join(10)
    assert outcome == ["done"]
    assert blocking.calls == 1
    assert agent.call("slow.thing", {}, idempotency_key="k2").replayed


def test_keys_are_tenant_scoped(app: App, tools: Tools) -> None:
    app.add_policy("policy: globex\nscope: {tenant: globex}\ntools: {allow: [billing.refund]}\n")
    app.agent("bot", tenant="acme", scopes=SCOPES).call(
        "billing.refund", REFUND, idempotency_key="k"
    )
    app.agent("bot", tenant="globex", scopes=SCOPES).call(
        "billing.refund", REFUND, idempotency_key="k"
    )
    assert tools.refund.calls == 2


def test_key_derived_from_run_and_step(app: App, tools: Tools) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    agent.call("billing.refund", REFUND, run_id="run-1", step_id="3")
    again = agent.call("billing.refund", REFUND, run_id="run-1", step_id="3")
    agent.call("billing.refund", REFUND, run_id="run-1", step_id="4")
    assert again.replayed
    assert tools.refund.calls == 2


def test_retention_expires_keys(app: App, tools: Tools, clock: FrozenClock) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    agent.call("billing.refund", REFUND, idempotency_key="k")
    clock.advance(hours=25)
    assert not agent.call("billing.refund", REFUND, idempotency_key="k").replayed
    assert tools.refund.calls == 2


def test_denied_call_does_not_consume_its_key(app: App, tools: Tools) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    app.kill_switches.engage("tool", "billing.refund", reason="test", actor="t")
    with pytest.raises(Exception, match="kill switch"):
        agent.call("billing.refund", REFUND, idempotency_key="k")
    app.kill_switches.release("tool", "billing.refund", reason="test", actor="t")
    assert not agent.call("billing.refund", REFUND, idempotency_key="k").replayed


def test_retryable_failure_may_run_again_non_retryable_replays(app: App, tools: Tools) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    flaky = RecordingTool("slow.thing", scope="orders:read", fail_times=1, retryable=True, result=1)
    app.register(flaky)
    with pytest.raises(ToolError):
        agent.call("slow.thing", {}, idempotency_key="f")
    assert agent.call("slow.thing", {}, idempotency_key="f").value == 1
    assert flaky.calls == 2

    broken = RecordingTool(
        "orders.cancel", scope="orders:read", effect="reversible", fail_times=5, retryable=False
    )
    app.register(broken)
    app.add_policy("policy: x\nscope: {tenant: acme}\ntools: {allow: [orders.cancel]}\n")
    for _ in range(2):
        with pytest.raises(ToolError):
            agent.call("orders.cancel", {}, idempotency_key="g")
    assert broken.calls == 1  # an effectful call's recorded failure is replayed, not re-run

    read = RecordingTool("slow.read", scope="orders:read", fail_times=1, retryable=False, result=2)
    app.register(read)
    app.add_policy("policy: y\nscope: {tenant: acme}\ntools: {allow: [slow.read]}\n")
    with pytest.raises(ToolError):
        agent.call("slow.read", {}, idempotency_key="h")
    assert agent.call("slow.read", {}, idempotency_key="h").value == 2  # a read may run again
    assert read.calls == 2


def test_concurrent_duplicates_cause_one_effect(app: App, tools: Tools) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def attempt() -> None:
        barrier.wait()
        try:
            r = agent.call("billing.refund", REFUND, idempotency_key="same")
            results.append("replayed" if r.replayed else "executed")
        except IdempotencyInFlight:
            results.append("in_flight")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tools.refund.calls == 1
    assert results.count("executed") == 1
    assert app.verify_audit().ok
