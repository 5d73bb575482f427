"""Settlement, release, overruns, idempotency, the caller's transaction, and reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

import pytest

from keel.errors import BudgetExceeded, InvalidRequestError
from keel.ledger import BudgetLine, Cap, Ledger, ReservationRequest
from keel.store import Store

Req = Callable[..., ReservationRequest]
D = Decimal
TASK = Cap("task", window="run", limit_usd=D(10), limit_tokens=10_000)


def _task(ledger: Ledger) -> BudgetLine:
    (line,) = [line for line in ledger.report() if line.cap_id == "task"]
    return line


def test_settle_moves_the_hold_to_spent_and_releases_the_rest(ledger: Ledger, req: Req) -> None:
    r = ledger.reserve(req("4", [TASK], tokens=4000))
    assert (_task(ledger).reserved_usd, _task(ledger).reserved_tokens) == (D(4), 4000)
    settled = ledger.settle(r.id, D("1.25"), 900)
    assert settled.outcome == "settled" and settled.changed
    assert (settled.released_usd, settled.overrun_usd, settled.overrun) == (D("2.75"), 0, False)
    line = _task(ledger)
    assert (line.spent_usd, line.reserved_usd, line.remaining_usd) == (D("1.25"), 0, D("8.75"))
    assert (line.spent_tokens, line.reserved_tokens, line.spent_calls) == (900, 0, 1)


def test_an_overrun_is_spent_anyway_and_reported(ledger: Ledger, req: Req) -> None:
    r = ledger.reserve(req("8", [TASK], tokens=100))
    settled = ledger.settle(r.id, D("12.5"), 250)
    assert settled.overrun
    assert (settled.overrun_usd, settled.overrun_tokens, settled.released_usd) == (
        D("4.5"),
        150,
        D(0),
    )
    assert settled.to_dict()["overrun_usd"] == "4.5"
    line = _task(ledger)
    assert (line.spent_usd, line.remaining_usd) == (D("12.5"), D(0))
    with pytest.raises(BudgetExceeded):
        ledger.reserve(req("0", [TASK]))
    assert ledger.spend_by().overruns == 1


def test_release_gives_everything_back(ledger: Ledger, req: Req) -> None:
    r = ledger.reserve(req("10", [TASK], tokens=10_000))
    released = ledger.release(r.id)
    assert (released.outcome, released.released_usd, released.actual_usd) == ("released", D(10), 0)
    line = _task(ledger)
    assert (line.spent_usd, line.reserved_usd, line.spent_calls, line.reserved_calls) == (
        0,
        0,
        0,
        0,
    )
    ledger.reserve(req("10", [TASK], tokens=10_000))


def test_settle_and_release_are_idempotent(ledger: Ledger, req: Req) -> None:
    r = ledger.reserve(req("4", [TASK]))
    first = ledger.settle(r.id, D(3))
    again = ledger.settle(r.id, D(1))
    assert (again.outcome, again.changed, again.actual_usd) == ("already_settled", False, D(3))
    assert ledger.release(r.id).outcome == "already_settled"
    assert _task(ledger).spent_usd == first.actual_usd == D(3)
    other = ledger.reserve(req("4", [TASK]))
    ledger.release(other.id)
    assert ledger.release(other.id).outcome == "already_released"
    late = ledger.settle(other.id, D(4))
    assert (late.outcome, late.actual_usd) == ("already_released", D(0))
    line = _task(ledger)
    assert (line.spent_usd, line.reserved_usd, line.spent_calls) == (D(3), 0, 1)


def test_unknown_reservations_are_refused(ledger: Ledger) -> None:
    for action in (lambda: ledger.settle("rsv_nope", D(1)), lambda: ledger.release("rsv_nope")):
        with pytest.raises(InvalidRequestError) as info:
            action()
        assert info.value.code == "reservation_unknown"
    with pytest.raises(InvalidRequestError, match="never a float"):
        ledger.settle("rsv_nope", 1.0)  # type: ignore[arg-type]


def test_settle_joins_the_callers_transaction(ledger: Ledger, store: Store, req: Req) -> None:
    r = ledger.reserve(req("4", [TASK]))
    outcomes: list[str] = []

    def settle_then_fail() -> None:
        with store.write() as tx:
            outcomes.append(ledger.settle(r.id, D(1), tx=tx).outcome)
            raise RuntimeError("the audit append failed")

    with pytest.raises(RuntimeError):
        settle_then_fail()
    assert outcomes == ["settled"]
    line = _task(ledger)
    assert (line.spent_usd, line.reserved_usd) == (0, D(4))  # rolled back with the caller
    with store.write() as tx:
        ledger.settle(r.id, D(1), tx=tx)
    assert _task(ledger).spent_usd == D(1)
    other = ledger.reserve(req("1", [TASK]))
    with store.write() as tx:
        assert ledger.release(other.id, tx=tx).outcome == "released"
    with store.write() as tx:
        joined = ledger.reserve(req("9", [TASK]), tx=tx)
    assert joined.amount_usd == D(9)
    assert _task(ledger).reserved_usd == D(9)


def test_a_refused_joined_reservation_leaves_the_callers_work(
    ledger: Ledger, store: Store, req: Req
) -> None:
    roomy = Cap("roomy", limit_usd=D(100))
    tight = Cap("tight", per=("agent",), limit_usd=D("1.5"))
    with store.write() as tx:
        kept = ledger.reserve(req("1", [roomy, tight]), tx=tx)
        with pytest.raises(BudgetExceeded):  # roomy is charged by the statement, then undone
            ledger.reserve(req("1", [roomy, tight]), tx=tx)
    lines = {line.cap_id: (line.reserved_usd, line.reserved_calls) for line in ledger.report()}
    assert lines == {"roomy": (D(1), 1), "tight": (D(1), 1)}
    assert ledger.spend_by().reservations == 1
    assert ledger.settle(kept.id, D(1)).outcome == "settled"


def test_spend_by_sums_settled_spend_and_holds(ledger: Ledger, req: Req) -> None:
    a = ledger.reserve(req("1", [], run_id="r1", agent="a", target="billing.refund"))
    b = ledger.reserve(req("2", [], run_id="r2", agent="b", target="gpt-4o", tokens=500))
    ledger.reserve(req("3", [], run_id="r2", agent="b", target="gpt-4o", tokens=700))
    ledger.settle(a.id, D("0.5"))
    ledger.settle(b.id, D("2.5"), 650)
    total = ledger.spend_by(tenant="acme")
    assert (total.spent_usd, total.spent_tokens, total.spent_calls) == (D(3), 650, 2)
    assert (total.reserved_usd, total.reserved_tokens, total.reserved_calls) == (D(3), 700, 1)
    assert (total.reservations, total.overruns) == (3, 1)
    assert ledger.spend_by(run_id="r1").spent_usd == D("0.5")
    assert ledger.spend_by(agent="b", target="gpt-4o").reserved_usd == D(3)
    assert ledger.spend_by(tenant="globex").reservations == 0
    assert json.loads(json.dumps(total.to_dict()))["spent_usd"] == "3"


def test_report_filters_and_json(ledger: Ledger, req: Req) -> None:
    caps = [TASK, Cap("tenant", limit_usd=D(100)), Cap("wf", per=("workflow",))]
    ledger.reserve(req("1", caps, run_id="r1", workflow="refunds"))
    ledger.reserve(req("1", caps, run_id="r2", workflow="onboarding"))
    ledger.reserve(req("1", caps, run_id="r3", workflow="refunds", tenant="globex"))
    assert len(ledger.report()) == 8  # task: 3 runs; tenant: 2 tenants; wf: 3 (tenant, workflow)
    assert {line.cap_id for line in ledger.report(tenant="globex")} == {"task", "tenant", "wf"}
    acme_refunds = ledger.report(tenant="acme", workflow="refunds")
    assert {(line.cap_id, line.key) for line in acme_refunds} == {
        ("task", "r1"),
        ("wf", "refunds"),
    }
    assert [line.key for line in ledger.report(run_id="r2")] == ["r2"]
    data = json.loads(json.dumps([line.to_dict() for line in ledger.report(run_id="r2")]))
    assert data[0]["remaining_usd"] == "9"
    assert data[0]["limit_tokens"] == 10_000


def test_reservation_to_dict_is_json(ledger: Ledger, req: Req) -> None:
    r = ledger.reserve(req("1.5", [TASK]))
    data = json.loads(json.dumps(r.to_dict()))
    assert data["amount_usd"] == "1.5"
    assert data["burn_alerts"] == []
    assert data["expires_at"].startswith("2026-01-01T00:15:00")
