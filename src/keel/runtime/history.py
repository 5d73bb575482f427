"""Run history from the audit log: what each run of a workflow did and cost.

The forecast (``keel.ledger.forecast``) calibrates on these observations. A run's record set
gives everything the cost model needs: model calls (iterations), tokens and cost as settled,
failed calls and the extra attempts made after failures.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from decimal import Decimal

from keel.audit import Record, iter_run_records
from keel.ledger.forecast import RunObservation
from keel.store import Store

__all__ = ["RunSummary", "run_observations", "run_summaries"]


@dataclass
class RunSummary:
    run_id: str
    workflow: str | None
    started_at: _dt.datetime
    model_calls: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal("0")
    errors: int = 0
    retries: int = 0
    denials: int = 0
    stopped_by: str | None = None
    decisions: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        """The run was not stopped by a budget, rate limit or kill switch at its end."""
        return self.stopped_by is None

    def add(self, record: Record) -> None:
        entry = record.entry
        body = entry.body
        if self.workflow is None and isinstance(body.get("workflow"), str):
            self.workflow = body["workflow"]
        self.decisions.append(entry.decision or "")
        if entry.kind == "control":
            return
        model = body.get("call_kind") == "model"
        if entry.kind == "call":
            if model:
                self.model_calls += 1
            else:
                self.tool_calls += 1
            cost = body.get("cost")
            if isinstance(cost, dict):
                self.cost_usd += Decimal(str(cost.get("usd", "0")))
                self.input_tokens += int(cost.get("input_tokens", 0))
                self.output_tokens += int(cost.get("output_tokens", 0))
            if body.get("error"):
                self.errors += 1
        elif body.get("cached") and model:
            self.model_calls += 1
        metadata = body.get("metadata")
        if model and isinstance(metadata, dict) and int(metadata.get("attempt", 0) or 0) > 0:
            self.retries += 1
        rule = entry.rule_id or ""
        if entry.decision == "deny":
            self.denials += 1
            if rule.startswith(("budget", "kill", "rate")) or "budget_exceeded" in rule:
                self.stopped_by = rule


def run_summaries(
    store: Store,
    *,
    workflow: str | None = None,
    since: _dt.datetime | None = None,
    tenant: str | None = None,
) -> list[RunSummary]:
    """One summary per run, in the order runs started; ``workflow`` filters, and ``tenant`` keeps
    only that tenant's records (an agent may name another tenant's workflow or run id)."""
    runs: dict[str, RunSummary] = {}
    for record in iter_run_records(store, since=since, tenant=tenant):
        run_id = record.entry.run_id
        assert run_id is not None
        summary = runs.get(run_id)
        if summary is None:
            summary = runs[run_id] = RunSummary(run_id, None, record.ts)
        summary.add(record)
    found = sorted(runs.values(), key=lambda r: r.started_at)
    return [r for r in found if workflow is None or r.workflow == workflow]


def run_observations(
    store: Store, workflow: str, *, since: _dt.datetime | None = None, tenant: str | None = None
) -> list[RunObservation]:
    """The forecast's inputs for ``workflow``: one observation per recorded run (of ``tenant``'s
    records only, if given)."""
    return [
        RunObservation(
            workflow=workflow,
            run_id=r.run_id,
            iterations=max(r.model_calls - r.retries, 0),
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            cost_usd=r.cost_usd,
            started_at=r.started_at,
            errors=r.errors,
            retries=r.retries if r.errors else 0,
            completed=r.completed,
        )
        for r in run_summaries(store, workflow=workflow, since=since, tenant=tenant)
    ]
