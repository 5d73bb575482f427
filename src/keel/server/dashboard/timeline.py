"""A run's timeline: each journal step with what the audit log says about it.

Pure functions over the run's steps (``keel.runtime``) and its audit records (``keel.audit``):
the verdict and rule, latency, cost, attempts, approvals with who decided and why, the redacted
arguments and outcome, the trace id, and a link to every record behind the row. Records that
belong to no step (the run's own state changes) form the run's event list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from keel.audit import Record
from keel.runtime.journal import JournalEntry
from keel.server.dashboard.audit import record_link

__all__ = ["Approval", "Event", "StepView", "build", "record_path"]


def record_path(record: Record) -> str:
    """The dashboard page of one audit record."""
    return record_link(record.chain, record.seq)


@dataclass
class Approval:
    approval_id: str
    requested: str
    rule_id: str | None
    reason: str | None
    status: str = "pending"
    decisions: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Event:
    ts: str
    action: str
    detail: str
    link: str


@dataclass
class StepView:
    step: str
    kind: str
    target: str
    status: str
    started_at: str
    finished_at: str
    decision: str | None = None
    rule_id: str | None = None
    reason: str | None = None
    latency_ms: float | None = None
    cost_usd: Decimal = Decimal(0)
    attempts: int = 0
    failures: list[str] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)
    arguments: str | None = None
    outcome: str | None = None
    error: str | None = None
    trace_id: str | None = None
    cached: bool = False
    replayed: bool = False
    records: list[tuple[str, str]] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)


def build(
    steps: Sequence[JournalEntry], records: Iterable[Record]
) -> tuple[list[StepView], list[Event], Decimal]:
    """The step rows, the run's own events, and the run's total cost (settled, in dollars)."""
    views = {
        s.step_id: StepView(
            step=s.step_id,
            kind=s.kind,
            target=s.target,
            status=s.status,
            started_at=s.started_at.isoformat(),
            finished_at="" if s.finished_at is None else s.finished_at.isoformat(),
        )
        for s in steps
    }
    events: list[Event] = []
    total = Decimal(0)
    for record in sorted(records, key=lambda r: (r.ts, r.seq)):
        entry = record.entry
        view = views.get(entry.step_id) if entry.step_id is not None else None
        if view is None:
            if entry.kind == "control":
                events.append(_event(record))
            continue
        view.records.append((f"{entry.kind} {entry.decision or ''}".strip(), record_path(record)))
        body = entry.body
        if entry.kind == "control":
            _approval(view, record)
            continue
        total += _apply_call(view, record, body)
    return list(views.values()), events, total


def _apply_call(view: StepView, record: Record, body: Any) -> Decimal:
    entry = record.entry
    view.decision = entry.decision
    view.rule_id = entry.rule_id
    verdict = body.get("verdict")
    if isinstance(verdict, dict) and isinstance(verdict.get("reason"), str):
        view.reason = verdict["reason"]
    if "args" in body:
        view.arguments = _json(body["args"])
    if isinstance(body.get("latency_ms"), int | float):
        view.latency_ms = float(body["latency_ms"])
    if isinstance(body.get("trace_id"), str):
        view.trace_id = body["trace_id"]
    view.cached = view.cached or bool(body.get("cached"))
    view.replayed = view.replayed or bool(body.get("replayed"))
    cost = Decimal(0)
    if entry.kind == "call":
        view.attempts += 1
        if "outcome" in body:
            view.outcome = _json(body["outcome"])
            view.error = None
        error = body.get("error")
        if isinstance(error, dict):
            text = f"{error.get('code', 'error')}: {error.get('message', '')}"
            view.error = text
            view.failures.append(text)
        cost = _usd(body.get("cost"))
        view.cost_usd += cost
    elif isinstance(body.get("error"), dict):
        view.error = f"{body['error'].get('code', 'refused')}: {body['error'].get('message', '')}"
    return cost


def _approval(view: StepView, record: Record) -> None:
    entry, body = record.entry, record.entry.body
    approval_id = body.get("approval_id")
    if not isinstance(approval_id, str):
        return
    found = next((a for a in view.approvals if a.approval_id == approval_id), None)
    if found is None:
        found = Approval(approval_id, record.ts.isoformat(), entry.rule_id, _str(body.get("note")))
        view.approvals.append(found)
    action = entry.decision or ""
    if action != "approval.request":
        found.decisions.append(
            {
                "action": action.removeprefix("approval."),
                "actor": _str(body.get("actor")) or "?",
                "note": _str(body.get("note")) or "",
                "ts": record.ts.isoformat(),
                "link": record_path(record),
            }
        )
    if isinstance(body.get("status"), str):
        found.status = body["status"]


def _event(record: Record) -> Event:
    entry, body = record.entry, record.entry.body
    detail = " ".join(
        str(body[k]) for k in ("reason", "worker", "note") if isinstance(body.get(k), str)
    )
    action = _str(body.get("action")) or entry.decision or entry.kind
    return Event(record.ts.isoformat(), action, detail, record_path(record))


def _usd(cost: Any) -> Decimal:
    if not isinstance(cost, dict):
        return Decimal(0)
    try:
        return Decimal(str(cost.get("usd", "0")))
    except InvalidOperation:
        return Decimal(0)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
