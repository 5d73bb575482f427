"""Spend over time and by dimension, and the budget counters that go with it (for dashboards).

:func:`spend_breakdown` reads reservations made in ``[since, until)`` in **one** grouped query:
one cell per time bucket (UTC hour or day), tenant, workflow and target, each with the same
totals as :meth:`keel.ledger.Ledger.spend_by` (settled spend at the calls' prices, holds,
counts). From that the :class:`SpendBreakdown` answers, exactly and without another query, the
series per bucket (empty buckets as zero), the total, and the lines per tenant, workflow or
target (as :meth:`keel.ledger.Ledger.spend_grouped` orders them); :meth:`SpendBreakdown.where`
narrows it to one tenant or workflow. The number of cells is bounded (``max_cells``): a store
with more distinct groups in the window is refused with a message, never summed partly.

:func:`cap_lines` reads the budget counters a spend chart compares with: caps counted per
tenant and/or workflow with a USD limit (not per run, agent or argument: those have one counter
per run or key), either without a window or of the UTC days of a range; bounded by ``limit``.

Timestamps in the store are fixed-width UTC text (``2026-01-05T09:00:00.000000+00:00``), so a
bucket is a prefix of it (``substr``, the same on SQLite and PostgreSQL). Money is exact: integer
micro-dollars summed in SQL and Python, Decimal USD out.

Thread safety: the functions only read; the answers are immutable.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from keel.errors import InvalidRequestError
from keel.ledger import _sql, rollup
from keel.ledger._spend import _TOTALS, _spend
from keel.ledger.ledger import _line, _ts
from keel.ledger.records import BudgetLine, Spend
from keel.store import Store

__all__ = [
    "BUCKETS",
    "MAX_BUCKETS",
    "BreakdownDimension",
    "Bucket",
    "SpendBreakdown",
    "SpendCell",
    "bucket_floor",
    "bucket_size",
    "bucket_starts",
    "cap_lines",
    "spend_breakdown",
]

Bucket = Literal["hour", "day"]
#: The sizes a series can be bucketed by (UTC calendar hours or days).
BUCKETS: Final[tuple[Bucket, ...]] = ("hour", "day")
BreakdownDimension = Literal["tenant", "workflow", "target"]
#: At most this many buckets in one series (62 days of hours).
MAX_BUCKETS: Final = 24 * 62

_STEP: Final[dict[Bucket, _dt.timedelta]] = {
    "hour": _dt.timedelta(hours=1),
    "day": _dt.timedelta(days=1),
}
#: The prefix of a stored timestamp that names its bucket: ``2026-01-05T09`` / ``2026-01-05``.
_PREFIX: Final[dict[Bucket, int]] = {"hour": 13, "day": 10}
_ZERO: Final = (0, 0, 0, 0, 0, 0, 0, 0)
#: More open spans than this in a range are summed in one pass over the whole range.
_MAX_SPANS: Final = 16
#: Counter scopes whose key is the tenant and/or the workflow (one counter per key and day).
_SHARED_SCOPES: Final = ("tenant", "workflow", "tenant+workflow", "workflow+tenant")


def _bucket(bucket: str) -> Bucket:
    if bucket not in BUCKETS:
        raise InvalidRequestError(
            f"a spend series is bucketed by {' or '.join(BUCKETS)}, not {bucket!r}",
            context={"bucket": str(bucket), "accepted": list(BUCKETS)},
        )
    return bucket


def bucket_size(bucket: Bucket) -> _dt.timedelta:
    """One hour or one day."""
    return _STEP[_bucket(bucket)]


def bucket_floor(moment: _dt.datetime, bucket: Bucket) -> _dt.datetime:
    """The start (UTC) of the hour or day holding ``moment`` (timezone-aware)."""
    utc = _dt.datetime.fromisoformat(_ts(moment))
    if _bucket(bucket) == "hour":
        return utc.replace(minute=0, second=0, microsecond=0)
    return utc.replace(hour=0, minute=0, second=0, microsecond=0)


def bucket_starts(since: _dt.datetime, until: _dt.datetime, bucket: Bucket) -> list[_dt.datetime]:
    """Every bucket meeting ``[since, until)``, by its start (UTC); at most :data:`MAX_BUCKETS`."""
    step = _STEP[_bucket(bucket)]
    first = bucket_floor(since, bucket)
    if until <= since:
        return []
    count = -((first - until) // step)  # ceil((until - first) / step)
    if count > MAX_BUCKETS:
        raise InvalidRequestError(
            f"a spend series has at most {MAX_BUCKETS} buckets; this range has {count} "
            f"{bucket}s — choose a shorter range or a larger bucket",
            context={"buckets": count, "limit": MAX_BUCKETS},
        )
    return [first + step * i for i in range(count)]


def _parse_bucket(text: str) -> _dt.datetime:
    if len(text) == _PREFIX["hour"]:
        return _dt.datetime.fromisoformat(f"{text}:00:00+00:00")
    return _dt.datetime.fromisoformat(f"{text}T00:00:00+00:00")


@dataclass(frozen=True, slots=True)
class SpendCell:
    """Spend of one bucket, tenant, workflow (None: calls outside a workflow) and target, as
    integer micro-dollars and counts in the order of :class:`keel.ledger.Spend`'s fields."""

    start: _dt.datetime
    tenant: str
    workflow: str | None
    target: str
    totals: tuple[int, int, int, int, int, int, int, int]

    @property
    def spend(self) -> Spend:
        return _spend(self.totals)

    def key(self, dimension: BreakdownDimension) -> str | None:
        value: str | None = getattr(self, dimension)
        return value


