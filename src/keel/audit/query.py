"""Searching the audit log: newest first, by the indexed fields, a page at a time.

A page ends at a :class:`Cursor` (the last record's time, seq and chain); ``query(after=...)``
continues from it, and ``iter_query`` streams every match page by page, so neither holds more
than a page in memory nor keeps a transaction open between pages.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from keel.audit.record import EntryKind, Record, format_ts, record_from_row
from keel.errors import InvalidRequestError
from keel.store import Store, Transaction

__all__ = ["MAX_LIMIT", "Cursor", "iter_query", "iter_run_records", "query", "record_at"]

MAX_LIMIT: Final = 10_000
_MAX_SEQ: Final = 2**63 - 1
_MAX_CURSOR: Final = 1024

_SELECT: Final = (
    "SELECT chain, seq, ts, kind, tenant, agent, run_id, tool, decision, rule_id, body, "
    "prev_hash, hash FROM audit_records"
)

# Two sub-selects: SQLite answers a lone MIN() or MAX() from the index's ends, but scans the
# whole index for ``SELECT MIN(chain), MAX(chain)``.
_CHAIN_ENDS: Final = (
    "SELECT (SELECT MIN(chain) FROM audit_records), (SELECT MAX(chain) FROM audit_records)"
)
_ANY_SINCE: Final = "SELECT 1 FROM audit_records WHERE ts >= ? LIMIT 1"
#: The filters that compare one column for equality, the likely narrowest first.
_EQUAL: Final = ("run_id", "rule_id", "agent", "tool", "tenant", "decision", "kind", "chain")


def _bad_cursor(why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"the cursor is not one this server gave out ({why}); start again without a cursor",
        code="invalid_cursor",
    )


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page of :func:`query` results ended: the last record's stored ``ts`` text, its
    ``seq`` and ``chain``. ``encode()`` gives an opaque URL-safe token; ``decode`` reads one back
    (``InvalidRequestError``, code ``invalid_cursor``, for anything else)."""

    ts: str
    seq: int
    chain: str

    @classmethod
    def after(cls, record: Record) -> Cursor:
        return cls(format_ts(record.ts), record.seq, record.chain)

    def encode(self) -> str:
        raw = json.dumps([self.ts, self.seq, self.chain], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        if len(text) > _MAX_CURSOR:
            raise _bad_cursor("too long")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data = json.loads(raw)
        except (binascii.Error, ValueError):
            raise _bad_cursor("not an encoded position") from None
        if not (
            isinstance(data, list)
            and len(data) == 3
            and isinstance(data[0], str)
            and type(data[1]) is int
            and isinstance(data[2], str)
        ):
            raise _bad_cursor("not a position")
        ts, seq, chain = data
        if not 1 <= seq <= _MAX_SEQ or "\x00" in chain or "\x00" in ts:
            raise _bad_cursor("out of range")
        try:
            moment = _dt.datetime.fromisoformat(ts)
        except ValueError:
            raise _bad_cursor("not a time") from None
        if moment.tzinfo is None:
            raise _bad_cursor("not a UTC time")
        return cls(ts, seq, chain)


def query(
    store: Store,
    run_id: str | None = None,
    agent: str | None = None,
    tool: str | None = None,
    tenant: str | None = None,
    since: _dt.datetime | None = None,
    until: _dt.datetime | None = None,
    decision: str | None = None,
    limit: int = 100,
    *,
    kind: EntryKind | None = None,
    rule_id: str | None = None,
    chain: str | None = None,
    before_seq: int | None = None,
    after: Cursor | None = None,
) -> list[Record]:
    """Records matching every given filter, newest first, at most ``limit``.

    Filters compare exactly: ``rule_id`` is the id of the rule that decided, as recorded: a
    policy rule's id, ``kill:<scope>:<target>`` for a kill switch, ``breaker:<target>`` for an
    open circuit, ``<stage>:<code>`` for another guard's refusal, ``run.<transition>`` for a
    run's control records; ``decision`` the verdict's decision or a control action.

    Speed: every filter has an index; in a log of one chain it yields a filter's newest matches
    first, in order, and a time range is first narrowed to the seq numbers it spans (see
    ``_seq_bounds``). A search by several filters reads one filter's matches, newest first,
    until the others have matched ``limit`` times.

    Order: within one chain, by ``seq`` (exact, whatever the clocks did); that is the order
    whenever the log has one chain, or the query names a ``chain`` or a ``run_id`` (a run's
    records share one chain) or pages with ``before_seq``. A partitioned log has no single
    sequence across its chains, so its other queries are ordered by the recorded ``ts`` (wall
    time, as each writer's clock had it), then ``seq``.

    ``since`` is inclusive and ``until`` exclusive; both compare the recorded ``ts``, which is
    wall time and may jump. ``before_seq`` pages backwards: pass the ``seq`` of the last record
    of the previous page (with ``chain`` or ``run_id`` when the log has several chains). ``after``
    continues after the record a :class:`Cursor` names, in whichever of the two orders applies
    (any filters; if a second chain appears between pages, the next page follows ``ts`` order).
    Raises ``SchemaVersionError`` for a record written by a newer Keel.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(
            f"limit must be between 1 and {MAX_LIMIT}, got {limit}",
            context={"limit": limit, "max": MAX_LIMIT},
        )
    values = (run_id, rule_id, agent, tool, tenant, decision, kind, chain)
    return _search(
        store,
        dict(zip(_EQUAL, values, strict=True)),
        since=since,
        until=until,
        before_seq=before_seq,
        limit=limit,
        after=after,
        span=_Span(),
    )


def _search(
    store: Store,
    equal: dict[str, Any],
    *,
    since: _dt.datetime | None,
    until: _dt.datetime | None,
    before_seq: int | None,
    limit: int,
    after: Cursor | None,
    span: _Span,
) -> list[Record]:
    """``query``, with the seq bounds of its time range kept in ``span`` from page to page."""
    clauses: list[str] = []
    params: list[Any] = []
    given = [column for column in _EQUAL if equal.get(column) is not None]
    for column in given:
        # SQLite has no statistics to choose an index by, and might read every "call" record
        # by kind to find one rule's: ``+column`` keeps it to the index of the filter most
        # likely to be narrow (the first given, in _EQUAL's order). PostgreSQL chooses well.
        plain = column == given[0] or column == "chain" or store.dialect != "sqlite"
        clauses.append(f"{'' if plain else '+'}{column} = ?")
        params.append(equal[column])
    if since is not None:
        clauses.append("ts >= ?")
        params.append(format_ts(since))
    if until is not None:
        clauses.append("ts < ?")
        params.append(format_ts(until))
    if before_seq is not None:
        clauses.append("seq < ?")
        params.append(before_seq)
    chain, run_id = equal["chain"], equal["run_id"]
    within_chain = chain is not None or run_id is not None or before_seq is not None
    with store.read() as tx:
        if chain is None and run_id is None:  # two index look-ups: how many chains are there?
            first, last = tx.fetchone(_CHAIN_ENDS) or (None, None)
            if first is not None and first == last:
                # The one chain, named: each (column, chain, seq) index then gives the order.
                within_chain = True
                clauses.append("chain = ?")
                params.append(first)
                if until is not None:
                    if not span.known:
                        span.bounds, span.known = _seq_bounds(tx, since, until), True
                    bounds = span.bounds
                    if bounds is None:
                        return []
                    clauses.append("seq BETWEEN ? AND ?")
                    params += bounds
                elif since is not None and tx.fetchone(_ANY_SINCE, (format_ts(since),)) is None:
                    return []  # else newest first finds the matches at the top
            elif first is None:
                within_chain = True
        if after is not None:  # past the cursor's record, in the order below
            by_seq = "(seq < ? OR (seq = ? AND chain > ?))"
            if within_chain:
                clauses.append(by_seq)
                params += [after.seq, after.seq, after.chain]
            else:
                clauses.append(f"(ts < ? OR (ts = ? AND {by_seq}))")
                params += [after.ts, after.ts, after.seq, after.seq, after.chain]
        sql = _SELECT
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        order = "seq DESC, chain" if within_chain else "ts DESC, seq DESC, chain"
        rows = tx.fetchall(f"{sql} ORDER BY {order} LIMIT ?", [*params, limit])
    return [record_from_row(row) for row in rows]


class _Span:
    """The seq bounds of a time range in a log of one chain, once found (``known``): a stream
    of pages reads them once, since the records of a past range never move."""

    __slots__ = ("bounds", "known")

    def __init__(self) -> None:
        self.bounds: tuple[int, int] | None = None
        self.known = False


def _seq_bounds(
    tx: Transaction, since: _dt.datetime | None, until: _dt.datetime
) -> tuple[int, int] | None:
    """The lowest and highest ``seq`` recorded in ``[since, until)`` (a log of one chain), from
    the ``(ts, seq, …)`` index alone; None if there are none. The query then reads that stretch
    of the chain newest first, instead of every newer record before the first match."""
    sql = "SELECT MIN(seq), MAX(seq) FROM audit_records WHERE ts < ?"
    params = [format_ts(until)]
    if since is not None:
        sql += " AND ts >= ?"
        params.append(format_ts(since))
    row = tx.fetchone(sql, params)
    if row is None or row[0] is None:
        return None
    return int(row[0]), int(row[1])


def iter_query(store: Store, *, page: int = 500, **filters: Any) -> Iterator[Record]:
    """Every record :func:`query` would return with these keyword ``filters`` and no limit, in
    its order, streamed: one short read of ``page`` records at a time, so memory stays bounded
    and no transaction is open between pages (the consumer may switch threads). Records appended
    while it runs are newer than its first page and are not included."""
    unknown = sorted(set(filters) - {*_EQUAL, "since", "until", "before_seq"})
    if unknown:
        raise TypeError(f"iter_query() got unexpected filters: {', '.join(unknown)}")
    if not 1 <= page <= MAX_LIMIT:
        raise InvalidRequestError(f"page must be between 1 and {MAX_LIMIT}, got {page}")
    equal = {name: filters.get(name) for name in _EQUAL}
    span = _Span()  # a time range's seq bounds: read for the first page only
    after: Cursor | None = None
    while True:
        records = _search(
            store,
            equal,
            since=filters.get("since"),
            until=filters.get("until"),
            before_seq=filters.get("before_seq"),
            limit=page,
            after=after,
            span=span,
        )
        yield from records
        if len(records) < page:
            return
        after = Cursor.after(records[-1])


def record_at(store: Store, chain: str, seq: int) -> Record | None:
    """The record at ``seq`` in ``chain``, or None."""
    if not 1 <= seq <= _MAX_SEQ:
        return None
    row = store.read_one(_SELECT + " WHERE chain = ? AND seq = ?", (chain, seq))
    return None if row is None else record_from_row(row)


def iter_run_records(
    store: Store, *, since: _dt.datetime | None = None, tenant: str | None = None
) -> Iterator[Record]:
    """Every record made inside a run (``run_id`` set), oldest first, streamed; only those of
    ``tenant`` if given (a caller of another tenant may name any run id or workflow).

    For history analysis (cost forecasts, reports): memory stays bounded however long the log.
    """
    sql = _SELECT + " WHERE run_id IS NOT NULL"
    params: list[Any] = []
    if tenant is not None:
        sql += " AND tenant = ?"
        params.append(tenant)
    if since is not None:
        sql += " AND ts >= ?"
        params.append(format_ts(since))
    sql += " ORDER BY seq, chain"
    with store.read() as tx:
        for row in tx.iterate(sql, params):
            yield record_from_row(row)
