"""Cost per completed unit of work: the ledger's spend of a workflow's runs, per completed run.

A *unit of work* is a run that completed. For the runs started in ``[since, until)``,
:func:`unit_costs` sums, per workflow, the settled spend of every reservation made for each run
(at any time, by the run's own tenant) and counts the runs, separately for those that completed
and those that did not (failed, cancelled, killed, escalated, or not finished yet).
:func:`completed_run_spread` gives the per-run spread (P50, P90, largest) of the completed runs
of one workflow, over the most recent ``sample`` of them.

These are the only ledger queries that read another table: the runtime's ``runs`` (run id,
workflow, tenant, status, created_at), read-only and in one statement each, driven by its
``(workflow, created_at)`` index when a workflow is given and by the reservations' ``run_id``
index for the spend. Money is exact: integer micro-dollars summed in SQL, Decimal USD out; a
mean is rounded half-even to the micro-dollar; a percentile is a nearest-rank value (an actual
run's cost).

Thread safety: the functions only read; the answers are immutable.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

from keel.ledger._money import MICROS_PER_USD, from_micros
from keel.ledger.ledger import _ts
from keel.store import Store

__all__ = ["DEFAULT_SAMPLE", "RunCostSpread", "UnitCost", "completed_run_spread", "unit_costs"]

_MICRO: Final = Decimal("0.000001")
#: Runs summed per answer of :func:`unit_costs` at most (the newest of the range).
DEFAULT_SAMPLE: Final = 5000

#: One run's settled spend, by its own tenant (another tenant naming the run id does not count).
_RUN_COST: Final = (
    "(SELECT COALESCE(SUM(CASE WHEN l.status = 'settled' THEN l.actual_usd ELSE 0 END), 0) "
    "FROM ledger_reservations l WHERE l.run_id = r.run_id AND l.tenant = r.tenant)"
)


def _mean(total_micros: int, count: int) -> Decimal | None:
    if count == 0:
        return None
    return (Decimal(total_micros) / count / MICROS_PER_USD).quantize(_MICRO, ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class UnitCost:
    """A workflow's runs started in a range: how many, how many completed, and their spend."""

    workflow: str
    runs: int
    completed: int
    completed_usd: Decimal
    other_usd: Decimal
    #: True when the range had more runs than the sample: the figures cover the newest ones.
    sampled: bool = False

    @property
    def total_usd(self) -> Decimal:
        """Spend of every run started in the range."""
        return self.completed_usd + self.other_usd

    @property
    def per_run(self) -> Decimal | None:
        """Spend of every run ÷ their number (None: no run)."""
        return _mean(int(self.total_usd * MICROS_PER_USD), self.runs)

    @property
    def per_completed_run(self) -> Decimal | None:
        """Spend of the completed runs ÷ their number (None: none completed)."""
        return _mean(int(self.completed_usd * MICROS_PER_USD), self.completed)

    @property
    def all_per_completed_run(self) -> Decimal | None:
        """Spend of every run ÷ the completed ones: what a completed unit costs with the runs
        that did not complete paid for (None: none completed)."""
        return _mean(int(self.total_usd * MICROS_PER_USD), self.completed)

    def to_dict(self) -> dict[str, Any]:
        def text(value: Decimal | None) -> str | None:
            return None if value is None else str(value)

        return {
            "workflow": self.workflow,
            "runs": self.runs,
            "completed": self.completed,
            "completed_usd": str(self.completed_usd),
            "other_usd": str(self.other_usd),
            "per_run_usd": text(self.per_run),
            "per_completed_run_usd": text(self.per_completed_run),
            "all_per_completed_run_usd": text(self.all_per_completed_run),
        }


