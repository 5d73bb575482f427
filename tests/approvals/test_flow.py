"""Approvals through a real App: ask, decide, re-send with the approval id, execute once."""

from __future__ import annotations

from typing import Any

import pytest

from keel import App
from keel.approvals import Operator
from keel.audit import query
from keel.errors import ApprovalRequired, AuthorizationError, ToolError
from keel.testing import FrozenClock, RecordingTool

from .conftest import ANA, BOB, SCOPES, Tools

REFUND = {"order_id": "A-1", "amount": 450}


def ask(agent: Any, tool: str, args: dict[str, Any], **kw: Any) -> ApprovalRequired:
    with pytest.raises(ApprovalRequired) as info:
        agent.call(tool, args, **kw)
    return info.value


def test_full_flow_executes_once_and_refuses_a_second_use(app: App, tools: Tools) -> None:
    agent = app.agent("refund-bot", tenant="acme", scopes=SCOPES, on_behalf_of="carol@example.com")
    stop = ask(agent, "billing.refund", REFUND)
    assert stop.code == "approval_required"
    approval_id = stop.context["approval_id"]
    assert approval_id.startswith("apr_")
    assert stop.context["rule_id"].startswith("require_approval_if_over")
    assert stop.context["escalate_to"] == "human_review"
    assert tools.refund.calls == 0
    # Asking again without the id finds the same request.
    assert ask(agent, "billing.refund", REFUND).context["approval_id"] == approval_id
    # Presenting the id before anyone decided is refused.
    with pytest.raises(AuthorizationError) as early:
        agent.call("billing.refund", REFUND, approval_id=approval_id)
    assert early.value.code == "approval_not_approved"

    app.approvals.approve(approval_id, ANA, note="order checked")
    # Without the id the caller learns the call is approved and how to present it.
    hint = ask(agent, "billing.refund", REFUND)
    assert hint.context["status"] == "approved"
    assert approval_id in hint.message

    result = agent.call("billing.refund", REFUND, approval_id=approval_id)
    assert result.value == {"refunded": 450}
    assert tools.refund.calls == 1
    record = query(app.store, limit=1)[0]
    assert record.seq == result.record_seq
    assert record.entry.kind == "call"
    assert record.entry.body["notes"]["approval"]["approval_id"] == approval_id
    assert record.entry.body["notes"]["approval"]["approved_by"] == ["ana"]
    assert app.approvals.get(approval_id).status == "used"

    with pytest.raises(AuthorizationError) as again:
        agent.call("billing.refund", REFUND, approval_id=approval_id)
    assert again.value.code == "approval_used"
    assert tools.refund.calls == 1
    denied = query(app.store, limit=1)[0]
    assert denied.entry.kind == "decision"
    assert denied.entry.decision == "deny"
    assert denied.entry.body["error"]["code"] == "approval_used"

    decisions = [r.entry.decision for r in reversed(query(app.store, kind="control", limit=50))]
    assert decisions == ["approval.request", "approval.approve", "approval.claim", "approval.use"]
    assert app.verify_audit().ok


def test_approve_small_then_send_large_is_refused_before_the_tool(app: App, tools: Tools) -> None:
    agent = app.agent("refund-bot", tenant="acme", scopes=SCOPES)
    approval_id = ask(agent, "billing.refund", {"order_id": "A-1", "amount": 300}).context[
        "approval_id"
    ]
    app.approvals.approve(approval_id, ANA)
    with pytest.raises(AuthorizationError) as info:
        agent.call("billing.refund", {"order_id": "A-1", "amount": 30_000}, approval_id=approval_id)
    assert info.value.code == "approval_binding_mismatch"
    assert tools.refund.calls == 0
    assert app.approvals.get(approval_id).status == "approved"
    # Another agent of the tenant cannot use it either.
    other = app.agent("other-bot", tenant="acme", scopes=SCOPES)
    with pytest.raises(AuthorizationError) as stolen:
        other.call("billing.refund", {"order_id": "A-1", "amount": 300}, approval_id=approval_id)
    assert stolen.value.code == "approval_binding_mismatch"
    assert tools.refund.calls == 0
    assert app.verify_audit().ok


