"""The circuit breaker through a real App: trips on failures, refuses fast, probes, closes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel import App, KeelConfig
from keel.audit import query
from keel.errors import (
    ApprovalRequired,
    InvalidRequestError,
    ModelError,
    PolicyDenied,
    ToolError,
)
from keel.gateway.breaker import CircuitBreakerGuard, CircuitOpen
from keel.testing import FrozenClock, RecordingTool, Rule, ScriptedModel
from keel.tools import ToolContext

POLICY = """
policy: breaker
scope: {tenant: acme}
tools:
  allow: [flaky.api, other.api, pay.send, slow.api]
  deny: [admin.wipe]
models: {allow: ["triage-*"]}
require_approval_if_over: {pay.send: 100}
"""

MODELS = {"prices": {"scripted:*": {"input": "1", "output": "1"}}}
SCOPES = ("test:use", "models:invoke")


class Harness:
    def __init__(self, app: App, clock: FrozenClock, breaker: CircuitBreakerGuard) -> None:
        self.app = app
        self.clock = clock
        self.breaker = breaker
        self.agent = app.agent("bot", tenant="acme", scopes=SCOPES)

    def tool(self, name: str = "flaky.api", **kwargs: Any) -> RecordingTool:
        tool = RecordingTool(name, result={"ok": True}, **kwargs)
        self.app.register(tool)
        return tool

    def call(self, name: str = "flaky.api", args: dict[str, Any] | None = None) -> str:
        """'ok', or the code of the error that stopped the call."""
        try:
            self.agent.call(name, args or {})
        except (ToolError, ModelError, PolicyDenied, ApprovalRequired, InvalidRequestError) as e:
            return e.code
        return "ok"


def build(tmp_path: Path, store_url: str, **settings: Any) -> Iterator[Harness]:
    clock = FrozenClock()
    breaker = CircuitBreakerGuard(clock, **settings)
    config = KeelConfig(store_url=store_url, home=tmp_path / "home", models=MODELS)
    with App(config, clock=clock, breaker=breaker) as app:
        app.add_policy(POLICY)
        yield Harness(app, clock, breaker)


@pytest.fixture
def h(tmp_path: Path, store_url: str) -> Iterator[Harness]:
    yield from build(tmp_path, store_url)


def test_opens_after_threshold_failures_and_refuses_without_calling(h: Harness) -> None:
    tool = h.tool(fail_times=100)
    assert [h.call() for _ in range(5)] == ["tool_error"] * 5
    assert h.breaker.state("flaky.api").status == "open"
    with pytest.raises(CircuitOpen) as info:
        h.agent.call("flaky.api", {})
    error = info.value
    assert error.code == "circuit_open"
    assert error.retryable
    assert error.retry_after == pytest.approx(30.0)
    assert error.context["retry_after_seconds"] == 30.0
    assert error.context["rule_id"] == "breaker:flaky.api"
    assert tool.calls == 5  # the refused call never reached the tool
    record = query(h.app.store, limit=1)[0]
    assert record.entry.decision == "deny"
    assert record.entry.rule_id == "breaker:flaky.api"
    assert record.entry.body["stage"] == "circuit_breaker"
    h.clock.advance(10)
    with pytest.raises(CircuitOpen) as later:
        h.agent.call("flaky.api", {})
    assert later.value.retry_after == pytest.approx(20.0)
    assert tool.calls == 5
    assert h.app.verify_audit().ok


def test_probe_after_open_for_and_success_closes(h: Harness) -> None:
    tool = h.tool(fail_times=5)
    for _ in range(5):
        h.call()
    assert h.call() == "circuit_open"
    h.clock.advance(30)
    assert h.breaker.state("flaky.api").status == "half_open"
    assert h.call() == "ok"  # the probe
    assert tool.calls == 6
    state = h.breaker.state("flaky.api")
    assert state.status == "closed"
    assert state.trips == 1
    assert [h.call() for _ in range(3)] == ["ok"] * 3
    assert tool.calls == 9


def test_failed_probe_reopens(h: Harness) -> None:
    tool = h.tool(fail_times=6)
    for _ in range(5):
        h.call()
    h.clock.advance(30)
    assert h.call() == "tool_error"  # the probe fails
    assert tool.calls == 6
    state = h.breaker.state("flaky.api")
    assert state.status == "open"
    assert state.trips == 2
    assert state.retry_after_seconds == pytest.approx(30.0)
    assert h.call() == "circuit_open"
    h.clock.advance(29.9)
    assert h.call() == "circuit_open"
    h.clock.advance(0.1)
    assert h.call() == "ok"
    assert h.breaker.state("flaky.api").status == "closed"
    assert tool.calls == 7


def test_one_probe_at_a_time(h: Harness) -> None:
    entered = threading.Event()
    release = threading.Event()
    failures = {"left": 5}

    def behave(args: dict[str, Any], ctx: ToolContext) -> dict[str, bool]:
        if failures["left"]:
            failures["left"] -= 1
            raise ToolError("upstream 503", retryable=True)
        entered.set()
        assert release.wait(timeout=30)
        return {"ok": True}

    tool = RecordingTool("slow.api", result=behave)
    h.app.register(tool)
    for _ in range(5):
        assert h.call("slow.api") == "tool_error"
    h.clock.advance(30)
    outcome: list[str] = []
    probe = threading.Thread(target=lambda: outcome.append(h.call("slow.api")))
    probe.start()
    assert entered.wait(timeout=30)
    assert h.breaker.state("slow.api").probes_in_flight == 1
    with pytest.raises(CircuitOpen) as info:
        h.agent.call("slow.api", {})
    assert "probe" in info.value.message
    assert info.value.retry_after == pytest.approx(1.0)
    release.set()
    probe.join(timeout=30)
    assert outcome == ["ok"]
    assert h.breaker.state("slow.api").status == "closed"
    assert h.call("slow.api") == "ok"
    assert tool.calls == 7


def test_concurrent_callers_after_open_for_send_exactly_one_probe(h: Harness) -> None:
    release = threading.Event()
    failures = {"left": 5}

    def behave(args: dict[str, Any], ctx: ToolContext) -> dict[str, bool]:
        if failures["left"]:
            failures["left"] -= 1
            raise ToolError("upstream 503", retryable=True)
        assert release.wait(timeout=30)
        return {"ok": True}

    tool = RecordingTool("slow.api", result=behave)
    h.app.register(tool)
    for _ in range(5):
        h.call("slow.api")
    h.clock.advance(30)
    barrier = threading.Barrier(8)
    finished = threading.Condition()
    outcomes: list[str] = []

    def contend() -> None:
        barrier.wait()
        outcome = h.call("slow.api")
        with finished:
            outcomes.append(outcome)
            finished.notify_all()

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    with finished:
        assert finished.wait_for(lambda: len(outcomes) == 7, timeout=30)
    assert outcomes == ["circuit_open"] * 7  # refused while the one probe is in flight
    release.set()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["circuit_open"] * 7 + ["ok"]
    assert tool.calls == 6
    assert h.breaker.state("slow.api").status == "closed"


def test_probe_stopped_by_a_later_guard_frees_its_slot(h: Harness) -> None:
    pay = h.tool("pay.send", fail_times=5)
    for _ in range(5):
        assert h.call("pay.send", {"amount": 5}) == "tool_error"
    h.clock.advance(30)
    # Admitted as the probe, then stopped by the approval gate: it never ran.
    assert h.call("pay.send", {"amount": 500}) == "approval_required"
    assert pay.calls == 5
    state = h.breaker.state("pay.send")
    assert state.status == "half_open"
    assert state.probes_in_flight == 0
    assert h.call("pay.send", {"amount": 5}) == "ok"  # the next call may probe
    assert h.breaker.state("pay.send").status == "closed"


def test_probe_answered_from_an_idempotency_record_decides_nothing(h: Harness) -> None:
    upstream = {"down": False}

    def behave(args: dict[str, Any], ctx: ToolContext) -> dict[str, bool]:
        if upstream["down"]:
            raise ToolError("upstream 503", retryable=True)
        return {"ok": True}

    tool = RecordingTool("flaky.api", result=behave)
    h.app.register(tool)
    h.agent.call("flaky.api", {"n": 0}, idempotency_key="k-1")
    upstream["down"] = True
    for _ in range(5):
        h.call()
    upstream["down"] = False
    h.clock.advance(30)
    replayed = h.agent.call("flaky.api", {"n": 0}, idempotency_key="k-1")
    assert replayed.replayed
    assert tool.calls == 6
    state = h.breaker.state("flaky.api")
    assert (state.status, state.probes_in_flight) == ("half_open", 0)
    assert h.call() == "ok"
    assert h.breaker.state("flaky.api").status == "closed"


def test_policy_denials_and_neutral_errors_do_not_count(h: Harness) -> None:
    h.tool("admin.wipe")
    for _ in range(20):
        assert h.call("admin.wipe") == "policy_denied"

    def bad_request(args: dict[str, Any], ctx: ToolContext) -> None:
        raise InvalidRequestError("upstream says: field 'x' is required")

    h.app.register(RecordingTool("other.api", result=bad_request))
    for _ in range(20):
        assert h.call("other.api") == "invalid_request"
    assert h.breaker.state("admin.wipe").status == "closed"
    other = h.breaker.state("other.api")
    assert (other.status, other.calls, other.failures) == ("closed", 0, 0)


def test_failures_leave_the_window(h: Harness) -> None:
    tool = h.tool(fail_times=8)
    for _ in range(4):
        h.call()
    h.clock.advance(61)
    for _ in range(4):
        h.call()
    state = h.breaker.state("flaky.api")
    assert (state.status, state.failures) == ("closed", 4)
    assert h.call() == "ok"
    assert tool.calls == 9


def test_error_rate_trips_only_over_min_calls(tmp_path: Path, store_url: str) -> None:
    flips = {"n": 0}

    def alternate(args: dict[str, Any], ctx: ToolContext) -> dict[str, bool]:
        flips["n"] += 1
        if flips["n"] % 2 == 0:
            raise ToolError("upstream 502", retryable=True)
        return {"ok": True}

    for h in build(tmp_path, store_url, failure_threshold=100, min_calls=10, error_rate=0.5):
        h.app.register(RecordingTool("flaky.api", result=alternate))
        outcomes = [h.call() for _ in range(9)]
        assert outcomes.count("tool_error") == 4
        assert h.breaker.state("flaky.api").status == "closed"
        assert h.call() == "tool_error"  # 10 calls, 5 failures: a rate of 0.5
        assert h.breaker.state("flaky.api").status == "open"
        assert h.call() == "circuit_open"


def test_breakers_are_per_target(h: Harness) -> None:
    h.tool(fail_times=100)
    other = h.tool("other.api")
    for _ in range(5):
        h.call()
    assert h.call() == "circuit_open"
    assert h.call("other.api") == "ok"
    assert other.calls == 1
    states = {s.target: s for s in h.breaker.states()}
    assert states["flaky.api"].status == "open"
    assert states["other.api"].status == "closed"
    snapshot = states["flaky.api"].to_dict()
    assert snapshot["status"] == "open"
    assert snapshot["trips"] == 1
    assert snapshot["last_error"] == "tool_error"
    assert snapshot["opened_at"] == h.clock.now().isoformat()


def test_targets_limits_the_breaker_and_reset_closes(tmp_path: Path, store_url: str) -> None:
    for h in build(tmp_path, store_url, targets=["flaky.api"]):
        h.tool(fail_times=100)
        other = h.tool("other.api", fail_times=100)
        for _ in range(6):
            h.call("other.api")
        assert other.calls == 6  # unguarded target: never refused
        for _ in range(5):
            h.call()
        assert h.call() == "circuit_open"
        h.breaker.reset("flaky.api")
        assert h.breaker.state("flaky.api").status == "closed"
        assert h.call() == "tool_error"


def test_model_targets_have_breakers(h: Harness) -> None:
    def broken(request: object, match: object) -> str:
        raise ModelError("provider answered 503", retryable=True)

    model = ScriptedModel([Rule(r".", broken)], name="scripted")
    h.app.add_model("triage-small", model)
    request = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    request["model"] = "triage-small"
    for _ in range(5):
        with pytest.raises(ModelError):
            h.agent.model(request)
    with pytest.raises(CircuitOpen) as info:
        h.agent.model(request)
    assert info.value.context["rule_id"] == "breaker:triage-small"
    assert model.calls == 5


def test_settings_are_validated(tmp_path: Path) -> None:
    clock = FrozenClock()
    for bad in (
        {"failure_threshold": 0},
        {"error_rate": 0},
        {"error_rate": 1.5},
        {"min_calls": 0},
        {"window": 0},
        {"open_for": -1},
        {"half_open_max_calls": 0},
    ):
        with pytest.raises(Exception, match="breaker"):
            CircuitBreakerGuard(clock, **bad)
