"""What the ledger answers: reservations, settlements, budget lines, spend summaries.

All are frozen dataclasses with a ``to_dict()`` JSON-safe form (money as decimal strings), for
the audit record, the CLI and the server.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "BudgetLine",
    "BurnAlert",
    "ExpiredReservation",
    "Reservation",
    "Settlement",
    "SettlementOutcome",
    "Spend",
]

#: ``settled``/``released``: this call changed the ledger. ``settled_after_expiry``: the
#: reservation had expired (its hold was already released) and the actual cost was recorded now.
#: ``already_*``: nothing changed (settling or releasing twice is a reported no-op).
SettlementOutcome = Literal[
    "settled",
    "released",
    "settled_after_expiry",
    "already_settled",
    "already_released",
    "already_expired",
]


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _remaining(limit: Decimal | int | None, used: Decimal | int) -> Any:
    if limit is None:
        return None
    left = limit - used
    return left if left > 0 else limit - limit  # zero of the same type


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One counter: a cap's spend, holds and limits for one key and period.

    ``period`` is ``""`` for counters without a day window, else the UTC date (``2026-01-05``).
    ``workflow``/``run_id`` are set when the counter is specific to a workflow or run. Remaining
    amounts are ``limit - spent - reserved`` (never below zero; None without a limit).
    ``alerted`` says a burn alert has fired for this counter.
    """

    tenant: str
    cap_id: str
    scope: str
    key: str
    period: str
    workflow: str | None
    run_id: str | None
    limit_usd: Decimal | None
    spent_usd: Decimal
    reserved_usd: Decimal
    limit_tokens: int | None
    spent_tokens: int
    reserved_tokens: int
    limit_calls: int | None
    spent_calls: int
    reserved_calls: int
    alerted: bool = False

    @property
    def remaining_usd(self) -> Decimal | None:
        result: Decimal | None = _remaining(self.limit_usd, self.spent_usd + self.reserved_usd)
        return result

    @property
    def remaining_tokens(self) -> int | None:
        result: int | None = _remaining(self.limit_tokens, self.spent_tokens + self.reserved_tokens)
        return result

    @property
    def remaining_calls(self) -> int | None:
        result: int | None = _remaining(self.limit_calls, self.spent_calls + self.reserved_calls)
        return result

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "cap": self.cap_id,
            "scope": self.scope,
            "key": self.key,
            "period": self.period,
            "workflow": self.workflow,
            "run_id": self.run_id,
            "limit_usd": _money(self.limit_usd),
            "spent_usd": str(self.spent_usd),
            "reserved_usd": str(self.reserved_usd),
            "remaining_usd": _money(self.remaining_usd),
            "limit_tokens": self.limit_tokens,
            "spent_tokens": self.spent_tokens,
            "reserved_tokens": self.reserved_tokens,
            "remaining_tokens": self.remaining_tokens,
            "limit_calls": self.limit_calls,
            "spent_calls": self.spent_calls,
            "reserved_calls": self.reserved_calls,
            "remaining_calls": self.remaining_calls,
            "alerted": self.alerted,
        }


@dataclass(frozen=True, slots=True)
class BurnAlert:
    """A counter's spent + reserved reached ``fraction`` of a limit for the first time, with this
    reservation. ``line`` is the counter right after the reservation."""

    cap_id: str
    scope: str
    key: str
    period: str
    fraction: Decimal
    line: BudgetLine

    def to_dict(self) -> dict[str, Any]:
        return {
            "cap": self.cap_id,
            "scope": self.scope,
            "key": self.key,
            "period": self.period,
            "fraction": str(self.fraction),
            "line": self.line.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on every counter a call touches, until settled, released or expired.

    ``burn_alerts`` lists the counters whose burn alert fired with this reservation, each with
    the counter as it stands after the reservation (:meth:`Ledger.report` shows all counters).
    """

    id: str
    tenant: str
    call_id: str
    amount_usd: Decimal
    tokens: int
    calls: int
    created_at: _dt.datetime
    expires_at: _dt.datetime
    burn_alerts: tuple[BurnAlert, ...] = ()

    @property
    def burn_alert(self) -> bool:
        """True if this reservation crossed a burn-alert fraction for the first time."""
        return bool(self.burn_alerts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation_id": self.id,
            "tenant": self.tenant,
            "call_id": self.call_id,
            "amount_usd": str(self.amount_usd),
            "tokens": self.tokens,
            "calls": self.calls,
            "expires_at": self.expires_at.isoformat(),
            "burn_alerts": [a.to_dict() for a in self.burn_alerts],
        }


@dataclass(frozen=True, slots=True)
class Settlement:
    """The result of :meth:`Ledger.settle` or :meth:`Ledger.release`.

    ``reserved_*`` is what was held; ``actual_*`` what was recorded as spent (zero for a
    release); ``released_usd`` the part of the hold given back; ``overrun_*`` how much the actual
    cost exceeded the hold (spent anyway: the call already ran). For ``already_*`` outcomes the
    amounts are those recorded by the first settlement or release.
    """

    reservation_id: str
    outcome: SettlementOutcome
    reserved_usd: Decimal
    actual_usd: Decimal
    reserved_tokens: int
    actual_tokens: int

    @property
    def changed(self) -> bool:
        """False for the reported no-ops (``already_*``)."""
        return not self.outcome.startswith("already_")

    @property
    def released_usd(self) -> Decimal:
        left = self.reserved_usd - self.actual_usd
        return left if left > 0 else Decimal(0)

    @property
    def overrun_usd(self) -> Decimal:
        over = self.actual_usd - self.reserved_usd
        return over if over > 0 else Decimal(0)

    @property
    def overrun_tokens(self) -> int:
        return max(0, self.actual_tokens - self.reserved_tokens)

    @property
    def overrun(self) -> bool:
        """True if the actual cost (money or tokens) exceeded the reservation."""
        return self.overrun_usd > 0 or self.overrun_tokens > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation_id": self.reservation_id,
            "outcome": self.outcome,
            "reserved_usd": str(self.reserved_usd),
            "actual_usd": str(self.actual_usd),
            "released_usd": str(self.released_usd),
            "overrun_usd": str(self.overrun_usd),
            "reserved_tokens": self.reserved_tokens,
            "actual_tokens": self.actual_tokens,
            "overrun_tokens": self.overrun_tokens,
        }


@dataclass(frozen=True, slots=True)
class ExpiredReservation:
    """A reservation released by :meth:`Ledger.expire_stale` because its call never settled."""

    reservation_id: str
    tenant: str
    call_id: str
    amount_usd: Decimal
    tokens: int
    expires_at: _dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation_id": self.reservation_id,
            "tenant": self.tenant,
            "call_id": self.call_id,
            "amount_usd": str(self.amount_usd),
            "tokens": self.tokens,
            "expires_at": self.expires_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Spend:
    """Totals over reservations (:meth:`Ledger.spend_by`): settled spend at the call's price,
    what is still held, and how many reservations and overruns there were."""

    spent_usd: Decimal
    spent_tokens: int
    spent_calls: int
    reserved_usd: Decimal
    reserved_tokens: int
    reserved_calls: int
    reservations: int
    overruns: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "spent_usd": str(self.spent_usd),
            "spent_tokens": self.spent_tokens,
            "spent_calls": self.spent_calls,
            "reserved_usd": str(self.reserved_usd),
            "reserved_tokens": self.reserved_tokens,
            "reserved_calls": self.reserved_calls,
            "reservations": self.reservations,
            "overruns": self.overruns,
        }
