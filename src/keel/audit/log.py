"""The audit log: an append-only, hash-chained sequence of records per chain, in the store.

Each record carries ``seq`` (1, 2, 3, ... per chain, no gaps), the hash of the record before it
(``prev_hash``) and its own hash over everything stored (see ``keel.audit.record``). Order is the
sequence number, never wall time: a clock that jumps backwards changes nothing but the ``ts`` that
is written down.

The chain head is read inside the same write transaction that inserts the record, after taking
the chain's lock (``tx.lock("audit:<chain>")``; an exclusive write transaction holds it already),
so threads and processes sharing one database append to one chain in turn and it stays gap-free.

Partitions: with ``partitions=N`` (N > 1) the log spreads its records over N independent chains,
``<chain>/0`` … ``<chain>/N-1``, choosing by a stable hash of the record's tenant and run (or
agent, for calls outside a run): all records of one run stay in one chain, in order, while
appends for different runs take different locks and proceed side by side on PostgreSQL.
``checkpoint()`` signs the head of every chain in one transaction, and ``keel audit verify``
checks every chain and every checkpoint. One chain (the default) suits SQLite, which has a single
writer anyway.

With a ``signer``, every ``checkpoint_every``-th record (and every ``checkpoint()`` call) also
stores a signed checkpoint; with a ``checkpoint_path`` each checkpoint is appended to that file
too, once the transaction that made it has committed. Checkpoints made by ``append()`` inside a
caller's transaction reach the file on the caller's next ``flush()`` (call it after committing) or
at the latest with the next append.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import threading
import time
from dataclasses import replace
from typing import Final

from keel.audit.checkpoint import Checkpoint, Signer, append_anchor
from keel.audit.record import (
    GENESIS_HASH,
    AuditEntry,
    Record,
    ascii_body,
    chain_hash,
    format_ts,
    stored_body,
)
from keel.core import Clock
from keel.errors import ConfigError, InternalError, InvalidRequestError, UsageError
from keel.store import Store, Transaction

__all__ = ["AuditLog"]

_HEAD: Final = "SELECT seq, hash FROM audit_records WHERE chain = ? ORDER BY seq DESC LIMIT 1"
_INSERT: Final = (
    "INSERT INTO audit_records (chain, seq, ts, kind, tenant, agent, run_id, tool, decision, "
    "rule_id, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_CHECKPOINT_AT: Final = (
    "SELECT chain, seq, hash, ts, key_id, signature FROM audit_checkpoints "
    "WHERE chain = ? AND seq = ?"
)
_INSERT_CHECKPOINT: Final = (
    "INSERT INTO audit_checkpoints (chain, seq, hash, ts, key_id, signature) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


class AuditLog:
    """Appends records to one chain of the audit log in ``store``.

    ``clock`` stamps entries that come without a ``ts`` and checkpoints. ``chain`` names the
    sequence this log appends to (one per deployment is the norm; separate chains are independent
    and verified separately). Thread-safe: share one instance; each append is one short
    transaction (or part of the caller's).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        signer: Signer | None = None,
        chain: str = "main",
        checkpoint_every: int = 1000,
        checkpoint_path: str | os.PathLike[str] | None = None,
        partitions: int = 1,
    ) -> None:
        if not isinstance(chain, str) or not chain:
            raise ConfigError(
                "the audit chain name must be a non-empty string", context={"key": "chain"}
            )
        if type(partitions) is not int or not 1 <= partitions <= _MAX_PARTITIONS:
            raise ConfigError(
                f"audit partitions must be a whole number from 1 to {_MAX_PARTITIONS}, "
                f"got {partitions!r}",
                context={"key": "audit_partitions"},
            )
        if checkpoint_every < 1:
            raise ConfigError(
                f"checkpoint_every must be at least 1, got {checkpoint_every}",
                context={"key": "checkpoint_every"},
            )
        if checkpoint_path is not None and signer is None:
            raise ConfigError(
                "an audit checkpoint_path needs a signer: only signed checkpoints are anchored",
                context={"key": "checkpoint_path"},
            )
        self.store = store
        self.clock = clock
        self.signer = signer
        self.chain = chain
        self.partitions = partitions
        #: Every chain this log appends to.
        self.chains: tuple[str, ...] = (
            (chain,) if partitions == 1 else tuple(f"{chain}/{i}" for i in range(partitions))
        )
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = checkpoint_path
        self._lock = threading.Lock()
        # Checkpoints made inside a transaction that may not have committed yet, with that
        # transaction and when they were made; written to the anchor file once their row is seen
        # committed (dropped once they are too old to belong to a live transaction).
        self._pending: list[tuple[object, Checkpoint, float]] = []

    def chain_for(self, entry: AuditEntry) -> str:
        """The chain ``entry`` is appended to (always the same one for one run)."""
        if self.partitions == 1:
            return self.chain
        route = f"{entry.tenant or ''}\x1f{entry.run_id or entry.agent or ''}".encode()
        index = int.from_bytes(hashlib.blake2b(route, digest_size=8).digest(), "big")
        return self.chains[index % self.partitions]

    # -- appending -----------------------------------------------------------------------------

    def append(self, tx: Transaction, entry: AuditEntry) -> Record:
        """Append ``entry`` inside ``tx``, an open ``store.write()`` transaction of this store.

        The record exists only if ``tx`` commits; if it rolls back, so does the record (and its
        sequence number is reused). With a ``checkpoint_path``, call ``flush()`` after the commit.
        An ``entry`` with its ``ts`` set (in UTC) is stored as given, without a copy. Raises
        ``InvalidRequestError`` if the body is not JSON-safe.
        """
        if self._pending:
            self._resolve_pending(tx)
        ts = entry.ts if entry.ts is not None else self.clock.now()
        ts = ts.astimezone(_dt.UTC)
        ts_text = format_ts(ts)
        body = stored_body(entry)
        chain = self.chain_for(entry)
        seq, prev_hash = self._next(tx, chain)
        try:
            digest = _entry_hash(chain, seq, ts_text, entry, body, prev_hash)
        except UnicodeEncodeError:
            body = ascii_body(body)  # lone surrogates in the body: store them escaped
            try:
                digest = _entry_hash(chain, seq, ts_text, entry, body, prev_hash)
            except UnicodeEncodeError:
                raise InvalidRequestError(
                    "an audit entry field holds text that is not valid Unicode"
                ) from None
        tx.execute(
            _INSERT,
            (
                chain,
                seq,
                ts_text,
                entry.kind,
                entry.tenant,
                entry.agent,
                entry.run_id,
                entry.tool,
                entry.decision,
                entry.rule_id,
                body,
                prev_hash,
                digest,
            ),
        )
        if self.signer is not None and seq % self.checkpoint_every == 0:
            self._checkpoint_in(tx, chain, seq, digest)
        if entry.ts is not ts:
            entry = replace(entry, ts=ts)
        return Record(entry=entry, chain=chain, seq=seq, prev_hash=prev_hash, hash=digest)

    def record(self, entry: AuditEntry) -> Record:
        """Append ``entry`` in a transaction of its own and commit it."""
        with self.store.write() as tx:
            record = self.append(tx, entry)
        self._write_committed(tx)
        return record

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head of every chain of this log now (see ``checkpoints``); return
        the newest of those checkpoints, or None if every chain is empty."""
        made = self.checkpoints()
        return max(made, key=lambda c: (c.ts, c.seq)) if made else None

    def checkpoints(self) -> list[Checkpoint]:
        """Sign the current head of every non-empty chain of this log, in one transaction.

        A head already checkpointed keeps its checkpoint (no second row). Needs a signer.
        """
        if self.signer is None:
            raise UsageError("AuditLog.checkpoint() needs a signer; construct the log with one")
        made: list[Checkpoint] = []
        with self.store.write(locks=tuple(_lock_name(c) for c in self.chains)) as tx:
            if self._pending:
                self._resolve_pending(tx)
            for chain in self.chains:
                seq, head_hash = self._next(tx, chain)
                if seq > 1:
                    made.append(self._checkpoint_in(tx, chain, seq - 1, head_hash))
        self._write_committed(tx)
        return made

    def flush(self) -> None:
        """Write checkpoints whose transaction has committed to the anchor file.

        Call it after committing a transaction in which you used ``append()`` (cheap when there
        is nothing to write); not from inside an open transaction of the same thread.
        """
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        done: list[Checkpoint] = []
        keep: list[tuple[object, Checkpoint, float]] = []
        with self.store.read() as tx:
            for item in pending:
                state = _state(tx, item[1])
                if state == "committed":
                    done.append(item[1])
                elif state == "absent" and not _stale(item):
                    keep.append(item)
        self._anchor(done)
        if keep:
            with self._lock:
                self._pending[:0] = keep

    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest record of this log's chain, or None if it is empty.

        With partitions, use ``heads()``: this log has no single chain.
        """
        if self.partitions != 1:
            raise UsageError("this audit log has several chains; use heads()")
        return self.heads().get(self.chain)

    def heads(self) -> dict[str, tuple[int, str]]:
        """``{chain: (seq, hash)}`` of the newest record of every non-empty chain of this log."""
        heads: dict[str, tuple[int, str]] = {}
        with self.store.read() as tx:
            for chain in self.chains:
                row = tx.fetchone(_HEAD, (chain,))
                if row is not None:
                    heads[chain] = (int(row[0]), str(row[1]))
        return heads

    # -- internals -----------------------------------------------------------------------------

    def _next(self, tx: Transaction, chain: str) -> tuple[int, str]:
        tx.lock(_lock_name(chain))
        row = tx.fetchone(_HEAD, (chain,))
        if row is None:
            return 1, GENESIS_HASH
        seq, prev_hash = row
        if type(seq) is not int or type(prev_hash) is not str:
            raise InternalError(
                f"the head of audit chain {chain!r} is corrupt (seq {seq!r}); "
                "run `keel audit verify` and restore the log",
                context={"chain": chain},
            )
        return seq + 1, prev_hash

    def _checkpoint_in(self, tx: Transaction, chain: str, seq: int, digest: str) -> Checkpoint:
        signer = self.signer
        assert signer is not None
        row = tx.fetchone(_CHECKPOINT_AT, (chain, seq))
        if row is not None:
            return Checkpoint(str(row[0]), int(row[1]), *(str(v) for v in row[2:]))
        checkpoint = Checkpoint.create(signer, chain, seq, digest, format_ts(self.clock.now()))
        tx.execute(
            _INSERT_CHECKPOINT,
            (
                checkpoint.chain,
                checkpoint.seq,
                checkpoint.hash,
                checkpoint.ts,
                checkpoint.key_id,
                checkpoint.signature,
            ),
        )
        if self.checkpoint_path is not None:
            with self._lock:
                self._pending.append((tx, checkpoint, time.monotonic()))
        return checkpoint

    def _resolve_pending(self, tx: Transaction) -> None:
        """Anchor the pending checkpoints of other transactions that have committed (their row
        is visible). Others may still be open (keyed transactions run side by side on
        PostgreSQL): they stay pending until seen committed, or until too old to be alive."""
        with self._lock:
            pending, self._pending = self._pending, []
        done: list[Checkpoint] = []
        keep: list[tuple[object, Checkpoint, float]] = []
        for item in pending:
            if item[0] is tx:
                keep.append(item)
                continue
            state = _state(tx, item[1])
            if state == "committed":
                done.append(item[1])
            elif state == "absent" and not _stale(item):
                keep.append(item)
        self._anchor(done)
        if keep:
            with self._lock:
                self._pending[:0] = keep

    def _write_committed(self, tx: Transaction) -> None:
        """``tx`` has committed: its pending checkpoints go to the anchor file."""
        if not self._pending:
            return
        with self._lock:
            mine = [item[1] for item in self._pending if item[0] is tx]
            self._pending = [item for item in self._pending if item[0] is not tx]
        self._anchor(mine)

    def _anchor(self, checkpoints: list[Checkpoint]) -> None:
        if checkpoints and self.checkpoint_path is not None:
            append_anchor(self.checkpoint_path, list(dict.fromkeys(checkpoints)))


