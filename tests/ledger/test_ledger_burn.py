"""Burn alerts: the first reservation that takes a counter past a fraction of a limit says so."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from keel.errors import BudgetExceeded, UsageError
from keel.ledger import Cap, Ledger, ReservationRequest
from keel.store import Store
from keel.testing import FrozenClock

Req = Callable[..., ReservationRequest]
D = Decimal
RUN = Cap("task", window="run", limit_usd=D(10))


def test_a_run_alerts_once_at_eighty_percent(ledger: Ledger, req: Req) -> None:
    assert not ledger.reserve(req("5", [RUN])).burn_alert
    assert not ledger.reserve(req("2.999999", [RUN])).burn_alert
    crossing = ledger.reserve(req("0.000001", [RUN]))
    assert crossing.burn_alert
    (alert,) = crossing.burn_alerts
    assert (alert.cap_id, alert.scope, alert.key, alert.fraction) == ("task", "run", "r1", D("0.8"))
    assert alert.line.reserved_usd == D(8)
    assert alert.line.alerted
    assert alert.to_dict()["line"]["reserved_usd"] == "8"
    assert not ledger.reserve(req("1", [RUN])).burn_alert
    assert ledger.reserve(req("0.5", [RUN], run_id="r2")).burn_alert is False


def test_dropping_below_and_crossing_again_does_not_alert_twice(ledger: Ledger, req: Req) -> None:
    first = ledger.reserve(req("9", [RUN]))
    assert first.burn_alert
    ledger.release(first.id)
    assert not ledger.reserve(req("9", [RUN])).burn_alert


def test_the_first_reservation_can_alert(ledger: Ledger, req: Req) -> None:
    assert ledger.reserve(req("8", [RUN])).burn_alert


def test_tokens_and_calls_alert_too(ledger: Ledger, req: Req) -> None:
    cap = Cap("task", window="run", limit_tokens=1000, limit_calls=10)
    assert not ledger.reserve(req("0", [cap], tokens=700)).burn_alert
    assert ledger.reserve(req("0", [cap], tokens=100)).burn_alert


def test_only_run_caps_alert_by_default(ledger: Ledger, req: Req) -> None:
    tenant = Cap("tenant", limit_usd=D(10))
    agent_run = Cap("agent-run", per=("agent", "run"), limit_usd=D(10))
    reservation = ledger.reserve(req("9", [tenant, agent_run]))
    assert [a.cap_id for a in reservation.burn_alerts] == ["agent-run"]


def test_a_cap_can_set_its_own_fraction(ledger: Ledger, req: Req) -> None:
    tenant = Cap("tenant", limit_usd=D(10), alert_fraction=D("0.5"))
    run = Cap("task", window="run", limit_usd=D(10), alert_fraction=D("0.95"))
    alerts = ledger.reserve(req("6", [tenant, run])).burn_alerts
    assert [(a.cap_id, a.fraction) for a in alerts] == [("tenant", D("0.5"))]
    alerts = ledger.reserve(req("3.5", [tenant, run])).burn_alerts
    assert [(a.cap_id, a.fraction) for a in alerts] == [("task", D("0.95"))]


@pytest.mark.parametrize(("which", "expected"), [("all", ["tenant", "task"]), ("none", [])])
def test_which_caps_alert_is_configurable(
    store: Store, clock: FrozenClock, req: Req, which: str, expected: list[str]
) -> None:
    ledger = Ledger(store, clock, burn_alert_caps=which, burn_alert_at=D("0.5"))  # type: ignore[arg-type]
    tenant = Cap("tenant", limit_usd=D(10))
    alerts = ledger.reserve(req("5", [tenant, RUN])).burn_alerts
    assert [a.cap_id for a in alerts] == expected


def test_a_refused_reservation_leaves_no_alert_behind(ledger: Ledger, req: Req) -> None:
    tight = Cap("tight", per=("agent",), limit_usd=D(1))
    with pytest.raises(BudgetExceeded):
        ledger.reserve(req("9", [RUN, tight]))
    assert not any(line.alerted for line in ledger.report())
    assert ledger.reserve(req("9", [RUN])).burn_alert


def test_bad_alert_settings_are_refused(store: Store, clock: FrozenClock) -> None:
    with pytest.raises(UsageError):
        Ledger(store, clock, burn_alert_at=D(0))
    with pytest.raises(UsageError):
        Ledger(store, clock, burn_alert_caps="some")  # type: ignore[arg-type]
