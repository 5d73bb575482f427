"""Cost per completed unit of work (``keel.ledger.unit_cost``): runs and the ledger's spend."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from decimal import Decimal

import pytest

from keel.ledger import Cap, Ledger, ReservationRequest
from keel.ledger.unit_cost import UnitCost, completed_run_spread, unit_costs
from keel.store import Store
from keel.testing import FrozenClock

Req = Callable[..., ReservationRequest]
D = Decimal
T0 = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)
HOUR = _dt.timedelta(hours=1)
RUN = Cap("run", window="run", limit_usd=D(100))


def _run(
    store: Store, run_id: str, workflow: str, status: str, at: _dt.datetime, tenant: str = "acme"
) -> None:
    """A row of the runtime's ``runs`` table, as the runtime writes it."""
    stamp = at.isoformat(timespec="microseconds")
    with store.write() as tx:
        tx.execute(
            "INSERT INTO runs (run_id, workflow, tenant, agent, status, input, attempts, "
            "created_at, updated_at) VALUES (?, ?, ?, 'bot', ?, '{}', 1, ?, ?)",
            (run_id, workflow, tenant, status, stamp, stamp),
        )


@pytest.fixture
def spend(ledger: Ledger, clock: FrozenClock, req: Req) -> Callable[..., None]:
    def charge(run_id: str, actual: str | None, workflow: str = "triage", **fields: object) -> None:
        reservation = ledger.reserve(req("10", [RUN], run_id=run_id, workflow=workflow, **fields))
        if actual is None:
            ledger.release(reservation.id)
        else:
            ledger.settle(reservation.id, D(actual))

    return charge


@pytest.fixture
def runs(store: Store, spend: Callable[..., None], clock: FrozenClock) -> None:
    """triage: three completed runs (1, 2+1, 6) and a failed one (4); refunds: one running
    run (0.5) and one completed run without any call; a globex triage run (9)."""
    _run(store, "t1", "triage", "completed", T0)
    _run(store, "t2", "triage", "completed", T0 + HOUR)
    _run(store, "t3", "triage", "completed", T0 + 2 * HOUR)
    _run(store, "t4", "triage", "failed", T0 + 3 * HOUR)
    _run(store, "f1", "refunds", "running", T0 + 4 * HOUR)
    _run(store, "f2", "refunds", "completed", T0 + 5 * HOUR)
    _run(store, "g1", "triage", "completed", T0 + HOUR, tenant="globex")
    spend("t1", "1")
    spend("t2", "2")
    clock.advance(hours=30)  # a run's spend counts whenever it was made
    spend("t2", "1")
    spend("t2", None)  # released: nothing spent
    spend("t3", "6")
    spend("t4", "4")
    spend("f1", "0.5", workflow="refunds")
    spend("g1", "9", tenant="globex")
    spend("t1", "100", tenant="globex")  # another tenant naming t1: not t1's spend
    spend("nobody", "3")  # a run id with no run row


def test_cost_per_completed_run_per_workflow(store: Store, runs: None) -> None:
    lines = unit_costs(store, since=T0, until=T0 + _dt.timedelta(days=1), tenant="acme")
    assert lines == [
        UnitCost("triage", runs=4, completed=3, completed_usd=D(10), other_usd=D(4)),
        UnitCost("refunds", runs=2, completed=1, completed_usd=D(0), other_usd=D("0.5")),
    ]
    triage, refunds = lines
    assert triage.per_completed_run == D("3.333333")  # 10 / 3, half-even to the micro-dollar
    assert triage.all_per_completed_run == D("4.666667")  # (10 + 4) / 3
    assert triage.total_usd == D(14)
    assert triage.per_run == D("3.5")  # 14 / 4 runs
    assert refunds.per_completed_run == D(0)
    assert triage.to_dict()["per_completed_run_usd"] == "3.333333"


def test_filters_by_workflow_tenant_and_start_time(store: Store, runs: None) -> None:
    day = T0 + _dt.timedelta(days=1)
    (only,) = unit_costs(store, since=T0, until=day, workflow="refunds")
    assert (only.workflow, only.runs, only.completed) == ("refunds", 2, 1)
    everyone = unit_costs(store, since=T0, until=day)
    assert [(x.workflow, x.runs, x.completed_usd) for x in everyone] == [
        ("triage", 5, D(19)),  # with globex's g1 (9)
        ("refunds", 2, D(0)),
    ]
    (globex,) = unit_costs(store, since=T0, until=day, tenant="globex")
    assert (globex.runs, globex.completed_usd, globex.other_usd) == (1, D(9), D(0))
    later = unit_costs(store, since=T0 + 3 * HOUR, until=day, tenant="acme")
    assert [(x.workflow, x.runs, x.completed) for x in later] == [
        ("triage", 1, 0),
        ("refunds", 2, 1),
    ]
    assert later[0].per_completed_run is None
    assert unit_costs(store, since=day, until=day + HOUR) == []
    assert len(unit_costs(store, since=T0, until=day, limit=1)) == 1
    assert not any(x.sampled for x in everyone)


def test_a_busy_range_is_answered_from_its_newest_runs_and_says_so(
    store: Store, runs: None
) -> None:
    day = T0 + _dt.timedelta(days=1)
    newest = unit_costs(store, since=T0, until=day, tenant="acme", sample=3)
    assert all(x.sampled for x in newest)
    assert sum(x.runs for x in newest) == 3
    exact = unit_costs(store, since=T0, until=day, tenant="acme", sample=6)
    assert not any(x.sampled for x in exact) and sum(x.runs for x in exact) == 6


def test_spread_of_completed_runs(store: Store, runs: None) -> None:
    day = T0 + _dt.timedelta(days=1)
    spread = completed_run_spread(store, "triage", since=T0, until=day, tenant="acme")
    assert spread is not None
    assert (spread.runs, spread.p50, spread.p90, spread.max) == (3, D(3), D(6), D(6))
    assert not spread.sampled
    recent = completed_run_spread(store, "triage", since=T0, until=day, tenant="acme", sample=2)
    assert recent is not None and recent.sampled
    assert (recent.runs, recent.p50, recent.max) == (2, D(3), D(6))  # t3 (6) and t2 (3)
    assert completed_run_spread(store, "nothing", since=T0, until=day) is None
    assert recent.to_dict()["p90_usd"] == "6"


def test_nearest_rank_percentiles(store: Store, spend: Callable[..., None]) -> None:
    for number in range(1, 71):  # costs 1..70 USD; nearest rank: P50 = 35, P90 = 63
        _run(store, f"r{number}", "bulk", "completed", T0 + _dt.timedelta(seconds=number))
        spend(f"r{number}", str(number), workflow="bulk")
    spread = completed_run_spread(store, "bulk", since=T0, until=T0 + HOUR)
    assert spread is not None
    assert (spread.runs, spread.p50, spread.p90, spread.max) == (70, D(35), D(63), D(70))
    (line,) = unit_costs(store, since=T0, until=T0 + HOUR)
    assert (line.completed, line.completed_usd) == (70, D(70 * 71 // 2))
