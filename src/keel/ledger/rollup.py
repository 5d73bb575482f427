"""Hourly spend totals kept for hours that can no longer change, so long ranges read fast.

Spend over a range is a sum over ``ledger_reservations``; a month of a busy store is hundreds of
thousands of rows. An hour's sums stop changing once every reservation made in it has finished
for good: settled or released. (A held reservation will settle; an *expired* one may still be
settled late, when its call's outcome is reconciled.) Such an hour, at least
:data:`SETTLE_MARGIN` in the past (room for writers' clocks), is **closed**: its sums per tenant,
workflow and target are written once to ``ledger_rollup`` and the hour to ``ledger_rollup_hours``.

Nothing on the call path writes here. A reader (:func:`closed_cells`) closes what it can of its
range first, in one short write transaction (idempotent: two readers closing the same hour insert
the same rows once), then reads the closed hours from the rollup; the caller sums the remaining,
open hours from the reservations themselves. The answer equals a sum over the reservations.

Closed hours hold no holds by definition: their reserved totals are zero.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from typing import Any, Final

from keel.ledger.ledger import _ts
from keel.store import Row, Store

__all__ = ["SETTLE_MARGIN", "closed_cells", "open_spans"]

#: An hour closes no sooner than this after its end (writers' clocks may lag a little).
SETTLE_MARGIN: Final = _dt.timedelta(hours=1)
_HOUR: Final = _dt.timedelta(hours=1)
#: Sums of one hour, tenant, workflow and target, in :class:`keel.ledger.Spend`'s order.
_SUMS: Final = (
    "COALESCE(SUM(CASE WHEN status = 'settled' THEN actual_usd ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN status = 'settled' THEN actual_tokens ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN status = 'settled' THEN calls ELSE 0 END), 0), "
    "COUNT(*), "
    "COALESCE(SUM(CASE WHEN status = 'settled' AND (actual_usd > amount_usd "
    "OR actual_tokens > tokens) THEN 1 ELSE 0 END), 0)"
)
_FILL: Final = (
    "INSERT INTO ledger_rollup (hour, tenant, workflow, target, spent_usd, spent_tokens, "
    "spent_calls, reservations, overruns) "
    f"SELECT substr(created_at, 1, 13), tenant, COALESCE(workflow, ''), target, {_SUMS} "
    "FROM ledger_reservations WHERE created_at >= ? AND created_at < ? "
    "GROUP BY substr(created_at, 1, 13), tenant, COALESCE(workflow, ''), target "
    "ON CONFLICT (hour, tenant, workflow, target) DO NOTHING"
)


def _hour(moment: _dt.datetime) -> str:
    return _ts(moment)[:13]


def _hours(since: _dt.datetime, until: _dt.datetime) -> list[_dt.datetime]:
    """The whole hours inside ``[since, until)``, by their start."""
    first = since.astimezone(_dt.UTC).replace(minute=0, second=0, microsecond=0)
    if first < since:
        first += _HOUR
    found = []
    while first + _HOUR <= until:
        found.append(first)
        first += _HOUR
    return found


def _spans(hours: list[_dt.datetime]) -> Iterator[tuple[_dt.datetime, _dt.datetime]]:
    """Consecutive hours joined: ``[start, end)`` spans."""
    start = end = None
    for hour in hours:
        if end is not None and hour == end:
            end = hour + _HOUR
            continue
        if start is not None and end is not None:
            yield start, end
        start, end = hour, hour + _HOUR
    if start is not None and end is not None:
        yield start, end


def closed_cells(
    store: Store,
    *,
    since: _dt.datetime,
    until: _dt.datetime,
    now: _dt.datetime,
    where: str = "",
    params: tuple[Any, ...] = (),
    prefix: int = 13,
) -> tuple[list[Row], list[tuple[_dt.datetime, _dt.datetime]]]:
    """Close what can be closed of ``[since, until)``; return the closed hours' sums grouped by
    the first ``prefix`` characters of the hour (13: hour, 10: day), tenant, workflow (None
    outside workflows) and target — rows ``(bucket, tenant, workflow, target, spent_usd,
    spent_tokens, spent_calls, reservations, overruns)`` filtered by ``where`` (extra ``AND``
    conditions on tenant/workflow, with ``params``) — and the spans still to be summed from the
    reservations (the open hours, and the range's partial hours at either end)."""
    hours = _hours(since, until)
    closed: set[str] = set()
    if hours:
        closed = _close(store, hours, now)
    done = [h for h in hours if _hour(h) in closed]
    rows: list[Row] = []
    if done:
        sql = (
            f"SELECT substr(hour, 1, {prefix}), tenant, NULLIF(workflow, ''), target, "
            "SUM(spent_usd), SUM(spent_tokens), SUM(spent_calls), SUM(reservations), "
            "SUM(overruns) FROM ledger_rollup WHERE hour >= ? AND hour < ? "
            "AND hour IN (SELECT hour FROM ledger_rollup_hours WHERE hour >= ? AND hour < ?)"
            f"{where} GROUP BY substr(hour, 1, {prefix}), tenant, workflow, target"
        )
        bounds = (_hour(done[0]), _hour(done[-1] + _HOUR))
        with store.read() as tx:
            rows = tx.fetchall(sql, (*bounds, *bounds, *params))
    return rows, open_spans(since, until, done)


def open_spans(
    since: _dt.datetime, until: _dt.datetime, done: list[_dt.datetime]
) -> list[tuple[_dt.datetime, _dt.datetime]]:
    """``[since, until)`` less the closed hours ``done`` (sorted), as spans."""
    spans: list[tuple[_dt.datetime, _dt.datetime]] = []
    cursor = since
    for hour in done:
        if hour > cursor:
            spans.append((cursor, hour))
        cursor = max(cursor, hour + _HOUR)
    if cursor < until:
        spans.append((cursor, until))
    return spans


def _close(store: Store, hours: list[_dt.datetime], now: _dt.datetime) -> set[str]:
    """The closed hours among ``hours``, closing those that may be closed now."""
    first, last = _hour(hours[0]), _hour(hours[-1] + _HOUR)
    with store.read() as tx:
        known = {
            str(r[0])
            for r in tx.fetchall(
                "SELECT hour FROM ledger_rollup_hours WHERE hour >= ? AND hour < ?",
                (first, last),
            )
        }
    limit = now - SETTLE_MARGIN
    candidates = [h for h in hours if _hour(h) not in known and h + _HOUR <= limit]
    if not candidates:
        return known
    begin, end = _ts(candidates[0]), _ts(candidates[-1] + _HOUR)
    with store.write(locks=()) as tx:
        unsettled = {
            str(r[0])
            for r in tx.fetchall(
                "SELECT DISTINCT substr(created_at, 1, 13) FROM ledger_reservations "
                "WHERE status IN ('held', 'expired') AND created_at >= ? AND created_at < ?",
                (begin, end),
            )
        }
        closing = [h for h in candidates if _hour(h) not in unsettled]
        stamp = _ts(now)
        for start, stop in _spans(closing):
            tx.execute(_FILL, (_ts(start), _ts(stop)))
        for hour in closing:
            tx.execute(
                "INSERT INTO ledger_rollup_hours (hour, closed_at) VALUES (?, ?) "
                "ON CONFLICT (hour) DO NOTHING",
                (_hour(hour), stamp),
            )
    return known | {_hour(h) for h in closing}