def _entry_hash(chain: str, seq: int, ts: str, entry: AuditEntry, body: str, prev_hash: str) -> str:
    return chain_hash(
        chain,
        seq,
        ts,
        entry.kind,
        entry.tenant,
        entry.agent,
        entry.run_id,
        entry.tool,
        entry.decision,
        entry.rule_id,
        body,
        prev_hash,
    )


_MAX_PARTITIONS: Final = 1024

# A pending checkpoint not seen committed after this long belonged to a transaction that rolled
# back (no Keel write transaction stays open that long).
_PENDING_MAX_AGE: Final = 120.0


def _lock_name(chain: str) -> str:
    return f"audit:{chain}"


def _stale(item: tuple[object, Checkpoint, float]) -> bool:
    return time.monotonic() - item[2] > _PENDING_MAX_AGE


def _state(tx: Transaction, checkpoint: Checkpoint) -> str:
    """``committed`` (this very checkpoint is stored), ``superseded`` (another checkpoint holds
    its place: this one's transaction rolled back) or ``absent`` (not committed, or not yet)."""
    row = tx.fetchone(_CHECKPOINT_AT, (checkpoint.chain, checkpoint.seq))
    if row is None:
        return "absent"
    stored = Checkpoint(str(row[0]), int(row[1]), *(str(v) for v in row[2:]))
    return "committed" if stored == checkpoint else "superseded"