def _filters(
    since: _dt.datetime, until: _dt.datetime, tenant: str | None, workflow: str | None
) -> tuple[list[str], list[Any]]:
    where = ["r.created_at >= ?", "r.created_at < ?"]
    params: list[Any] = [_ts(since), _ts(until)]
    for column, value in (("r.workflow", workflow), ("r.tenant", tenant)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return where, params


def unit_costs(
    store: Store,
    *,
    since: _dt.datetime,
    until: _dt.datetime,
    tenant: str | None = None,
    workflow: str | None = None,
    limit: int = 100,
    sample: int = DEFAULT_SAMPLE,
) -> list[UnitCost]:
    """Per workflow (of ``tenant`` and ``workflow`` if given), the runs started in ``[since,
    until)`` and their spend; the most spent first, at most ``limit`` workflows.

    At most the ``sample`` newest runs of the range are summed (each run's spend is a look-up
    of its reservations): a long, busy range is answered from its newest runs, and every line
    says so (``sampled``)."""
    where, params = _filters(since, until, tenant, workflow)
    params.append(sample + 1)
    sql = (
        "SELECT workflow, done, COUNT(*), COALESCE(SUM(cost), 0) FROM ("
        "SELECT r.workflow AS workflow, "
        "CASE WHEN r.status = 'completed' THEN 1 ELSE 0 END AS done, "
        f"{_RUN_COST} AS cost FROM runs r WHERE {' AND '.join(where)} "
        "ORDER BY r.created_at DESC, r.run_id DESC LIMIT ?"
        ") per GROUP BY workflow, done"
    )
    with store.read() as tx:
        rows = tx.fetchall(sql, params)
    counted = sum(int(row[2]) for row in rows)
    sampled = counted > sample
    if sampled:  # one run too many was read to know; leave it out of the sums
        params[-1] = sample
        with store.read() as tx:
            rows = tx.fetchall(sql, params)
    found: dict[str, list[int]] = {}
    for name, done, count, cost in rows:
        line = found.setdefault(str(name), [0, 0, 0, 0])  # runs, completed, µUSD done, other
        line[0] += int(count)
        if int(done):
            line[1] += int(count)
            line[2] += int(cost)
        else:
            line[3] += int(cost)
    ordered = sorted(found.items(), key=lambda kv: (-(kv[1][2] + kv[1][3]), kv[0]))
    return [
        UnitCost(name, runs, completed, from_micros(done_usd), from_micros(other_usd), sampled)
        for name, (runs, completed, done_usd, other_usd) in ordered[:limit]
    ]


@dataclass(frozen=True, slots=True)
class RunCostSpread:
    """How the cost of one workflow's completed runs spreads: nearest-rank P50 and P90 and the
    largest, over ``runs`` completed runs (the most recent ones, when ``sampled``)."""

    workflow: str
    runs: int
    p50: Decimal
    p90: Decimal
    max: Decimal
    sampled: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "runs": self.runs,
            "p50_usd": str(self.p50),
            "p90_usd": str(self.p90),
            "max_usd": str(self.max),
            "sampled": self.sampled,
        }


def _rank(ordered: list[int], percent: int) -> int:
    """The nearest-rank percentile of sorted values: the ceil(percent/100 × n)-th smallest."""
    return ordered[max((percent * len(ordered) + 99) // 100, 1) - 1]


def completed_run_spread(
    store: Store,
    workflow: str,
    *,
    since: _dt.datetime,
    until: _dt.datetime,
    tenant: str | None = None,
    sample: int = 1000,
) -> RunCostSpread | None:
    """The spread of the cost of ``workflow``'s completed runs started in ``[since, until)``
    (of ``tenant`` if given), over at most the ``sample`` most recent; None if there are none."""
    where, params = _filters(since, until, tenant, workflow)
    params.append(sample + 1)
    sql = (
        f"SELECT {_RUN_COST} FROM runs r WHERE {' AND '.join(where)} AND r.status = 'completed' "
        "ORDER BY r.created_at DESC LIMIT ?"
    )
    with store.read() as tx:
        rows = tx.fetchall(sql, params)
    costs = sorted(int(row[0]) for row in rows[:sample])
    if not costs:
        return None
    return RunCostSpread(
        workflow=workflow,
        runs=len(costs),
        p50=from_micros(_rank(costs, 50)),
        p90=from_micros(_rank(costs, 90)),
        max=from_micros(costs[-1]),
        sampled=len(rows) > sample,
    )
