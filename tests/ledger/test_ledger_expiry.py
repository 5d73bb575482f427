"""A crash between reserve and settle leaks nothing: holds expire, late settlements still count."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from decimal import Decimal

import pytest

from keel.errors import BudgetExceeded
from keel.ledger import BudgetLine, Cap, Ledger, ReservationRequest
from keel.store import Store
from keel.testing import FrozenClock

Req = Callable[..., ReservationRequest]
D = Decimal
TENANT = Cap("tenant", limit_usd=D(10))


def _tenant(ledger: Ledger) -> BudgetLine:
    (line,) = ledger.report()
    return line


def test_holds_expire_after_the_ttl(ledger: Ledger, clock: FrozenClock, req: Req) -> None:
    r = ledger.reserve(req("6", [TENANT]))
    assert r.expires_at == clock.now() + dt.timedelta(minutes=15)
    clock.advance(minutes=14, seconds=59)
    assert ledger.expire_stale() == []
    clock.advance(seconds=1)
    (expired,) = ledger.expire_stale()
    assert (expired.reservation_id, expired.amount_usd, expired.call_id) == (
        r.id,
        D(6),
        r.call_id,
    )
    assert expired.expires_at == r.expires_at
    assert expired.to_dict()["amount_usd"] == "6"
    line = _tenant(ledger)
    assert (line.reserved_usd, line.reserved_calls, line.spent_usd) == (0, 0, 0)
    assert ledger.expire_stale() == []
    assert ledger.release(r.id).outcome == "already_expired"


def test_a_blocked_reservation_expires_stale_holds_and_retries(
    ledger: Ledger, clock: FrozenClock, req: Req
) -> None:
    ledger.reserve(req("10", [TENANT]))  # the caller crashes: never settled
    with pytest.raises(BudgetExceeded):
        ledger.reserve(req("1", [TENANT]))
    clock.advance(minutes=15)
    ledger.reserve(req("10", [TENANT]))
    line = _tenant(ledger)
    assert (line.reserved_usd, line.reserved_calls) == (D(10), 1)


def test_reserve_sweeps_opportunistically(store: Store, clock: FrozenClock, req: Req) -> None:
    ledger = Ledger(store, clock, sweep_interval=dt.timedelta(seconds=60))
    ledger.reserve(req("4", [TENANT]))
    clock.advance(minutes=15)  # also moves the monotonic clock past the sweep interval
    ledger.reserve(req("1", [Cap("other", limit_usd=D(5))]))
    assert ledger.spend_by().reserved_usd == D(1)
    assert {line.cap_id: line.reserved_usd for line in ledger.report()} == {
        "tenant": D(0),
        "other": D(1),
    }


def test_settling_an_expired_hold_still_records_the_spend(
    ledger: Ledger, clock: FrozenClock, req: Req
) -> None:
    r = ledger.reserve(req("6", [TENANT]))
    clock.advance(minutes=20)
    ledger.expire_stale()
    settled = ledger.settle(r.id, D("5.5"))
    assert (settled.outcome, settled.changed) == ("settled_after_expiry", True)
    line = _tenant(ledger)
    assert (line.spent_usd, line.reserved_usd, line.spent_calls, line.reserved_calls) == (
        D("5.5"),
        0,
        1,
        0,
    )
    assert ledger.settle(r.id, D("5.5")).outcome == "already_settled"


def test_a_request_may_ask_for_a_longer_hold(ledger: Ledger, clock: FrozenClock, req: Req) -> None:
    r = ledger.reserve(req("1", [TENANT], ttl=dt.timedelta(hours=2)))
    clock.advance(hours=1)
    assert ledger.expire_stale() == []
    assert ledger.settle(r.id, D(1)).outcome == "settled"


def test_concurrent_sweepers_release_each_hold_once(
    store: Store, clock: FrozenClock, req: Req
) -> None:
    ledger = Ledger(store, clock, sweep_batch=7)
    for _ in range(40):
        ledger.reserve(req("0.25", [TENANT]))
    clock.advance(minutes=30)
    results: list[int] = []
    barrier = threading.Barrier(4)

    def sweep() -> None:
        sweeper = Ledger(store, clock, sweep_batch=7)
        barrier.wait()
        results.append(len(sweeper.expire_stale()))

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 40
    line = _tenant(ledger)
    assert (line.reserved_usd, line.reserved_calls) == (0, 0)


def test_prune_deletes_finished_history(ledger: Ledger, clock: FrozenClock, req: Req) -> None:
    day = Cap("day", window="day", limit_usd=D(100))
    done = ledger.reserve(req("1", [day]))
    ledger.settle(done.id, D(1))
    held = ledger.reserve(req("1", [day]))
    clock.advance(days=2)
    assert ledger.prune(clock.now()) == (1, 0)  # yesterday's counter still holds `held`
    ledger.release(held.id)
    clock.advance(seconds=1)
    assert ledger.prune(clock.now()) == (1, 1)
    assert ledger.report(all_days=True) == []
