"""Spend over time and by dimension (``keel.ledger.series``), checked against ``spend_by`` and
``spend_grouped``, and the budget counters a spend chart compares with."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from decimal import Decimal

import pytest

from keel.errors import InvalidRequestError
from keel.ledger import Cap, Ledger, ReservationRequest
from keel.ledger.series import (
    MAX_BUCKETS,
    BreakdownDimension,
    bucket_floor,
    bucket_size,
    bucket_starts,
    cap_lines,
    spend_breakdown,
)
from keel.store import Store
from keel.testing import FrozenClock

Req = Callable[..., ReservationRequest]
D = Decimal
UTC = _dt.UTC
T0 = _dt.datetime(2026, 1, 1, tzinfo=UTC)
DAY = Cap("day", per=("tenant",), window="day", limit_usd=D(100))
EVER = Cap("ever", per=("workflow",), limit_usd=D(1000))
RUN = Cap("run", window="run", limit_usd=D(50))
DIMENSIONS: tuple[BreakdownDimension, ...] = ("tenant", "workflow", "target")


def _spend(
    ledger: Ledger,
    clock: FrozenClock,
    req: Req,
    at: _dt.datetime,
    actual: str | None,
    **fields: object,
) -> None:
    """One call at ``at``: reserved 5, settled at ``actual`` (None: still held)."""
    clock.set(at)
    reservation = ledger.reserve(req("5", [DAY, EVER, RUN], **fields))
    if actual is not None:
        ledger.settle(reservation.id, D(actual))


@pytest.fixture
def history(ledger: Ledger, clock: FrozenClock, req: Req) -> Ledger:
    """Calls over three days, two tenants, two workflows (and none), three targets."""
    hour = _dt.timedelta(hours=1)
    _spend(ledger, clock, req, T0, "1.5", target="gpt-small")
    _spend(ledger, clock, req, T0 + hour * 3, "2", target="search.web")
    _spend(ledger, clock, req, T0 + hour * 3 + _dt.timedelta(minutes=59), "0.25", target="gpt-big")
    _spend(
        ledger, clock, req, T0 + hour * 26, "7", target="gpt-big", workflow="triage", run_id="r2"
    )
    _spend(ledger, clock, req, T0 + hour * 27, "6.5", target="gpt-big", tenant="globex")
    _spend(
        ledger, clock, req, T0 + hour * 50, None, target="search.web", workflow=None, run_id=None
    )
    released = ledger.reserve(req("3", [DAY], target="search.web"))
    ledger.release(released.id)
    overrun = ledger.reserve(req("1", [DAY], target="gpt-small", workflow="triage", run_id="r3"))
    ledger.settle(overrun.id, D("4"))
    return ledger


def test_the_total_and_every_line_match_spend_by_and_spend_grouped(
    history: Ledger, store: Store
) -> None:
    for since, until in (
        (T0, T0 + _dt.timedelta(days=3)),
        (T0 + _dt.timedelta(hours=3), T0 + _dt.timedelta(hours=27)),
        (T0 - _dt.timedelta(days=1), T0),
    ):
        for tenant, workflow in ((None, None), ("acme", None), ("acme", "triage")):
            found = spend_breakdown(
                store, since=since, until=until, tenant=tenant, workflow=workflow
            )
            total = history.spend_by(since=since, until=until, tenant=tenant, workflow=workflow)
            assert found.total() == total
            for dimension in DIMENSIONS:
                expected = history.spend_grouped(
                    dimension, since=since, until=until, tenant=tenant, workflow=workflow
                )
                assert found.by(dimension) == expected


def test_the_series_has_every_bucket_in_time_order(history: Ledger, store: Store) -> None:
    found = spend_breakdown(store, since=T0, until=T0 + _dt.timedelta(days=4), bucket="day")
    series = found.series()
    assert [start for start, _ in series] == [T0 + _dt.timedelta(days=d) for d in range(4)]
    spent = [line.spent_usd for _, line in series]
    # 1.5 + 2 + 0.25; 7 (acme, triage) + 6.5 (globex); the overrun (4; one call still held)
    assert spent == [D("3.75"), D("13.5"), D(4), 0]  # an empty day is zero, not missing
    assert series[2][1].reserved_usd == D(5)
    for start, line in series:
        one = history.spend_by(since=start, until=start + _dt.timedelta(days=1))
        assert line == one
    assert sum((line.spent_usd for _, line in series), D(0)) == found.total().spent_usd


def test_hour_buckets_split_at_the_hour_and_the_range_end_is_excluded(
    history: Ledger, store: Store
) -> None:
    found = spend_breakdown(
        store, since=T0, until=T0 + _dt.timedelta(hours=4), bucket="hour", tenant="acme"
    )
    series = found.series()
    assert len(series) == 4
    assert [line.spent_usd for _, line in series] == [D("1.5"), 0, 0, D("2.25")]
    none = spend_breakdown(store, since=T0 + _dt.timedelta(microseconds=1), until=T0, bucket="hour")
    assert none.cells == () and none.series() == []
    just_after = spend_breakdown(
        store, since=T0 + _dt.timedelta(microseconds=1), until=T0 + _dt.timedelta(hours=1)
    )
    assert just_after.total().reservations == 0  # the call at T0 is before the range


def test_where_narrows_to_one_tenant_and_workflow(history: Ledger, store: Store) -> None:
    found = spend_breakdown(store, since=T0, until=T0 + _dt.timedelta(days=3))
    triage = found.where(tenant="acme", workflow="triage")
    assert triage.total() == history.spend_by(
        tenant="acme", workflow="triage", since=T0, until=T0 + _dt.timedelta(days=3)
    )
    assert {c.workflow for c in triage.cells} == {"triage"}
    assert found.where(tenant="nobody").total().reservations == 0
    assert found.where().total() == found.total()


def test_holds_and_released_calls_are_counted_like_spend_by(history: Ledger, store: Store) -> None:
    total = spend_breakdown(store, since=T0, until=T0 + _dt.timedelta(days=3)).total()
    assert total.reserved_usd == D(5)  # the one still held
    assert total.overruns == 3  # 7, 6.5 and 4 cost more than was held (5, 5, 1)
    assert total.reservations == 8
    assert total.spent_usd == D("1.5") + D(2) + D("0.25") + D(7) + D("6.5") + D(4)


def test_bucket_helpers() -> None:
    moment = _dt.datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=_dt.timezone(_dt.timedelta(hours=2)))
    assert bucket_floor(moment, "hour") == _dt.datetime(2026, 3, 4, 3, tzinfo=UTC)
    assert bucket_floor(moment, "day") == _dt.datetime(2026, 3, 4, tzinfo=UTC)
    starts = bucket_starts(T0 + _dt.timedelta(minutes=30), T0 + _dt.timedelta(hours=2), "hour")
    assert starts == [T0, T0 + _dt.timedelta(hours=1)]
    assert bucket_starts(T0, T0 + _dt.timedelta(hours=2, minutes=1), "hour")[-1] == (
        T0 + _dt.timedelta(hours=2)
    )
    assert bucket_starts(T0, T0, "day") == []
    assert bucket_size("hour") * 24 == bucket_size("day") == _dt.timedelta(days=1)


def test_bad_buckets_and_ranges_are_refused(store: Store) -> None:
    with pytest.raises(InvalidRequestError, match="hour or day"):
        spend_breakdown(store, since=T0, until=T0 + _dt.timedelta(days=1), bucket="week")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="at most"):
        spend_breakdown(
            store, since=T0, until=T0 + _dt.timedelta(hours=MAX_BUCKETS + 1), bucket="hour"
        )
    assert len(bucket_starts(T0, T0 + _dt.timedelta(hours=MAX_BUCKETS), "hour")) == MAX_BUCKETS


def test_too_many_groups_are_refused_not_summed_partly(history: Ledger, store: Store) -> None:
    until = T0 + _dt.timedelta(days=3)
    everything = spend_breakdown(store, since=T0, until=until)
    cells = len(everything.cells)
    assert spend_breakdown(store, since=T0, until=until, max_cells=cells).cells == everything.cells
    with pytest.raises(InvalidRequestError, match="more than"):
        spend_breakdown(store, since=T0, until=until, max_cells=cells - 1)


def test_cap_lines_are_the_shared_counters_with_a_usd_limit(history: Ledger, store: Store) -> None:
    lines = cap_lines(store, first_day=T0.date(), last_day=(T0 + _dt.timedelta(days=2)).date())
    seen = {(x.tenant, x.cap_id, x.key, x.period) for x in lines}
    assert ("acme", "day", "acme", "2026-01-01") in seen
    assert ("acme", "day", "acme", "2026-01-03") in seen
    assert ("globex", "day", "globex", "2026-01-02") in seen
    assert ("acme", "ever", "triage", "") in seen and ("acme", "ever", "refunds", "") in seen
    assert not any(x.cap_id == "run" for x in lines)  # one counter a run: not shared
    day_one = next(x for x in lines if x.period == "2026-01-01" and x.tenant == "acme")
    assert day_one.spent_usd == D("3.75") and day_one.limit_usd == D(100)
    report = {(x.tenant, x.cap_id, x.key, x.period): x for x in history.report(all_days=True)}
    assert all(report[(x.tenant, x.cap_id, x.key, x.period)] == x for x in lines)
    # Only some days; only one tenant; a workflow keeps tenant-wide caps and its own.
    one_day = cap_lines(store, first_day=T0.date(), last_day=T0.date(), tenant="acme")
    assert {x.period for x in one_day} == {"", "2026-01-01"}
    triage = cap_lines(
        store,
        first_day=T0.date(),
        last_day=(T0 + _dt.timedelta(days=2)).date(),
        tenant="acme",
        workflow="triage",
    )
    assert {x.key for x in triage} == {"acme", "triage"}
    assert len(cap_lines(store, first_day=T0.date(), last_day=T0.date(), limit=1)) == 1
