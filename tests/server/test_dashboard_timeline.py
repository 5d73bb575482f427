"""The run timeline's assembly from journal steps and audit records (pure functions)."""

from __future__ import annotations

import datetime as _dt
from decimal import Decimal
from typing import Any

from keel.audit import AuditEntry, Record
from keel.runtime.journal import JournalEntry
from keel.server.dashboard.timeline import build

T0 = _dt.datetime(2026, 5, 1, 9, 0, tzinfo=_dt.UTC)


def _step(step_id: str, target: str, status: str = "succeeded") -> JournalEntry:
    return JournalEntry(
        run_id="r1",
        step_id=step_id,
        position=int(step_id),
        kind="tool",
        target=target,
        call_digest="d",
        status=status,  # type: ignore[arg-type]
        outcome_ref=None,
        error=None,
        approval_id=None,
        wake_at=None,
        started_at=T0,
        finished_at=T0,
    )


def _record(seq: int, kind: str, step: str | None, **fields: Any) -> Record:
    body = fields.pop("body", {})
    entry = AuditEntry(
        kind=kind,  # type: ignore[arg-type]
        run_id="r1",
        step_id=step,
        ts=T0 + _dt.timedelta(seconds=seq),
        body=body,
        **fields,
    )
    return Record(entry=entry, chain="main", seq=seq, prev_hash="0" * 64, hash=f"{seq:064x}")


def test_retries_costs_and_the_last_outcome_are_gathered_per_step() -> None:
    records = [
        _record(1, "control", None, decision="running", body={"action": "run.started"}),
        _record(
            2,
            "call",
            "0",
            tool="crm.update",
            decision="allow",
            rule_id="tools.allow",
            body={"error": {"code": "tool_error", "message": "timeout"}, "latency_ms": 30.0},
        ),
        _record(
            3,
            "call",
            "0",
            tool="crm.update",
            decision="allow",
            rule_id="tools.allow",
            body={
                "outcome": {"ok": True},
                "cost": {"usd": "0.25"},
                "latency_ms": 12.5,
                "trace_id": "ab" * 16,
            },
        ),
    ]
    steps, events, total = build([_step("0", "crm.update")], records)
    (view,) = steps
    assert (view.attempts, view.retries) == (2, 1)
    assert view.failures == ["tool_error: timeout"] and view.error is None
    assert view.latency_ms == 12.5 and view.trace_id == "ab" * 16
    assert '"ok": true' in (view.outcome or "")
    assert total == view.cost_usd == Decimal("0.25")
    assert [label for label, _ in view.records] == ["call allow", "call allow"]
    assert view.records[1][1] == "/audit/main/3"
    assert [e.action for e in events] == ["run.started"]


def test_approvals_show_who_decided_and_why() -> None:
    approval = {"approval_id": "apr_1", "note": "over 100"}
    records = [
        _record(1, "control", "0", decision="approval.request", rule_id="big", body=approval),
        _record(
            2,
            "decision",
            "0",
            decision="require_approval",
            rule_id="big",
            body={"error": {"code": "approval_required", "message": "needs approval"}},
        ),
        _record(
            3,
            "control",
            "0",
            decision="approval.deny",
            body={"approval_id": "apr_1", "actor": "ana", "note": "no", "status": "denied"},
        ),
        _record(
            4,
            "control",
            "0",
            decision="approval.approve",
            body={"approval_id": "apr_other", "actor": "bo"},
        ),
        _record(5, "control", "0", decision="approval.use", body={"actor": 7}),
    ]
    steps, _, total = build([_step("0", "billing.refund", "failed")], records)
    (view,) = steps
    assert view.decision == "require_approval" and view.attempts == 0 and total == 0
    assert view.error == "approval_required: needs approval"
    first, other = view.approvals
    assert (first.approval_id, first.rule_id, first.reason, first.status) == (
        "apr_1",
        "big",
        "over 100",
        "denied",
    )
    assert first.decisions[0]["actor"] == "ana" and first.decisions[0]["note"] == "no"
    assert other.decisions[0]["action"] == "approve"


def test_records_of_unknown_steps_and_bad_costs_do_not_break_the_page() -> None:
    records = [
        _record(1, "call", "9", tool="x", decision="allow", body={"cost": {"usd": "lots"}}),
        _record(2, "call", "0", tool="x", decision="allow", body={"cost": "free"}),
        _record(3, "decision", None, tool="x", decision="deny"),
    ]
    steps, events, total = build([_step("0", "x")], records)
    assert total == 0 and steps[0].attempts == 1 and events == []
