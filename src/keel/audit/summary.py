"""The audit log at a glance, without reading it all: what the calls of a time window came to,
and the newest signed checkpoint of each chain.

Both are index reads: ``tally`` counts from the ``(ts, seq, kind, decision, tenant)`` index
alone, at most ``cap`` records (the newest of the window), so its cost is bounded however busy
the window was; ``last_checkpoints`` reads one row per chain.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Final

from keel.audit.checkpoint import Checkpoint
from keel.audit.record import format_ts
from keel.errors import InvalidRequestError
from keel.store import Store

__all__ = ["DEFAULT_CAP", "Tally", "last_checkpoints", "tally"]

#: Records a tally counts at most (the newest of its window).
DEFAULT_CAP: Final = 100_000
_MAX_CAP: Final = 1_000_000

_TALLY: Final = (
    "SELECT COUNT(*), "
    "SUM(CASE WHEN kind = 'call' THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN kind = 'decision' AND decision = 'deny' THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN kind = 'decision' AND decision IN ('require_approval', 'escalate') "
    "THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN kind = 'decision' AND decision = 'allow' THEN 1 ELSE 0 END) "
    "FROM (SELECT kind, decision FROM audit_records{hint} WHERE {where} "
    "ORDER BY ts DESC LIMIT ?) AS w"
)
# SQLite has no statistics to choose by: given a tenant it would read all of that tenant's
# records by the tenant index; the time window is almost always the narrower.
_BY_TIME: Final = {"sqlite": " INDEXED BY audit_records_ts"}
_LAST_CHECKPOINTS: Final = (
    "SELECT c.chain, c.seq, c.hash, c.ts, c.key_id, c.signature FROM audit_checkpoints c "
    "JOIN (SELECT chain, MAX(seq) AS seq FROM audit_checkpoints GROUP BY chain) m "
    "ON c.chain = m.chain AND c.seq = m.seq ORDER BY c.chain"
)


@dataclass(frozen=True, slots=True)
class Tally:
    """What the records of a time window say about governed calls (see ``keel.audit.record``
    for the kinds).

    ``records`` counts every record read, ``control`` ones included (operator actions, run
    transitions). Of the calls: ``executed`` ran (``call`` records; whether they failed is in
    the body), ``refused`` were denied (by policy or any guard), ``held`` waited for an approval
    or an escalation, ``answered`` were allowed but not executed (a cached model answer, an
    idempotent replay, shadow mode). ``capped``: the window held ``cap`` records or more, and
    these are the counts of the newest ``cap``.
    """

    since: _dt.datetime
    until: _dt.datetime | None
    records: int
    executed: int
    refused: int
    held: int
    answered: int
    capped: bool

    @property
    def calls(self) -> int:
        """Governed calls decided in the window (every record but ``control`` ones)."""
        return self.executed + self.refused + self.held + self.answered

    @property
    def control(self) -> int:
        return self.records - self.calls


def tally(
    store: Store,
    since: _dt.datetime,
    *,
    until: _dt.datetime | None = None,
    tenant: str | None = None,
    cap: int = DEFAULT_CAP,
) -> Tally:
    """Count the records of ``[since, until)`` (of ``tenant`` only, if given) by what became of
    the call: see :class:`Tally`. Reads at most ``cap`` index entries, newest first."""
    if not 1 <= cap <= _MAX_CAP:
        raise InvalidRequestError(
            f"cap must be between 1 and {_MAX_CAP}, got {cap}", context={"cap": cap}
        )
    clauses, params = ["ts >= ?"], [format_ts(since)]
    if until is not None:
        clauses.append("ts < ?")
        params.append(format_ts(until))
    if tenant is not None:
        clauses.append("tenant = ?")
        params.append(tenant)
    sql = _TALLY.format(hint=_BY_TIME.get(store.dialect, ""), where=" AND ".join(clauses))
    row = store.read_one(sql, [*params, cap])
    records, executed, refused, held, answered = (int(v or 0) for v in row or (0,) * 5)
    return Tally(
        since=since,
        until=until,
        records=records,
        executed=executed,
        refused=refused,
        held=held,
        answered=answered,
        capped=records >= cap,
    )


def last_checkpoints(store: Store) -> list[Checkpoint]:
    """The newest signed checkpoint of every chain that has one, by chain name. Read from the
    store as is: ``Checkpoint.check`` tells whether its signature holds, and only a full
    verification (``verify_chain``) whether the log still agrees with it."""
    with store.read() as tx:
        rows = tx.fetchall(_LAST_CHECKPOINTS)
    return [
        Checkpoint(str(chain), int(seq), str(hash_), str(ts), str(key_id), str(signature))
        for chain, seq, hash_, ts, key_id, signature in rows
    ]