def _add(into: list[int], totals: Sequence[int]) -> None:
    for i, value in enumerate(totals):
        into[i] += value


@dataclass(frozen=True, slots=True)
class SpendBreakdown:
    """Spend over ``[since, until)`` in cells (see the module docstring); every figure it gives
    is summed exactly from the cells."""

    bucket: Bucket
    since: _dt.datetime
    until: _dt.datetime
    cells: tuple[SpendCell, ...]

    def where(self, *, tenant: str | None = None, workflow: str | None = None) -> SpendBreakdown:
        """Only the cells of ``tenant`` and ``workflow`` (None: any)."""
        cells = tuple(
            c
            for c in self.cells
            if (tenant is None or c.tenant == tenant)
            and (workflow is None or c.workflow == workflow)
        )
        return SpendBreakdown(self.bucket, self.since, self.until, cells)

    def starts(self) -> list[_dt.datetime]:
        """Every bucket of the range, by its start."""
        return bucket_starts(self.since, self.until, self.bucket)

    def series(self) -> list[tuple[_dt.datetime, Spend]]:
        """One line per bucket of the range, in time order; a bucket without calls is zero."""
        sums: dict[_dt.datetime, list[int]] = {start: list(_ZERO) for start in self.starts()}
        for cell in self.cells:
            _add(sums.setdefault(cell.start, list(_ZERO)), cell.totals)
        return [(start, _spend(sums[start])) for start in sorted(sums)]

    def total(self) -> Spend:
        """The whole range (equal to ``Ledger.spend_by`` with the same filters)."""
        into = list(_ZERO)
        for cell in self.cells:
            _add(into, cell.totals)
        return _spend(into)

    def by(
        self, dimension: BreakdownDimension, *, limit: int = 1000
    ) -> list[tuple[str | None, Spend]]:
        """One line per value of ``dimension``, most spent first (then None last, then by
        value), at most ``limit``: what ``Ledger.spend_grouped`` answers for the same range."""
        if dimension not in ("tenant", "workflow", "target"):
            raise InvalidRequestError(
                f"a spend breakdown has tenant, workflow and target, not {dimension!r}"
            )
        sums: dict[str | None, list[int]] = {}
        for cell in self.cells:
            _add(sums.setdefault(cell.key(dimension), list(_ZERO)), cell.totals)
        ordered = sorted(sums.items(), key=lambda kv: (-kv[1][0], kv[0] is None, kv[0] or ""))
        return [(key, _spend(totals)) for key, totals in ordered[:limit]]


