"""Idempotency keys: the same key with the same arguments runs once and replays its outcome.

A key is scoped to a tenant (the same key in two tenants is two keys). The first call claims the
key (``in_flight``) in its own short transaction; the outcome is stored in the same transaction
as the call's audit record. Rules, checked while holding the store's write lock:

- key unknown or expired → claim it and execute;
- same key, same fingerprint, succeeded → replay the stored outcome, do not execute;
- same key, same fingerprint, failed with a retryable error → claim again and execute;
- same key, same fingerprint, failed with a non-retryable error → replay the error;
- same key, different fingerprint → ``IdempotencyMismatch`` (never executes);
- same key in flight → ``IdempotencyInFlight`` (retry later).

The durable ``in_flight`` claim costs a commit before the tool runs, so it is taken only where it
prevents a second effect: for tools that change the world and do not honour idempotency keys.
For reads (no effect) and for tools that honour keys (the system of record dedupes on the key,
which Keel passes along), Keel checks for a recorded outcome, marks the key in flight in this
process, and stores the outcome with the call's audit record. A concurrent duplicate from
another process then reaches the tool with the same key and gets the tool's deduplicated result:
still one effect.
"""

from __future__ import annotations

import datetime as _dt
import threading
from typing import Any

from keel.canonical import parse_json
from keel.errors import IdempotencyInFlight, IdempotencyMismatch
from keel.store import Store, Transaction

__all__ = ["IdempotencyKeys"]

_MAX_KEY_LENGTH = 255


