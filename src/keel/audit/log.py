"""The audit log: an append-only, hash-chained sequence of records per chain, in the store.

Each record carries ``seq`` (1, 2, 3, ... per chain, no gaps), the hash of the record before it
(``prev_hash``) and its own hash over everything stored (see ``keel.audit.record``). Order is the
sequence number, never wall time: a clock that jumps backwards changes nothing but the ``ts`` that
is written down.

The chain head is read inside the same write transaction that inserts the record, and a write
transaction holds the store's write lock from its start, so threads and processes sharing one
database append in turn and the chain stays gap-free.

With a ``signer``, every ``checkpoint_every``-th record (and every ``checkpoint()`` call) also
stores a signed checkpoint; with a ``checkpoint_path`` each checkpoint is appended to that file
too, once the transaction that made it has committed. Checkpoints made by ``append()`` inside a
caller's transaction reach the file on the caller's next ``flush()`` (call it after committing) or
at the latest with the next append.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
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
    ) -> None:
        if not isinstance(chain, str) or not chain:
            raise ConfigError(
                "the audit chain name must be a non-empty string", context={"key": "chain"}
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
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = checkpoint_path
        self._lock = threading.Lock()
        # Checkpoints made inside a transaction that may not have committed yet, with that
        # transaction; written to the anchor file once their row is seen committed.
        self._pending: list[tuple[object, Checkpoint]] = []

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
        seq, prev_hash = self._next(tx)
        chain = self.chain
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
            self._checkpoint_in(tx, seq, digest)
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
        """Sign the current head of the chain now; None if the chain is empty.

        Returns the existing checkpoint if the head is already checkpointed. Needs a signer.
        """
        if self.signer is None:
            raise UsageError("AuditLog.checkpoint() needs a signer; construct the log with one")
        with self.store.write() as tx:
            if self._pending:
                self._resolve_pending(tx)
            seq, head_hash = self._next(tx)
            if seq == 1:
                return None
            checkpoint = self._checkpoint_in(tx, seq - 1, head_hash)
        self._write_committed(tx)
        return checkpoint

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
        keep: list[tuple[object, Checkpoint]] = []
        with self.store.read() as tx:
            for owner, checkpoint in pending:
                if _committed(tx, checkpoint):
                    done.append(checkpoint)
                else:
                    keep.append((owner, checkpoint))
        self._anchor(done)
        if keep:
            with self._lock:
                self._pending[:0] = keep

    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest record of this log's chain, or None if it is empty."""
        with self.store.read() as tx:
            row = tx.fetchone(_HEAD, (self.chain,))
        return None if row is None else (int(row[0]), str(row[1]))

    # -- internals -----------------------------------------------------------------------------

    def _next(self, tx: Transaction) -> tuple[int, str]:
        row = tx.fetchone(_HEAD, (self.chain,))
        if row is None:
            return 1, GENESIS_HASH
        seq, prev_hash = row
        if type(seq) is not int or type(prev_hash) is not str:
            raise InternalError(
                f"the head of audit chain {self.chain!r} is corrupt (seq {seq!r}); "
                "run `keel audit verify` and restore the log",
                context={"chain": self.chain},
            )
        return seq + 1, prev_hash

    def _checkpoint_in(self, tx: Transaction, seq: int, digest: str) -> Checkpoint:
        signer = self.signer
        assert signer is not None
        row = tx.fetchone(_CHECKPOINT_AT, (self.chain, seq))
        if row is not None:
            return Checkpoint(str(row[0]), int(row[1]), *(str(v) for v in row[2:]))
        checkpoint = Checkpoint.create(signer, self.chain, seq, digest, format_ts(self.clock.now()))
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
                self._pending.append((tx, checkpoint))
        return checkpoint

    def _resolve_pending(self, tx: Transaction) -> None:
        """Inside a write transaction no other transaction is open: every pending checkpoint of
        another transaction has either committed (its row is there) or rolled back."""
        with self._lock:
            pending, self._pending = self._pending, []
        done: list[Checkpoint] = []
        keep: list[tuple[object, Checkpoint]] = []
        for owner, checkpoint in pending:
            if owner is tx:
                keep.append((owner, checkpoint))
            elif _committed(tx, checkpoint):
                done.append(checkpoint)
        self._anchor(done)
        if keep:
            with self._lock:
                self._pending[:0] = keep

    def _write_committed(self, tx: Transaction) -> None:
        """``tx`` has committed: its pending checkpoints go to the anchor file."""
        if not self._pending:
            return
        with self._lock:
            mine = [cp for owner, cp in self._pending if owner is tx]
            self._pending = [(owner, cp) for owner, cp in self._pending if owner is not tx]
        self._anchor(mine)

    def _anchor(self, checkpoints: list[Checkpoint]) -> None:
        if checkpoints and self.checkpoint_path is not None:
            append_anchor(self.checkpoint_path, checkpoints)


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


def _committed(tx: Transaction, checkpoint: Checkpoint) -> bool:
    row = tx.fetchone(_CHECKPOINT_AT, (checkpoint.chain, checkpoint.seq))
    return row is not None and row[2] == checkpoint.hash