def test_cross_tenant_agent_cannot_probe_an_approval_id(app: App, tools: Tools) -> None:
    app.add_policy(
        "policy: globex\nscope: {tenant: globex}\ntools: {allow: [billing.refund]}\n"
        "require_approval_if_over: {billing.refund: 200}\n"
    )
    acme = app.agent("refund-bot", tenant="acme", scopes=SCOPES)
    approval_id = ask(acme, "billing.refund", REFUND).context["approval_id"]
    app.approvals.approve(approval_id, ANA)
    globex = app.agent("refund-bot", tenant="globex", scopes=SCOPES)
    with pytest.raises(AuthorizationError) as info:
        globex.call("billing.refund", REFUND, approval_id=approval_id)
    with pytest.raises(AuthorizationError) as unknown:
        globex.call("billing.refund", REFUND, approval_id="apr_" + "0" * 32)
    assert info.value.code == unknown.value.code == "approval_not_found"
    assert tools.refund.calls == 0


def test_denial_reaches_the_caller_with_its_reason(app: App, tools: Tools) -> None:
    agent = app.agent("refund-bot", tenant="acme", scopes=SCOPES)
    approval_id = ask(agent, "billing.refund", REFUND).context["approval_id"]
    app.approvals.deny(approval_id, BOB, reason="duplicate of ticket 17")
    with pytest.raises(AuthorizationError) as info:
        agent.call("billing.refund", REFUND, approval_id=approval_id)
    assert info.value.code == "approval_denied"
    assert "duplicate of ticket 17" in info.value.message
    assert tools.refund.calls == 0
    deny = next(
        r for r in query(app.store, kind="control", limit=20) if r.entry.decision == "approval.deny"
    )
    assert (deny.entry.body["actor"], deny.entry.body["note"]) == ("bob", "duplicate of ticket 17")
    assert app.verify_audit().ok


def test_inside_a_run_the_approval_is_bound_to_its_step(app: App, tools: Tools) -> None:
    agent = app.agent("refund-bot", tenant="acme", scopes=SCOPES, run_id="run_1")
    approval_id = ask(agent, "billing.refund", REFUND, step_id="3").context["approval_id"]
    request = app.approvals.get(approval_id)
    assert (request.run_id, request.step_id) == ("run_1", "3")
    app.approvals.approve(approval_id, ANA)
    with pytest.raises(AuthorizationError) as info:
        agent.call("billing.refund", REFUND, step_id="4", approval_id=approval_id)
    assert info.value.code == "approval_binding_mismatch"
    result = agent.call("billing.refund", REFUND, step_id="3", approval_id=approval_id)
    assert not result.replayed
    # The step's idempotency key replays the recorded outcome: nothing runs twice.
    replay = agent.call("billing.refund", REFUND, step_id="3", approval_id=approval_id)
    assert replay.replayed
    assert replay.value == result.value
    assert tools.refund.calls == 1
    assert app.approvals.get(approval_id).status == "used"


def test_two_person_rule_through_the_gateway(app: App, tools: Tools) -> None:
    agent = app.agent("ops-bot", tenant="acme", scopes=SCOPES)
    stop = ask(agent, "admin.rotate", {"key": "k1"})
    assert stop.context["approvals_required"] == 2
    approval_id = stop.context["approval_id"]
    app.approvals.approve(approval_id, ANA)
    with pytest.raises(AuthorizationError) as info:
        agent.call("admin.rotate", {"key": "k1"}, approval_id=approval_id)
    assert info.value.code == "approval_not_approved"
    with pytest.raises(AuthorizationError):
        app.approvals.approve(approval_id, ANA)
    app.approvals.approve(approval_id, BOB)
    agent.call("admin.rotate", {"key": "k1"}, approval_id=approval_id)
    assert tools.rotate.calls == 1