def spend_breakdown(
    store: Store,
    *,
    since: _dt.datetime,
    until: _dt.datetime,
    bucket: Bucket = "day",
    tenant: str | None = None,
    workflow: str | None = None,
    max_cells: int = 50_000,
    now: _dt.datetime | None = None,
) -> SpendBreakdown:
    """Spend of reservations made in ``[since, until)`` (of ``tenant`` and ``workflow`` if
    given), per ``bucket`` (UTC ``hour`` or ``day``), tenant, workflow and target.

    With ``now``, hours that can no longer change are read from (and first written to) the
    hourly rollup (:mod:`keel.ledger.rollup`) and only the rest from the reservations: the same
    answer, fast over long ranges. Without it, one grouped query over the reservations.

    Raises InvalidRequestError (fix the input) for an unknown bucket, a range of more than
    :data:`MAX_BUCKETS` buckets, or more than ``max_cells`` cells."""
    size = _bucket(bucket)
    bucket_starts(since, until, size)  # checks the range's size
    width = _PREFIX[size]
    filters: list[str] = []
    values: list[Any] = []
    for column, value in (("tenant", tenant), ("workflow", workflow)):
        if value is not None:
            filters.append(f" AND {column} = ?")
            values.append(value)
    spans = [(since, until)]
    sums: dict[tuple[str, str, str | None, str], list[int]] = {}
    if now is not None:
        closed, spans = rollup.closed_cells(
            store,
            since=since,
            until=until,
            now=now,
            where="".join(filters),
            params=tuple(values),
            prefix=width,
        )
        for row in closed:
            key = (str(row[0]), str(row[1]), row[2], str(row[3]))
            totals = (int(row[4]), int(row[5]), int(row[6]), 0, 0, 0, int(row[7]), int(row[8]))
            _add(sums.setdefault(key, list(_ZERO)), totals)
    if spans:
        if len(spans) > _MAX_SPANS:  # scattered open hours: one pass over the whole range
            spans = [(spans[0][0], spans[-1][1])]
        ranges = " OR ".join("(created_at >= ? AND created_at < ?)" for _ in spans)
        prefix = f"substr(created_at, 1, {width})"
        sql = (
            f"SELECT {prefix}, tenant, workflow, target, {_TOTALS} FROM ledger_reservations "
            f"WHERE ({ranges}){''.join(filters)} GROUP BY {prefix}, tenant, workflow, target "
            "LIMIT ?"
        )
        params = [_ts(moment) for span in spans for moment in span]
        with store.read() as tx:
            rows = tx.fetchall(sql, [*params, *values, max_cells + 1])
        for row in rows:
            key = (str(row[0]), str(row[1]), row[2], str(row[3]))
            _add(sums.setdefault(key, list(_ZERO)), [int(v) for v in row[4:12]])
    if len(sums) > max_cells:
        raise InvalidRequestError(
            f"spend in this range falls into more than {max_cells} groups of {bucket}, tenant, "
            "workflow and target; choose a tenant or workflow, or a shorter range",
            context={"limit": max_cells},
        )
    cells = tuple(
        SpendCell(
            start=_parse_bucket(start),
            tenant=tenant_,
            workflow=workflow_,
            target=target,
            totals=(
                totals[0],
                totals[1],
                totals[2],
                totals[3],
                totals[4],
                totals[5],
                totals[6],
                totals[7],
            ),
        )
        for (start, tenant_, workflow_, target), totals in sorted(
            sums.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "", kv[0][3])
        )
    )
    return SpendBreakdown(size, since, until, cells)


def cap_lines(
    store: Store,
    *,
    first_day: _dt.date,
    last_day: _dt.date,
    tenant: str | None = None,
    workflow: str | None = None,
    limit: int = 200,
) -> list[BudgetLine]:
    """Counters of caps kept per tenant and/or workflow that have a USD limit: those without a
    window, and those of the UTC days ``first_day`` to ``last_day``. With ``workflow``, the
    tenant-wide counters and that workflow's. Ordered like :meth:`Ledger.report`, at most
    ``limit`` (each a :class:`keel.ledger.BudgetLine`)."""
    scopes = ", ".join(f"'{scope}'" for scope in _SHARED_SCOPES)
    where = [
        "run_id IS NULL",
        "limit_usd IS NOT NULL",
        f"scope IN ({scopes})",
        "(period = '' OR (period >= ? AND period <= ?))",
    ]
    params: list[Any] = [first_day.isoformat(), last_day.isoformat()]
    if tenant is not None:
        where.append("tenant = ?")
        params.append(tenant)
    if workflow is not None:
        where.append("(scope = 'tenant' OR workflow = ?)")
        params.append(workflow)
    params.append(limit)
    sql = (
        f"SELECT {_sql.COUNTER_SELECT} FROM ledger_counters WHERE {' AND '.join(where)} "
        "ORDER BY tenant, scope, cap_key, cap_id, period LIMIT ?"
    )
    with store.read() as tx:
        rows = tx.fetchall(sql, params)
    return [_line(row[0], row) for row in rows]
