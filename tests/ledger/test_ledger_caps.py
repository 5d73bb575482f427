"""Every cap scope and window, exact money, argument-keyed caps, and bad input."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from keel.core import Call, Principal
from keel.errors import BudgetExceeded, InvalidRequestError, StoreError, UsageError
from keel.ledger import Cap, Ledger, ReservationRequest
from keel.store import Store, open_store
from keel.testing import FrozenClock

Req = Callable[..., ReservationRequest]
D = Decimal


def _line(ledger: Ledger, cap_id: str, **filters: Any) -> Any:
    lines = [line for line in ledger.report(**filters) if line.cap_id == cap_id]
    assert len(lines) == 1, lines
    return lines[0]


def test_call_window_checks_each_call_alone_and_keeps_no_counter(ledger: Ledger, req: Req) -> None:
    cap = Cap("per-call", window="call", limit_usd=D("2.50"), limit_tokens=1000)
    for _ in range(5):
        ledger.reserve(req("2.50", [cap], tokens=1000))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("2.51", [cap]))
    assert info.value.context["cap"] == "per-call"
    assert info.value.context["scope"] == "call"
    assert (info.value.context["limit"], info.value.context["requested"]) == ("2.5", "2.51")
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("1", [cap], tokens=1001))
    assert info.value.context["dimension"] == "tokens"
    assert ledger.report() == []


def test_run_cap_counts_per_run(ledger: Ledger, req: Req) -> None:
    cap = Cap("task", window="run", limit_usd=D(3))
    ledger.reserve(req("2", [cap], run_id="r1"))
    ledger.reserve(req("2", [cap], run_id="r2"))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("2", [cap], run_id="r1"))
    assert info.value.context["key"] == "r1"
    assert info.value.context["spent"] == "0"
    assert info.value.context["reserved"] == "2"
    ledger.reserve(req("1", [cap], run_id="r1"))
    line = _line(ledger, "task", run_id="r1")
    assert (line.reserved_usd, line.remaining_usd, line.scope) == (D(3), D(0), "run")
    assert line.workflow == "refunds"


def test_run_cap_outside_a_run_is_a_per_call_check(ledger: Ledger, req: Req) -> None:
    cap = Cap("task", window="run", limit_usd=D(3))
    for _ in range(3):
        ledger.reserve(req("3", [cap], run_id=None))
    with pytest.raises(BudgetExceeded):
        ledger.reserve(req("3.01", [cap], run_id=None))
    assert ledger.report() == []


@pytest.mark.parametrize(
    ("per", "field", "other"),
    [
        (("workflow",), "workflow", "onboarding"),
        (("agent",), "agent", "other-bot"),
        (("tenant",), "tenant", "globex"),
        ((), "tenant", "globex"),
    ],
)
def test_keyed_caps_separate_their_keys(
    ledger: Ledger, req: Req, per: tuple[str, ...], field: str, other: str
) -> None:
    cap = Cap("c", per=per, limit_usd=D(10))
    ledger.reserve(req("10", [cap]))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("0.000001", [cap]))
    assert info.value.context["scope"] == (per[0] if per else "tenant")
    ledger.reserve(req("10", [cap], **{field: other}))


def test_calls_outside_any_workflow_share_one_workflow_counter(ledger: Ledger, req: Req) -> None:
    cap = Cap("wf", per=("workflow",), limit_calls=2)
    ledger.reserve(req("0", [cap], workflow=None))
    ledger.reserve(req("0", [cap], workflow=None))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("0", [cap], workflow=None))
    assert (info.value.context["key"], info.value.context["dimension"]) == ("", "calls")


def test_an_agent_name_in_another_tenant_is_another_agent(ledger: Ledger, req: Req) -> None:
    cap = Cap("agent-budget", per=("agent",), limit_usd=D(5))
    ledger.reserve(req("5", [cap], tenant="acme"))
    ledger.reserve(req("5", [cap], tenant="globex"))
    assert {(line.tenant, line.spent_usd + line.reserved_usd) for line in ledger.report()} == {
        ("acme", D(5)),
        ("globex", D(5)),
    }


def test_day_window_resets_at_utc_midnight(ledger: Ledger, clock: FrozenClock, req: Req) -> None:
    clock.set(dt.datetime(2026, 3, 1, 23, 59, 59, tzinfo=dt.UTC))
    cap = Cap("tenant-day", window="day", limit_usd=D(100))
    r = ledger.reserve(req("100", [cap]))
    ledger.settle(r.id, D(100))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("1", [cap]))
    assert info.value.context["period"] == "2026-03-01"
    clock.advance(seconds=1)
    ledger.reserve(req("100", [cap]))
    days = {
        line.period: line.spent_usd + line.reserved_usd for line in ledger.report(all_days=True)
    }
    assert days == {"2026-03-01": D(100), "2026-03-02": D(100)}
    assert [line.period for line in ledger.report()] == ["2026-03-02"]
    assert [line.period for line in ledger.report(day=dt.date(2026, 3, 1))] == ["2026-03-01"]


def test_a_non_utc_clock_still_counts_utc_days(store: Store, req: Req) -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    clock = FrozenClock(dt.datetime(2026, 3, 2, 0, 30, tzinfo=paris))  # 23:30 UTC on the 1st
    ledger = Ledger(store, clock)
    ledger.reserve(req("1", [Cap("day", window="day", limit_usd=D(1))]))
    assert [line.period for line in ledger.report(all_days=True)] == ["2026-03-01"]


def test_tokens_and_calls_caps(ledger: Ledger, req: Req) -> None:
    cap = Cap("run", window="run", limit_tokens=1000, limit_calls=3)
    ledger.reserve(req("0", [cap], tokens=600))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("0", [cap], tokens=401))
    assert info.value.context["dimension"] == "tokens"
    assert (info.value.context["limit"], info.value.context["requested"]) == (1000, 401)
    ledger.reserve(req("0", [cap], tokens=400))
    ledger.reserve(req("0", [cap]))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("0", [cap]))
    assert info.value.context["dimension"] == "calls"
    line = _line(ledger, "run")
    assert (line.reserved_tokens, line.reserved_calls, line.remaining_calls) == (1000, 3, 0)


def test_all_or_nothing_across_caps(ledger: Ledger, req: Req) -> None:
    roomy = Cap("roomy", per=("tenant",), limit_usd=D(1000))
    tight = Cap("tight", window="run", limit_usd=D(1))
    ledger.reserve(req("1", [roomy, tight]))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("1", [roomy, tight]))
    assert info.value.context["cap"] == "tight"
    assert _line(ledger, "roomy").reserved_usd == D(1)
    assert ledger.spend_by().reservations == 1


def test_a_call_larger_than_a_fresh_cap_charges_nothing(ledger: Ledger, req: Req) -> None:
    roomy = Cap("roomy", limit_usd=D(1000))
    fresh = Cap("fresh", per=("agent",), limit_usd=D(1))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("2", [roomy, fresh]))
    assert (info.value.context["cap"], info.value.context["spent"]) == ("fresh", "0")
    assert ledger.report() == []


def test_exceeded_message_names_the_cap_and_the_amounts(ledger: Ledger, req: Req) -> None:
    cap = Cap("task", window="run", limit_usd=D("0.50"))
    r = ledger.reserve(req("0.25", [cap]))
    ledger.settle(r.id, D("0.125"))
    ledger.reserve(req("0.25", [cap]))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("0.25", [cap]))
    error = info.value
    assert str(error) == (
        "cap 'task' (run 'r1') would be exceeded: limit $0.5, spent $0.125, reserved $0.25, "
        "this call $0.25"
    )
    assert error.code == "budget_exceeded"
    assert error.context == {
        "cap": "task",
        "scope": "run",
        "key": "r1",
        "period": "",
        "dimension": "usd",
        "limit": "0.5",
        "spent": "0.125",
        "reserved": "0.25",
        "requested": "0.25",
        "tenant": "acme",
        "call_id": error.context["call_id"],
        "run_id": "r1",
    }


def test_money_is_exact(ledger: Ledger, req: Req) -> None:
    cap = Cap("t", limit_usd=D("0.3"))
    first = ledger.reserve(req("0.1", [cap]))
    second = ledger.reserve(req("0.2", [cap]))
    assert _line(ledger, "t").remaining_usd == D(0)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(req("0.000001", [cap]))
    ledger.settle(first.id, D("0.1"))
    ledger.settle(second.id, D("0.2"))
    line = _line(ledger, "t")
    assert line.spent_usd == D("0.3")
    assert str(line.spent_usd) == "0.3"
    assert ledger.spend_by().spent_usd == D("0.3")


def test_amounts_round_against_the_spender(ledger: Ledger, req: Req) -> None:
    cap = Cap("t", limit_usd=D("0.0000019"))  # a limit rounds down to 0.000001
    r = ledger.reserve(req("0.0000001", [cap]))  # an amount rounds up to 0.000001
    assert r.amount_usd == D("0.000001")
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(req("0.0000001", [cap]))
    assert info.value.context["limit"] == "0.000001"


def test_an_uncapped_cap_still_counts(ledger: Ledger, req: Req) -> None:
    track = Cap("spend-by-workflow", per=("workflow",))
    for amount in ("1.5", "2.25"):
        r = ledger.reserve(req(amount, [track]))
        ledger.settle(r.id, D(amount))
    line = _line(ledger, "spend-by-workflow", workflow="refunds")
    assert (line.spent_usd, line.limit_usd, line.remaining_usd) == (D("3.75"), None, None)
    assert (line.spent_calls, line.remaining_calls) == (2, None)


def test_lowering_a_limit_below_spend_refuses_everything(ledger: Ledger, req: Req) -> None:
    ledger.reserve(req("8", [Cap("t", limit_usd=D(10))]))
    lowered = Cap("t", limit_usd=D(5))
    with pytest.raises(BudgetExceeded):
        ledger.reserve(req("0", [lowered]))
    assert _line(ledger, "t").limit_usd == D(10)  # the refused call changed nothing
    ledger.reserve(req("0", [Cap("t", limit_usd=D(8))]))
    line = _line(ledger, "t")
    assert (line.limit_usd, line.remaining_usd) == (D(8), D(0))


# -- argument-keyed caps ------------------------------------------------------------------------

REFUNDS = Cap(
    "support#refunds-per-customer-day",
    per=("arguments.customer_id",),
    window="day",
    limit_calls=3,
    limit_usd=D(500),
    sum_argument="amount",
)


def _refund_call(customer: object, amount: object, **extra: Any) -> Call:
    return Call(
        kind="tool",
        target="billing.refund",
        arguments={"customer_id": customer, "amount": amount, **extra},
        principal=Principal(agent_id="bot", tenant="acme", run_id="r9"),
        workflow="refunds",
    )


def _refund(ledger: Ledger, customer: object, amount: object, price: str = "0.01") -> Any:
    request = ReservationRequest.for_call(
        _refund_call(customer, amount), amount_usd=D(price), caps=[REFUNDS]
    )
    return ledger.reserve(request)


def test_refunds_per_customer_per_day(ledger: Ledger, clock: FrozenClock) -> None:
    for amount in ("100", 150, "50.5"):
        _refund(ledger, "C1", amount)
    with pytest.raises(BudgetExceeded) as info:
        _refund(ledger, "C1", "1")
    assert info.value.context["dimension"] == "calls"
    assert info.value.context["key"] == "C1"
    _refund(ledger, "C2", "499.99")
    with pytest.raises(BudgetExceeded) as info:
        _refund(ledger, "C2", "0.02")
    assert info.value.context["dimension"] == "usd"
    assert (info.value.context["spent"], info.value.context["reserved"]) == ("0", "499.99")
    by_key = {line.key: line for line in ledger.report()}
    assert (by_key["C1"].reserved_calls, by_key["C1"].reserved_usd) == (3, D("300.5"))
    assert (by_key["C1"].period, by_key["C1"].scope) == ("2026-01-01", "arguments.customer_id")
    assert by_key["C2"].remaining_usd == D("0.01")
    clock.advance(days=1)
    _refund(ledger, "C1", "500")


def test_argument_caps_sum_the_argument_not_the_price(ledger: Ledger) -> None:
    reservation = _refund(ledger, "C1", "120", price="0.02")
    assert reservation.amount_usd == D("0.02")
    settled = ledger.settle(reservation.id, D("0.015"))
    assert settled.actual_usd == D("0.015")
    line = next(line for line in ledger.report() if line.key == "C1")
    assert (line.spent_usd, line.reserved_usd, line.spent_calls) == (D(120), D(0), 1)
    assert ledger.spend_by().spent_usd == D("0.015")


def test_argument_keys_are_exact_values(ledger: Ledger) -> None:
    _refund(ledger, 42, "1")
    _refund(ledger, "42", "1")  # a string is its own key; 42 is canonical JSON "42"
    _refund(ledger, {"id": 1, "region": "eu"}, "1")
    keys = sorted(line.key for line in ledger.report())
    assert keys == ["42", '{"id":1,"region":"eu"}']
    line = next(line for line in ledger.report() if line.key == "42")
    assert line.spent_calls + line.reserved_calls == 2


def test_float_amount_arguments_are_read_through_their_repr(ledger: Ledger) -> None:
    _refund(ledger, "C1", 0.1)
    _refund(ledger, "C1", 0.2)
    line = ledger.report()[0]
    assert line.reserved_usd == D("0.3")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"amount": "1"}, "keyed on argument 'customer_id'"),
        ({"customer_id": "C1"}, "sums argument 'amount'"),
        ({"customer_id": "C1", "amount": "lots"}, "must be a non-negative number"),
        ({"customer_id": "C1", "amount": True}, "must be a non-negative number"),
        ({"customer_id": "C1", "amount": -5}, "must be a non-negative number"),
    ],
)
def test_argument_caps_fail_closed_on_missing_or_bad_arguments(
    ledger: Ledger, arguments: dict[str, Any], message: str
) -> None:
    call = Call(
        kind="tool",
        target="billing.refund",
        arguments=arguments,
        principal=Principal(agent_id="bot", tenant="acme"),
    )
    with pytest.raises(InvalidRequestError, match=message):
        ReservationRequest.for_call(call, amount_usd=D(0), caps=[REFUNDS])


def test_reserve_checks_argument_keys_itself(ledger: Ledger, req: Req) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ledger.reserve(req("1", [REFUNDS], argument_amounts={"amount": D(1)}))
    assert info.value.code == "cap_argument_missing"
    with pytest.raises(InvalidRequestError) as info:
        ledger.reserve(req("1", [REFUNDS], key_arguments={"customer_id": "C1"}))
    assert info.value.code == "cap_argument_missing"
    assert ledger.report() == []


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"amount_usd": 0.5}, "never a float"),
        ({"amount_usd": D(-1)}, "non-negative"),
        ({"amount_usd": D("NaN")}, "finite"),
        ({"amount_usd": D("Infinity")}, "finite"),
        ({"amount_usd": D("1e12")}, "largest amount"),
        ({"amount_usd": True}, "never a float"),
        ({"tokens": -1}, "tokens must be between"),
        ({"tokens": 1.5}, "tokens must be a whole number"),
        ({"calls": 10**16}, "calls must be between"),
        ({"tenant": ""}, "needs a tenant"),
        ({"agent": None}, "needs a agent"),
    ],
)
def test_bad_requests_are_refused(
    ledger: Ledger, req: Req, fields: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        ledger.reserve(req("1", [Cap("t", limit_usd=D(10))], **fields))
    assert ledger.report() == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"per": ("call",)}, "use window='call'"),
        ({"per": ("customer_id",)}, "is not a dimension"),
        ({"per": ("agent", "agent")}, "repeats a dimension"),
        ({"window": "week"}, "is not one of"),
        ({"limit_usd": D(-1)}, "non-negative"),
        ({"limit_usd": 1.5}, "never a float"),
        ({"limit_tokens": -1}, "between 0"),
        ({"sum_argument": "a b"}, "not an argument name"),
        ({"alert_fraction": D("1.5")}, "alert_fraction"),
        ({"alert_fraction": 0.5}, "alert_fraction"),
    ],
)
def test_bad_caps_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        Cap("c", **kwargs)


def test_a_cap_listed_twice_is_a_usage_error(ledger: Ledger, req: Req) -> None:
    cap = Cap("c", limit_usd=D(1))
    with pytest.raises(UsageError, match="listed twice"):
        ledger.reserve(req("1", [cap, cap]))
    with pytest.raises(UsageError, match=r"keel\.ledger\.Cap"):
        ledger.reserve(req("1", [{"id": "c"}]))


def test_naive_times_are_refused(store: Store, req: Req) -> None:
    class NaiveClock(FrozenClock):
        def now(self) -> dt.datetime:
            return dt.datetime(2026, 1, 1)

    with pytest.raises(UsageError, match="timezone-aware"):
        Ledger(store, NaiveClock()).reserve(req("1"))


def test_fail_closed_when_the_store_is_gone(db_url: str, clock: FrozenClock, req: Req) -> None:
    store = open_store(db_url)
    ledger = Ledger(store, clock)
    r = ledger.reserve(req("1", [Cap("t", limit_usd=D(5))]))
    store.close()
    with pytest.raises(StoreError):
        ledger.reserve(req("1", [Cap("t", limit_usd=D(5))]))
    with pytest.raises(StoreError):
        ledger.settle(r.id, D(1))
