"""Searching the audit log: newest first, by the indexed fields."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from typing import Any, Final

from keel.audit.record import EntryKind, Record, format_ts, record_from_row
from keel.errors import InvalidRequestError
from keel.store import Store

__all__ = ["MAX_LIMIT", "iter_run_records", "query"]

MAX_LIMIT: Final = 10_000

_SELECT: Final = (
    "SELECT chain, seq, ts, kind, tenant, agent, run_id, tool, decision, rule_id, body, "
    "prev_hash, hash FROM audit_records"
)


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
    chain: str | None = None,
    before_seq: int | None = None,
) -> list[Record]:
    """Records matching every given filter, newest first, at most ``limit``.

    Order: within one chain, by ``seq`` (exact, whatever the clocks did); that is the order
    whenever the log has one chain, or the query names a ``chain`` or a ``run_id`` (a run's
    records share one chain) or pages with ``before_seq``. A partitioned log has no single
    sequence across its chains, so its other queries are ordered by the recorded ``ts`` (wall
    time, as each writer's clock had it), then ``seq``.

    ``since`` is inclusive and ``until`` exclusive; both compare the recorded ``ts``, which is
    wall time and may jump. ``before_seq`` pages backwards: pass the ``seq`` of the last record
    of the previous page (with ``chain`` or ``run_id`` when the log has several chains). Raises
    ``SchemaVersionError`` for a record written by a newer Keel.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(
            f"limit must be between 1 and {MAX_LIMIT}, got {limit}",
            context={"limit": limit, "max": MAX_LIMIT},
        )
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("run_id", run_id),
        ("agent", agent),
        ("tool", tool),
        ("tenant", tenant),
        ("decision", decision),
        ("kind", kind),
        ("chain", chain),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("ts >= ?")
        params.append(format_ts(since))
    if until is not None:
        clauses.append("ts < ?")
        params.append(format_ts(until))
    if before_seq is not None:
        clauses.append("seq < ?")
        params.append(before_seq)
    sql = _SELECT
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    within_chain = chain is not None or run_id is not None or before_seq is not None
    params.append(limit)
    with store.read() as tx:
        if not within_chain:  # two index look-ups: is there more than one chain at all?
            ends = tx.fetchone("SELECT MIN(chain), MAX(chain) FROM audit_records")
            within_chain = ends is None or ends[0] == ends[1]
        order = "seq DESC, chain" if within_chain else "ts DESC, seq DESC, chain"
        rows = tx.fetchall(f"{sql} ORDER BY {order} LIMIT ?", params)
    return [record_from_row(row) for row in rows]


def iter_run_records(store: Store, *, since: _dt.datetime | None = None) -> Iterator[Record]:
    """Every record made inside a run (``run_id`` set), oldest first, streamed.

    For history analysis (cost forecasts, reports): memory stays bounded however long the log.
    """
    sql = _SELECT + " WHERE run_id IS NOT NULL"
    params: list[Any] = []
    if since is not None:
        sql += " AND ts >= ?"
        params.append(format_ts(since))
    sql += " ORDER BY seq, chain"
    with store.read() as tx:
        for row in tx.iterate(sql, params):
            yield record_from_row(row)