def test_escalated_call_can_be_approved_by_its_escalation_target(app: App, tools: Tools) -> None:
    agent = app.agent("refund-bot", tenant="acme", scopes=SCOPES)
    big = {"order_id": "A-1", "amount": 90_000}
    stop = ask(agent, "billing.refund", big)
    assert stop.code == "escalated"
    assert stop.context["status"] == "escalated"
    assert stop.context["escalate_to"] == "fraud_review"
    approval_id = stop.context["approval_id"]
    app.approvals.approve(approval_id, Operator("fiona", frozenset({"fraud_review"})))
    assert agent.call("billing.refund", big, approval_id=approval_id).value == {"refunded": 90_000}
    assert tools.refund.calls == 1


def test_expired_approval_is_refused_and_the_call_may_ask_again(
    app: App, tools: Tools, clock: FrozenClock
) -> None:
    agent = app.agent("refund-bot", tenant="acme", scopes=SCOPES)
    approval_id = ask(agent, "billing.refund", REFUND).context["approval_id"]
    app.approvals.approve(approval_id, ANA)
    clock.advance(hours=1, seconds=1)
    with pytest.raises(AuthorizationError) as info:
        agent.call("billing.refund", REFUND, approval_id=approval_id)
    assert info.value.code == "approval_expired"
    assert tools.refund.calls == 0
    fresh = ask(agent, "billing.refund", REFUND).context["approval_id"]
    assert fresh != approval_id


def test_a_retryable_failure_keeps_the_approval_for_the_retry(app: App) -> None:
    flaky = RecordingTool("files.read", scope="files:read", fail_times=1, retryable=True)
    app.register(flaky)
    app.add_policy(
        "policy: review-reads\nscope: {tenant: acme}\ntools: {allow: [files.read]}\n"
        "approval_required: [files.read]\n"
    )
    agent = app.agent("reader", tenant="acme", scopes=SCOPES)
    approval_id = ask(agent, "files.read", {"path": "x"}).context["approval_id"]
    app.approvals.approve(approval_id, ANA)
    with pytest.raises(ToolError):
        agent.call("files.read", {"path": "x"}, approval_id=approval_id)
    assert app.approvals.get(approval_id).status == "approved"
    agent.call("files.read", {"path": "x"}, approval_id=approval_id)
    assert app.approvals.get(approval_id).status == "used"
    assert flaky.calls == 2


def test_a_final_failure_uses_the_approval(app: App) -> None:
    broken = RecordingTool("files.read", scope="files:read", fail_times=5, retryable=False)
    app.register(broken)
    app.add_policy(
        "policy: review-reads\nscope: {tenant: acme}\ntools: {allow: [files.read]}\n"
        "approval_required: [files.read]\n"
    )
    agent = app.agent("reader", tenant="acme", scopes=SCOPES)
    approval_id = ask(agent, "files.read", {"path": "x"}).context["approval_id"]
    app.approvals.approve(approval_id, ANA)
    with pytest.raises(ToolError):
        agent.call("files.read", {"path": "x"}, approval_id=approval_id)
    with pytest.raises(AuthorizationError) as info:
        agent.call("files.read", {"path": "x"}, approval_id=approval_id)
    assert info.value.code == "approval_used"
    assert broken.calls == 1


def test_shadow_and_allowed_calls_need_no_approval(app: App, tools: Tools) -> None:
    agent = app.agent("refund-bot", tenant="acme", scopes=SCOPES)
    agent.call("billing.refund", {"order_id": "A-1", "amount": 50}, approval_id="apr_ignored")
    assert tools.refund.calls == 1
    app.add_policy(
        "policy: approvals-test\nscope: {tenant: acme}\nshadow: true\n"
        "tools: {allow: [billing.refund]}\nrequire_approval_if_over: {billing.refund: 200}\n"
    )
    result = agent.call("billing.refund", REFUND)
    assert result.shadow
    assert app.approvals.list() == []
    assert tools.refund.calls == 1
