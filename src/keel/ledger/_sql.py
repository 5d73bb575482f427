"""The ledger's SQL, written once for SQLite and PostgreSQL.

Portability rules followed here: ``?`` placeholders (the backend translates), ``INSERT ... ON
CONFLICT (...) DO UPDATE ... WHERE`` (SQLite >= 3.24, PostgreSQL >= 9.5), ``RETURNING``
(SQLite >= 3.35, PostgreSQL), integer arithmetic only (money in µUSD), ``CASE`` instead of the
dialect-specific two-argument MIN/MAX (LEAST/GREATEST), and literal status values so that
SQLite can use the partial index on held reservations.

Every check-and-change is one statement: a counter is charged by a conditional upsert whose
``WHERE`` is the cap, so two writers can never both pass a check that only one of them fits
(PostgreSQL re-evaluates the ``WHERE`` on the locked, latest row version; SQLite holds the write
lock for the whole transaction).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from keel.ledger._money import COUNTER_CEILING

__all__ = [
    "COUNTER_COLUMNS",
    "COUNTER_SELECT",
    "EXPIRE_ONE",
    "EXTEND_COUNTER",
    "EXTEND_RESERVATION",
    "FIND_STALE",
    "HAS_STALE",
    "INSERT_RESERVATION",
    "LOCK_HELD",
    "MOVE_COUNTER",
    "READ_COUNTER",
    "RELEASE",
    "RESERVATION_STATE",
    "SETTLE",
    "charge_sql",
]

_CEILING: Final = str(COUNTER_CEILING)

#: Columns of one charged counter row, in VALUES order.
COUNTER_COLUMNS: Final = (
    "tenant",
    "cap_id",
    "scope",
    "cap_key",
    "period",
    "workflow",
    "run_id",
    "limit_usd",
    "limit_tokens",
    "limit_calls",
    "reserved_usd",
    "reserved_tokens",
    "reserved_calls",
    "alert_usd",
    "alert_tokens",
    "alert_calls",
    "alert_reservation",
    "last_reservation",
    "created_at",
    "updated_at",
)

#: What a counter read returns, to build a BudgetLine (index 17: the last reservation).
COUNTER_SELECT: Final = (
    "tenant, cap_id, scope, cap_key, period, workflow, run_id, "
    "limit_usd, spent_usd, reserved_usd, limit_tokens, spent_tokens, reserved_tokens, "
    "limit_calls, spent_calls, reserved_calls, alert_reservation, last_reservation"
)

_C = "ledger_counters"


def _total(dim: str) -> str:
    return f"{_C}.spent_{dim} + {_C}.reserved_{dim} + excluded.reserved_{dim}"


_FITS = " AND ".join(
    f"{_total(d)} <= COALESCE(excluded.limit_{d}, {_CEILING})" for d in ("usd", "tokens", "calls")
)
_CROSSES = " OR ".join(f"{_total(d)} >= excluded.alert_{d}" for d in ("usd", "tokens", "calls"))


@lru_cache(maxsize=64)
def charge_sql(rows: int) -> str:
    """The one statement that charges ``rows`` counters, each only if its cap still fits.

    New counters are inserted (the caller has checked the charge against the limit); existing
    ones are updated only where ``spent + reserved + charge <= limit`` on every dimension. Fewer
    changed rows than ``rows`` means a cap would be exceeded (the rows not changed are those
    whose ``last_reservation`` is not this one) and the caller rolls the transaction back.
    ``alert_reservation`` records the first reservation that made the counter reach its
    burn-alert threshold. (No RETURNING: on SQLite it costs more than reading back the few
    counters that have burn alerts.)
    """
    values = ", ".join(["(" + ", ".join("?" * len(COUNTER_COLUMNS)) + ")"] * rows)
    return (
        f"INSERT INTO {_C} ({', '.join(COUNTER_COLUMNS)}) VALUES {values} "
        "ON CONFLICT (tenant, cap_id, scope, cap_key, period) DO UPDATE SET "
        f"reserved_usd = {_C}.reserved_usd + excluded.reserved_usd, "
        f"reserved_tokens = {_C}.reserved_tokens + excluded.reserved_tokens, "
        f"reserved_calls = {_C}.reserved_calls + excluded.reserved_calls, "
        "limit_usd = excluded.limit_usd, "
        "limit_tokens = excluded.limit_tokens, "
        "limit_calls = excluded.limit_calls, "
        "alert_usd = excluded.alert_usd, "
        "alert_tokens = excluded.alert_tokens, "
        "alert_calls = excluded.alert_calls, "
        f"alert_reservation = CASE WHEN {_C}.alert_reservation IS NULL AND ({_CROSSES}) "
        f"THEN excluded.last_reservation ELSE {_C}.alert_reservation END, "
        "last_reservation = excluded.last_reservation, "
        "updated_at = excluded.updated_at "
        f"WHERE {_FITS}"
    )


_PK = "tenant = ? AND cap_id = ? AND scope = ? AND cap_key = ? AND period = ?"

READ_COUNTER: Final = f"SELECT {COUNTER_SELECT} FROM {_C} WHERE {_PK}"

#: Move a settled (or released) charge: ``reserved -= held``, ``spent += actual`` per dimension.
MOVE_COUNTER: Final = (
    f"UPDATE {_C} SET "
    "reserved_usd = reserved_usd - ?, spent_usd = spent_usd + ?, "
    "reserved_tokens = reserved_tokens - ?, spent_tokens = spent_tokens + ?, "
    "reserved_calls = reserved_calls - ?, spent_calls = spent_calls + ?, "
    f"updated_at = ? WHERE {_PK}"
)

#: Grow a held charge by (usd, tokens), only if the cap still fits: 0 rows changed means it does
#: not (the streaming top-up of ``Ledger.extend``).
EXTEND_COUNTER: Final = (
    f"UPDATE {_C} SET reserved_usd = reserved_usd + ?, reserved_tokens = reserved_tokens + ?, "
    f"updated_at = ? WHERE {_PK} "
    f"AND spent_usd + reserved_usd + ? <= COALESCE(limit_usd, {_CEILING}) "
    f"AND spent_tokens + reserved_tokens + ? <= COALESCE(limit_tokens, {_CEILING})"
)

#: Read (and on PostgreSQL, lock) a held reservation's charges before growing it.
LOCK_HELD: Final = (
    "UPDATE ledger_reservations SET tokens = tokens WHERE reservation_id = ? AND status = 'held' "
    "RETURNING tenant, charges"
)

#: Record the grown hold on a reservation that is still held.
EXTEND_RESERVATION: Final = (
    "UPDATE ledger_reservations SET amount_usd = amount_usd + ?, tokens = tokens + ?, "
    "charges = ? WHERE reservation_id = ? AND status = 'held' RETURNING tenant, amount_usd"
)

INSERT_RESERVATION: Final = (
    "INSERT INTO ledger_reservations (reservation_id, tenant, agent, workflow, run_id, call_id, "
    "target, status, amount_usd, tokens, calls, charges, created_at, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'held', ?, ?, ?, ?, ?, ?)"
)

#: Settle a held or expired reservation; ``expired_at`` tells which it was.
SETTLE: Final = (
    "UPDATE ledger_reservations SET status = 'settled', actual_usd = ?, actual_tokens = ?, "
    "finished_at = ? WHERE reservation_id = ? AND status IN ('held', 'expired') "
    "RETURNING tenant, charges, amount_usd, tokens, expired_at"
)

RELEASE: Final = (
    "UPDATE ledger_reservations SET status = 'released', actual_usd = 0, actual_tokens = 0, "
    "finished_at = ? WHERE reservation_id = ? AND status = 'held' "
    "RETURNING tenant, charges, amount_usd, tokens"
)

RESERVATION_STATE: Final = (
    "SELECT status, amount_usd, tokens, actual_usd, actual_tokens "
    "FROM ledger_reservations WHERE reservation_id = ?"
)

HAS_STALE: Final = (
    "SELECT 1 FROM ledger_reservations WHERE status = 'held' AND expires_at <= ? LIMIT 1"
)

FIND_STALE: Final = (
    "SELECT reservation_id FROM ledger_reservations WHERE status = 'held' AND expires_at <= ? "
    "ORDER BY expires_at LIMIT ?"
)

EXPIRE_ONE: Final = (
    "UPDATE ledger_reservations SET status = 'expired', expired_at = ?, finished_at = ? "
    "WHERE reservation_id = ? AND status = 'held' "
    "RETURNING charges, tenant, call_id, amount_usd, tokens, expires_at"
)
