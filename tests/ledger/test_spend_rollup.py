"""The hourly rollup answers exactly what a sum over the reservations answers, whatever is
closed, open, expired or settled late (keel.ledger.rollup)."""

from __future__ import annotations

import datetime as _dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.ledger.series import spend_breakdown
from keel.store import Store, open_store

T0 = _dt.datetime(2026, 3, 1, tzinfo=_dt.UTC)


def _ts(moment: _dt.datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _reserve(store: Store, n: int, at: _dt.datetime, status: str, **kw: Any) -> None:
    with store.write(locks=()) as tx:
        tx.execute(
            "INSERT INTO ledger_reservations (reservation_id, tenant, agent, workflow, run_id, "
            "call_id, target, status, amount_usd, tokens, calls, actual_usd, actual_tokens, "
            "charges, created_at, expires_at) VALUES (?, ?, 'a', ?, NULL, ?, ?, ?, ?, 10, 1, ?, "
            "?, '[]', ?, ?)",
            (
                f"r{n}",
                kw.get("tenant", "acme"),
                kw.get("workflow"),
                f"c{n}",
                kw.get("target", "gpt"),
                status,
                kw.get("amount", 100),
                kw.get("actual", 90) if status == "settled" else None,
                5 if status == "settled" else None,
                _ts(at),
                _ts(at + _dt.timedelta(minutes=5)),
            ),
        )


def _settle(store: Store, n: int, actual: int) -> None:
    with store.write(locks=()) as tx:
        tx.execute(
            "UPDATE ledger_reservations SET status = 'settled', actual_usd = ?, actual_tokens = 5 "
            "WHERE reservation_id = ?",
            (actual, f"r{n}"),
        )


def _both(store: Store, now: _dt.datetime, **kw: Any) -> None:
    live = spend_breakdown(store, **kw)
    rolled = spend_breakdown(store, now=now, **kw)
    assert rolled.cells == live.cells


@pytest.fixture
def store(store_url: str) -> Any:
    with open_store(store_url) as opened:
        yield opened


def test_closed_hours_are_read_from_the_rollup_and_late_settlements_still_count(
    store: Store,
) -> None:
    hour = _dt.timedelta(hours=1)
    _reserve(store, 1, T0 + 10 * hour, "settled", workflow="support")
    _reserve(store, 2, T0 + 10 * hour + _dt.timedelta(minutes=30), "settled", target="crm")
    _reserve(store, 3, T0 + 11 * hour, "expired", amount=300)
    _reserve(store, 4, T0 + 30 * hour, "held", tenant="globex")
    now = T0 + 48 * hour
    span = {"since": T0, "until": T0 + 72 * hour}
    for bucket in ("hour", "day"):
        _both(store, now, bucket=bucket, **span)
        _both(store, now, bucket=bucket, tenant="acme", **span)
        _both(store, now, bucket=bucket, workflow="support", **span)
    with store.read() as tx:
        closed = {r[0] for r in tx.fetchall("SELECT hour FROM ledger_rollup_hours")}
    assert "2026-03-01T10" in closed  # settled only: closed
    assert "2026-03-01T11" not in closed  # an expired hold may still settle
    assert "2026-03-02T06" not in closed  # a hold
    assert "2026-03-02T23" not in closed  # within the settle margin of now
    _settle(store, 3, 250)  # the expired hold settles late: its hour was never closed
    _settle(store, 4, 40)
    rolled = spend_breakdown(store, now=now, **span)
    assert rolled.total().spent_usd == Decimal("0.00047")  # 90 + 90 + 250 + 40 micro-dollars
    _both(store, now, **span)


def test_a_range_cut_inside_hours_counts_only_its_part(store: Store) -> None:
    _reserve(store, 1, T0 + _dt.timedelta(minutes=10), "settled")
    _reserve(store, 2, T0 + _dt.timedelta(minutes=50), "settled", actual=7)
    now = T0 + _dt.timedelta(days=1)
    _both(store, now, since=T0, until=T0 + _dt.timedelta(hours=3), bucket="hour")
    part = spend_breakdown(
        store,
        since=T0 + _dt.timedelta(minutes=30),
        until=T0 + _dt.timedelta(hours=2),
        now=now,
        bucket="hour",
    )
    assert part.total().spent_usd == Decimal("0.000007")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40 * 60),
            st.sampled_from(["settled", "held", "expired", "released"]),
            st.sampled_from(["acme", "globex"]),
            st.sampled_from([None, "support"]),
            st.integers(0, 500),
        ),
        max_size=25,
    ),
    st.integers(0, 60),
    st.integers(1, 48),
)
def test_the_rollup_never_changes_an_answer(
    store_url: str, calls: list[Any], start: int, hours: int
) -> None:
    with open_store(store_url) as store:
        with store.write(locks=()) as tx:
            for table in ("ledger_reservations", "ledger_rollup", "ledger_rollup_hours"):
                tx.execute(f"DELETE FROM {table}")
        for n, (minute, status, tenant, workflow, actual) in enumerate(calls):
            at = T0 + _dt.timedelta(minutes=minute)
            _reserve(store, n, at, status, tenant=tenant, workflow=workflow, actual=actual)
        now = T0 + _dt.timedelta(hours=30)
        since = T0 + _dt.timedelta(minutes=start)
        for _ in range(2):  # the second time reads what the first closed
            _both(store, now, since=since, until=since + _dt.timedelta(hours=hours), bucket="hour")
            _both(store, now, since=T0, until=T0 + _dt.timedelta(days=2), tenant="globex")
