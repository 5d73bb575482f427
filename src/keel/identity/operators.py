"""Operator API keys: how people (and their scripts) authenticate to the HTTP server.

A key is ``keel_op_<key_id>_<secret>``: ``key_id`` is public (listed, revoked, written in audit
records), ``secret`` is 32 random bytes shown once at creation and stored only as its SHA-256
(a high-entropy secret needs no slow hash). Each key has one **role** per tenant, from least to
most: ``viewer`` (read), ``approver`` (decide approvals), ``operator`` (kill switches, runs),
``admin`` (keys); a key of a role may do what the roles below it may. ``tenant`` limits the key
to one tenant (None: every tenant). ``labels`` are the names a policy's ``approvers:`` may list
(``finance``, ``support-lead``): the approval service matches them, not the role.

Checking a key is one indexed read and a constant-time comparison; a revoked or unknown key, or
a wrong secret, is refused with the same message.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Final, Literal, get_args

from keel.core import Clock
from keel.errors import AuthenticationError, InvalidRequestError
from keel.store import Store

__all__ = ["ROLES", "OperatorKey", "OperatorKeys", "Role"]

Role = Literal["viewer", "approver", "operator", "admin"]
ROLES: Final[tuple[str, ...]] = get_args(Role)

_PREFIX: Final = "keel_op_"
_KEY = re.compile(r"keel_op_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}")
_COLUMNS: Final = (
    "key_id, name, role, tenant, labels, created_at, created_by, revoked_at, last_used_at"
)


@dataclass(frozen=True, slots=True)
class OperatorKey:
    """What a key grants (never its secret)."""

    key_id: str
    name: str
    role: str
    tenant: str | None
    labels: tuple[str, ...]
    created_at: str
    created_by: str
    revoked_at: str | None = None
    last_used_at: str | None = None

    def allows(self, role: str) -> bool:
        """Whether this key's role is ``role`` or above it."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def covers(self, tenant: str | None) -> bool:
        """Whether this key may act in ``tenant`` (a key for every tenant covers all)."""
        return self.tenant is None or self.tenant == tenant

    def to_dict(self) -> dict[str, object]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role,
            "tenant": self.tenant,
            "labels": list(self.labels),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


class OperatorKeys:
    """Create, list, revoke and check operator API keys in ``store``."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def create(
        self,
        name: str,
        role: str,
        *,
        tenant: str | None = None,
        labels: tuple[str, ...] = (),
        created_by: str = "cli",
    ) -> tuple[str, OperatorKey]:
        """A new key: returns ``(the key text, shown once, its record)``."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidRequestError("an operator key needs a name (1 to 200 characters)")
        if role not in ROLES:
            raise InvalidRequestError(
                f"role {role!r} is not one of {', '.join(ROLES)}", context={"role": role}
            )
        if tenant is not None and not _LABEL.fullmatch(tenant):
            raise InvalidRequestError(f"tenant {tenant!r} is not a valid tenant name")
        for label in labels:
            if not _LABEL.fullmatch(label):
                raise InvalidRequestError(f"label {label!r} is not a valid approver label")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = _ts(self._clock.now())
        record = OperatorKey(
            key_id, name.strip(), role, tenant, tuple(sorted(set(labels))), now, created_by
        )
        with self._store.write(locks=()) as tx:
            tx.execute(
                "INSERT INTO operator_keys (key_id, name, role, tenant, labels, secret_hash, "
                "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    record.name,
                    role,
                    tenant,
                    json.dumps(list(record.labels)),
                    _digest(secret),
                    now,
                    created_by,
                ),
            )
        return f"{_PREFIX}{key_id}_{secret}", record

    def list(self, *, include_revoked: bool = False) -> list[OperatorKey]:
        sql = f"SELECT {_COLUMNS} FROM operator_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        with self._store.read() as tx:
            return [_from_row(row) for row in tx.fetchall(sql + " ORDER BY created_at, key_id")]

    def revoke(self, key_id: str) -> OperatorKey:
        """Revoke a key now (idempotent). Raises InvalidRequestError for an unknown id."""
        with self._store.write(locks=()) as tx:
            tx.execute(
                "UPDATE operator_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (_ts(self._clock.now()), key_id),
            )
            row = tx.fetchone(f"SELECT {_COLUMNS} FROM operator_keys WHERE key_id = ?", (key_id,))
        if row is None:
            raise InvalidRequestError(
                f"no operator key {key_id!r}", code="unknown_key", context={"key_id": key_id}
            )
        return _from_row(row)

    def live(self, key_id: str) -> OperatorKey:
        """The key ``key_id`` if it exists and is not revoked, else AuthenticationError (for a
        session that outlives its key: revoking the key ends the session)."""
        row = self._store.read_one(
            f"SELECT {_COLUMNS} FROM operator_keys WHERE key_id = ?", (key_id,)
        )
        if row is None or row[7] is not None:
            raise _refused()
        return _from_row(row)

    def check(self, text: str) -> OperatorKey:
        """The live key ``text`` is, or AuthenticationError (same message for every failure)."""
        match = _KEY.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise _refused()
        key_id, secret = match.groups()
        row = self._store.read_one(
            f"SELECT {_COLUMNS}, secret_hash FROM operator_keys WHERE key_id = ?", (key_id,)
        )
        if row is None or row[7] is not None:
            _digest(secret)  # the same work whether or not the key exists
            raise _refused()
        if not hmac.compare_digest(str(row[9]), _digest(secret)):
            raise _refused()
        return _from_row(row[:9])


def _refused() -> AuthenticationError:
    return AuthenticationError(
        "the operator API key is missing, unknown, revoked or wrong", code="operator_key_invalid"
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def _ts(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.UTC).isoformat(timespec="seconds")


def _from_row(row: tuple[object, ...]) -> OperatorKey:
    key_id, name, role, tenant, labels, created_at, created_by, revoked_at, last_used = row
    return OperatorKey(
        str(key_id),
        str(name),
        str(role),
        None if tenant is None else str(tenant),
        tuple(json.loads(str(labels))),
        str(created_at),
        str(created_by),
        None if revoked_at is None else str(revoked_at),
        None if last_used is None else str(last_used),
    )