class IdempotencyKeys:
    def __init__(self, store: Store, *, retention: _dt.timedelta) -> None:
        self._store = store
        self._retention = retention
        self._local: set[tuple[str, str]] = set()
        self._local_lock = threading.Lock()

    # -- in-process in-flight marks (for keys that are not claimed durably) --------------------

    def mark(self, tenant: str, key: str) -> None:
        with self._local_lock:
            if (tenant, key) in self._local:
                raise IdempotencyInFlight(
                    "a call with this idempotency key is in flight",
                    context={"idempotency_key": key},
                )
            self._local.add((tenant, key))

    def unmark(self, tenant: str, key: str) -> None:
        with self._local_lock:
            self._local.discard((tenant, key))

    def lookup(
        self,
        tenant: str,
        key: str,
        fingerprint: str,
        now: _dt.datetime,
        *,
        replay_failures: bool = True,
    ) -> dict[str, Any] | None:
        """The recorded outcome to replay for ``key``, or None to execute. Does not claim.

        ``replay_failures=False`` (reads: running them again has no effect) replays only
        successes, so a failed read can be tried again under the same key."""
        _check_key(key)
        row = self._store.read_one(
            "SELECT fingerprint, status, outcome, expires_at, created_at FROM idempotency_keys "
            "WHERE tenant = ? AND idem_key = ?",
            (tenant, key),
        )
        if row is None or row[3] <= now.isoformat():
            return None
        stored = _replayable(row, fingerprint, key)
        if stored is not None and not replay_failures and not stored.get("ok"):
            return None
        return stored

    def store(
        self,
        tx: Transaction,
        tenant: str,
        key: str,
        fingerprint: str,
        call_id: str,
        outcome: str,
        now: _dt.datetime,
        *,
        succeeded: bool,
    ) -> None:
        """Record the outcome (canonical JSON) of an unclaimed key inside the record transaction."""
        tx.execute(
            "INSERT INTO idempotency_keys "
            "(tenant, idem_key, fingerprint, status, call_id, outcome, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint, "
            "status = excluded.status, call_id = excluded.call_id, outcome = excluded.outcome, "
            "created_at = excluded.created_at, expires_at = excluded.expires_at "
            "WHERE idempotency_keys.expires_at <= excluded.created_at "
            "OR idempotency_keys.status = 'failed'",
            (
                tenant,
                key,
                fingerprint,
                "succeeded" if succeeded else "failed",
                call_id,
                outcome,
                now.isoformat(),
                (now + self._retention).isoformat(),
            ),
        )

    def claim(
        self, tenant: str, key: str, fingerprint: str, call_id: str, now: _dt.datetime
    ) -> dict[str, Any] | None:
        """Claim ``key`` for a new execution (returns None) or return the recorded outcome."""
        _check_key(key)
        now_s = now.isoformat()
        # Read-then-claim under the key's own lock: two claimers of one key take turns, while
        # claims of different keys (and every other keyed writer) run side by side.
        with self._store.write(locks=(f"idem:{tenant}\x1f{key}",)) as tx:
            row = tx.fetchone(
                "SELECT fingerprint, status, outcome, expires_at, created_at FROM idempotency_keys "
                "WHERE tenant = ? AND idem_key = ?",
                (tenant, key),
            )
            if row is not None and row[3] > now_s:
                stored = _replayable(row, fingerprint, key)
                if stored is not None:
                    return stored
            tx.execute(
                "INSERT INTO idempotency_keys "
                "(tenant, idem_key, fingerprint, status, call_id, outcome, created_at, expires_at) "
                "VALUES (?, ?, ?, 'in_flight', ?, NULL, ?, ?) "
                "ON CONFLICT (tenant, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint, "
                "status = 'in_flight', call_id = excluded.call_id, outcome = NULL, "
                "created_at = excluded.created_at, expires_at = excluded.expires_at",
                (tenant, key, fingerprint, call_id, now_s, (now + self._retention).isoformat()),
            )
        return None

    @staticmethod
    def complete(tx: Transaction, tenant: str, key: str, outcome: str, *, succeeded: bool) -> None:
        """Store the outcome (canonical JSON) of a claimed key, inside the record transaction."""
        tx.execute(
            "UPDATE idempotency_keys SET status = ?, outcome = ? WHERE tenant = ? AND idem_key = ?",
            ("succeeded" if succeeded else "failed", outcome, tenant, key),
        )

    @staticmethod
    def release(tx: Transaction, tenant: str, key: str) -> None:
        """Give a claimed key back (the call was stopped before it executed)."""
        tx.execute(
            "DELETE FROM idempotency_keys "
            "WHERE tenant = ? AND idem_key = ? AND status = 'in_flight'",
            (tenant, key),
        )

    def release_stale(self, tenant: str, key: str) -> None:
        """Drop an in-flight claim left by an execution that died, once reconciliation proved
        the effect did not happen (so the call may run)."""
        with self._store.write() as tx:
            self.release(tx, tenant, key)

    def forget_failed(self, tx: Transaction, tenant: str, key: str) -> None:
        """Drop a recorded *failure* so the call may run again (an operator re-drives a run).
        Successful outcomes and in-flight claims are never dropped."""
        tx.execute(
            "DELETE FROM idempotency_keys WHERE tenant = ? AND idem_key = ? AND status = 'failed'",
            (tenant, key),
        )

    def purge_expired(self, now: _dt.datetime) -> int:
        with self._store.write() as tx:
            return tx.execute(
                "DELETE FROM idempotency_keys WHERE expires_at <= ? AND status != 'in_flight'",
                (now.isoformat(),),
            )


def _check_key(key: str) -> None:
    if not key or len(key) > _MAX_KEY_LENGTH:
        raise IdempotencyMismatch(
            f"an idempotency key is 1 to {_MAX_KEY_LENGTH} characters; this one has {len(key)}",
            code="invalid_idempotency_key",
        )


def _replayable(row: tuple[Any, ...], fingerprint: str, key: str) -> dict[str, Any] | None:
    """Apply the module's rules to a live stored row: the outcome to replay, None, or raise."""
    stored_fp, status, outcome, _expires, created = row
    if stored_fp != fingerprint:
        raise IdempotencyMismatch(
            "this idempotency key was already used with different arguments; "
            "use a new key for a different call",
            context={"idempotency_key": key},
        )
    if status == "in_flight":
        raise IdempotencyInFlight(
            f"a call with this idempotency key is in flight since {created}",
            context={"idempotency_key": key},
        )
    stored: dict[str, Any] = parse_json(outcome, what="stored outcome")
    if status == "succeeded" or not stored.get("retryable", False):
        return stored
    return None
