"""Spend over reservations: one total, or one line per tenant, agent, workflow, run or target.

Read by :meth:`keel.ledger.Ledger.spend_by` and :meth:`keel.ledger.Ledger.spend_grouped`. Settled
reservations count at the calls' prices (argument sums are not spend), held ones as holds.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any, Final, Literal, TypedDict

from keel.errors import InvalidRequestError
from keel.ledger._money import from_micros
from keel.ledger.records import Spend
from keel.store import Row, Store

__all__ = ["SPEND_GROUPS", "SpendFilter", "SpendGroup", "spend_rows"]

SpendGroup = Literal["tenant", "agent", "workflow", "run_id", "target"]
#: What spend can be grouped by (``target`` is the tool or model name).
SPEND_GROUPS: Final[tuple[SpendGroup, ...]] = ("tenant", "agent", "workflow", "run_id", "target")


class SpendFilter(TypedDict, total=False):
    """What a spend report counts: reservations of this tenant, agent, workflow, run and target
    (each None or absent: any), made at or after ``since`` and before ``until``."""

    tenant: str | None
    agent: str | None
    workflow: str | None
    run_id: str | None
    target: str | None
    since: _dt.datetime | None
    until: _dt.datetime | None


_TOTALS: Final = (
    "COALESCE(SUM(CASE WHEN status = 'settled' THEN actual_usd ELSE 0 END), 0) AS spent, "
    "COALESCE(SUM(CASE WHEN status = 'settled' THEN actual_tokens ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN status = 'settled' THEN calls ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN status = 'held' THEN amount_usd ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN status = 'held' THEN tokens ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN status = 'held' THEN calls ELSE 0 END), 0), "
    "COUNT(*), "
    "COALESCE(SUM(CASE WHEN status = 'settled' AND (actual_usd > amount_usd "
    "OR actual_tokens > tokens) THEN 1 ELSE 0 END), 0)"
)


def _spend(row: Sequence[Any]) -> Spend:
    return Spend(
        spent_usd=from_micros(int(row[0])),
        spent_tokens=int(row[1]),
        spent_calls=int(row[2]),
        reserved_usd=from_micros(int(row[3])),
        reserved_tokens=int(row[4]),
        reserved_calls=int(row[5]),
        reservations=int(row[6]),
        overruns=int(row[7]),
    )


def spend_rows(
    store: Store,
    by: SpendGroup | None,
    filters: Sequence[tuple[str, str | None]],
    since: str | None,
    until: str | None,
    limit: int = 1000,
) -> list[tuple[str | None, Spend]]:
    """Spend over reservations created in ``[since, until)`` (stored timestamp text) matching
    ``filters`` (column, value; None skips). ``by=None``: one line, key None. Otherwise one line
    per value of the column ``by``, most spent first, at most ``limit``."""
    if by is not None and by not in SPEND_GROUPS:
        raise InvalidRequestError(
            f"spend cannot be grouped by {by!r}; choose one of {', '.join(SPEND_GROUPS)}",
            context={"by": str(by), "accepted": list(SPEND_GROUPS)},
        )
    where: list[str] = []
    params: list[Any] = []
    for column, value in filters:
        if column not in SPEND_GROUPS:
            raise InvalidRequestError(f"spend cannot be filtered on {column!r}")
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append("created_at >= ?")
        params.append(since)
    if until is not None:
        where.append("created_at < ?")
        params.append(until)
    sql = f"SELECT {_TOTALS}" if by is None else f"SELECT {_TOTALS}, {by} AS grp"
    sql += " FROM ledger_reservations"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if by is not None:
        sql += f" GROUP BY {by} ORDER BY spent DESC, {by} IS NULL, {by} LIMIT ?"
        params.append(limit)
    with store.read() as tx:
        rows: list[Row] = tx.fetchall(sql, params)
    if by is None:
        return [(None, _spend(rows[0]))]
    return [(row[8], _spend(row)) for row in rows]
