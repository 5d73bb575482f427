"""Growing a held reservation (a streamed answer outrunning its estimate): all or nothing,
never past a cap, and settled or released with its grown amounts."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.errors import BudgetExceeded, InvalidRequestError
from keel.ledger import BudgetLine, Cap, Ledger, ReservationRequest

Req = Callable[..., ReservationRequest]
D = Decimal
TASK = Cap("task", window="run", limit_usd=D(10), limit_tokens=10_000)
_runs = itertools.count()
TENANT = Cap("tenant-day", per=("tenant",), window="day", limit_usd=D(6))


def _line(ledger: Ledger, cap: str) -> BudgetLine:
    (line,) = [line for line in ledger.report() if line.cap_id == cap]
    return line


def test_extend_grows_every_counter_and_settles_the_grown_hold(ledger: Ledger, req: Req) -> None:
    r = ledger.reserve(req("2", [TASK, TENANT], tokens=1000))
    assert ledger.extend(r.id, D("1.5"), 500) == D("3.5")
    assert (_line(ledger, "task").reserved_usd, _line(ledger, "task").reserved_tokens) == (
        D("3.5"),
        1500,
    )
    assert _line(ledger, "tenant-day").reserved_usd == D("3.5")
    settled = ledger.settle(r.id, D("3.25"), 1400)
    assert settled.released_usd == D("0.25")
    for cap in ("task", "tenant-day"):
        line = _line(ledger, cap)
        assert (line.spent_usd, line.reserved_usd) == (D("3.25"), 0)


def test_extend_past_a_cap_changes_nothing(ledger: Ledger, req: Req) -> None:
    r = ledger.reserve(req("5", [TASK, TENANT]))
    with pytest.raises(BudgetExceeded) as caught:
        ledger.extend(r.id, D("2"))  # the tenant cap has $1 of room left
    assert caught.value.context["cap"] == "tenant-day"
    assert caught.value.context["reservation_id"] == r.id
    assert _line(ledger, "task").reserved_usd == D(5)  # the task counter was not grown
    assert _line(ledger, "tenant-day").reserved_usd == D(5)
    ledger.release(r.id)
    assert _line(ledger, "task").reserved_usd == 0
    assert _line(ledger, "tenant-day").reserved_usd == 0


def test_only_a_held_reservation_can_grow(ledger: Ledger, req: Req) -> None:
    r = ledger.reserve(req("1", [TASK]))
    ledger.settle(r.id, D("1"))
    with pytest.raises(InvalidRequestError) as caught:
        ledger.extend(r.id, D("1"))
    assert caught.value.code == "reservation_not_held"
    with pytest.raises(InvalidRequestError):
        ledger.extend("rsv_unknown", D("1"))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=12))
def test_holds_and_spend_never_pass_the_cap(ledger: Ledger, req: Req, steps: list[int]) -> None:
    cap = Cap("stream", window="run", limit_usd=D(3))
    run = f"run-{next(_runs)}"
    r = ledger.reserve(req("0.5", [cap], run_id=run))
    held = D("0.5")
    for cents in steps:
        try:
            held = ledger.extend(r.id, D(cents) / 100)
        except BudgetExceeded:
            assert held + D(cents) / 100 > D(3)
        (line,) = [x for x in ledger.report(run_id=run) if x.cap_id == "stream"]
        assert line.reserved_usd == held <= D(3)
    ledger.settle(r.id, held)
    (line,) = [x for x in ledger.report(run_id=run) if x.cap_id == "stream"]
    assert (line.reserved_usd, line.spent_usd) == (0, held)
