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
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from keel.canonical import canonical_json, parse_json
from keel.errors import IdempotencyInFlight, IdempotencyMismatch
from keel.store import Store, Transaction

__all__ = ["IdempotencyKeys"]

_MAX_KEY_LENGTH = 255


class IdempotencyKeys:
    def __init__(self, store: Store, *, retention: _dt.timedelta) -> None:
        self._store = store
        self._retention = retention

    def claim(
        self, tenant: str, key: str, fingerprint: str, call_id: str, now: _dt.datetime
    ) -> dict[str, Any] | None:
        """Claim ``key`` for a new execution (returns None) or return the recorded outcome."""
        if len(key) > _MAX_KEY_LENGTH:
            raise IdempotencyMismatch(
                f"idempotency key is {len(key)} characters; at most {_MAX_KEY_LENGTH} are allowed",
                code="invalid_idempotency_key",
            )
        now_s = now.isoformat()
        with self._store.write() as tx:
            row = tx.fetchone(
                "SELECT fingerprint, status, outcome, expires_at, created_at FROM idempotency_keys "
                "WHERE tenant = ? AND idem_key = ?",
                (tenant, key),
            )
            if row is not None and row[3] > now_s:
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
    def complete(
        tx: Transaction, tenant: str, key: str, outcome: dict[str, Any], *, succeeded: bool
    ) -> None:
        """Store the outcome of a claimed key, inside the caller's (record) transaction."""
        tx.execute(
            "UPDATE idempotency_keys SET status = ?, outcome = ? WHERE tenant = ? AND idem_key = ?",
            ("succeeded" if succeeded else "failed", canonical_json(outcome), tenant, key),
        )

    @staticmethod
    def release(tx: Transaction, tenant: str, key: str) -> None:
        """Give a claimed key back (the call was stopped before it executed)."""
        tx.execute(
            "DELETE FROM idempotency_keys "
            "WHERE tenant = ? AND idem_key = ? AND status = 'in_flight'",
            (tenant, key),
        )

    def purge_expired(self, now: _dt.datetime) -> int:
        with self._store.write() as tx:
            return tx.execute(
                "DELETE FROM idempotency_keys WHERE expires_at <= ? AND status != 'in_flight'",
                (now.isoformat(),),
            )
