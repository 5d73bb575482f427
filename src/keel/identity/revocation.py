"""Agent-token revocations kept in the store, so that they reach every process sharing it.

``StoredRevocations`` is a ``RevocationSet`` (hand it to ``TokenVerifier(revocations=...)``)
whose entries live in the ``token_revocations`` table. Two kinds of entry:

- **token** (``revoke_token(jti)``): that token, and every token delegated from it, is refused.
- **agent** (``revoke_agent(agent, tenant=None)``): every token of the agent (in ``tenant``, or
  in every tenant) issued before the revocation is refused, and so is every token delegated from
  such a token. Tokens minted afterwards verify again: cut an agent off, then re-enable it by
  minting new tokens (``iat`` has one-second resolution, so a token minted in the same second as
  the revocation is refused too; mint one a second later). A longer stop is a kill switch's job.

Bounded staleness, as for kill switches: a verifier reloads the whole (small) table at most every
``refresh_seconds`` (the reload runs inside ``verify`` of whichever call first finds the view
stale; the other calls keep using the current view meanwhile), so a revocation made by another
process is in force here within ``refresh_seconds``; one made through this object is in force at
once. Between reloads the hot path does no I/O. Every write also signals the store's
``token_revocations`` channel (``tx.notify``) for anything waiting on it.

An entry is forgotten (and pruned on a later write) once every token it could refuse has
expired: 25 minutes after the revocation (longer than any token lives plus twice the largest
leeway), or the token's expiry plus the largest leeway when ``until`` is given.

``record`` is called inside the write transaction with the new ``Revocation`` (the ``App`` appends
a ``control`` audit record there, so the revocation and its record commit together); ``flush``
after the commit. This package does not import ``keel.audit``.
"""

from __future__ import annotations

import datetime as _dt
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from keel.canonical import parse_json
from keel.core import Clock
from keel.errors import InvalidRequestError, UsageError
from keel.identity._b64 import b64url_decode
from keel.identity.tokens import MAX_LEEWAY, MAX_TOKEN_LENGTH, MAX_TTL, RevocationSet
from keel.store import Store, Transaction

__all__ = [
    "REVOCATION_CHANNEL",
    "Revocation",
    "RevocationKind",
    "StoredRevocations",
    "unverified_claims",
]

RevocationKind = Literal["token", "agent"]
#: The store channel every revocation write signals.
REVOCATION_CHANNEL: Final = "token_revocations"

_ALL_TENANTS: Final = "*"
_RETENTION: Final = MAX_TTL + 2 * MAX_LEEWAY
_COLUMNS: Final = "kind, target, tenant, reason, actor, revoked_at, cutoff, forget_after"


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation: a token (``target`` is its ``jti``) or an agent (``target`` is its id).

    ``tenant`` None means every tenant. For an agent, ``not_before`` is the first ``iat`` that
    verifies again (tokens issued earlier are refused). ``forget_after`` is when the entry stops
    mattering (every token it could refuse has expired).
    """

    kind: RevocationKind
    target: str
    tenant: str | None
    reason: str
    actor: str
    revoked_at: _dt.datetime
    not_before: _dt.datetime | None
    forget_after: _dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "tenant": self.tenant,
            "reason": self.reason,
            "actor": self.actor,
            "revoked_at": self.revoked_at.isoformat(),
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "forget_after": self.forget_after.isoformat(),
        }


def _utc(seconds: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{what} must be a non-empty string; got {value!r}")
    return value


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of ``token`` WITHOUT verifying it: for an operator looking up its ``jti`` to
    revoke it, never for a decision. Raises UsageError if it is not a JWT with a JSON payload."""
    parts = token.strip().split(".") if isinstance(token, str) else []
    if len(parts) != 3 or len(token) > MAX_TOKEN_LENGTH:
        raise UsageError("not a token: expected three base64url segments separated by '.'")
    try:
        claims = parse_json(b64url_decode(parts[1]), max_bytes=MAX_TOKEN_LENGTH, what="token")
    except (ValueError, InvalidRequestError) as exc:
        raise UsageError(f"not a token: its payload is not base64url JSON ({exc})") from None
    if not isinstance(claims, dict):
        raise UsageError("not a token: its payload is not a JSON object")
    return claims


class StoredRevocations(RevocationSet):
    """Token and agent revocations in ``store``, cached here and refreshed (module docstring).

    Thread-safe. ``revoke_*``, ``list`` and ``refresh`` block on the store; the membership view
    the verifier reads takes no lock.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        refresh_seconds: float = 0.25,
        record: Callable[[Transaction, Revocation], None] | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        if not refresh_seconds >= 0:
            raise UsageError(f"refresh_seconds must be 0 or more, not {refresh_seconds!r}")
        super().__init__(clock, retention=_RETENTION)
        self._store = store
        self._refresh_every = float(refresh_seconds)
        self._record = record
        self._flush = flush
        self._refresh_lock = threading.Lock()
        self._next_refresh = -math.inf  # load on first use

    # -- operator side -----------------------------------------------------------------------

    def revoke(self, jti: str, *, until: _dt.datetime | None = None) -> None:
        """``RevocationSet.revoke``, kept in the store (reason and actor unrecorded)."""
        self.revoke_token(jti, until=until, reason="revoked", actor="unknown")

    def revoke_token(
        self,
        jti: str,
        *,
        reason: str,
        actor: str,
        tenant: str | None = None,
        until: _dt.datetime | None = None,
    ) -> Revocation:
        """Refuse token ``jti`` (and every token delegated from it), in every process.

        ``until`` (the token's expiry, if known) lets the entry be forgotten sooner.
        """
        if until is not None and until.tzinfo is None:
            raise UsageError("revoke_token(until=...) needs a timezone-aware time")
        now = self._clock.now()
        forget = until + MAX_LEEWAY if until is not None else now + _RETENTION
        return self._write(
            "token", _name(jti, "token id"), tenant, reason, actor, now, cutoff=0, forget=forget
        )

    def revoke_agent(
        self, agent: str, *, reason: str, actor: str, tenant: str | None = None
    ) -> Revocation:
        """Refuse every token of ``agent`` (in ``tenant``, or every tenant) issued until now."""
        now = self._clock.now()
        cutoff = math.floor(now.timestamp()) + 1
        return self._write(
            "agent",
            _name(agent, "agent id"),
            tenant,
            reason,
            actor,
            now,
            cutoff=cutoff,
            forget=_utc(cutoff) + _RETENTION,
        )

    def _write(
        self,
        kind: RevocationKind,
        target: str,
        tenant: str | None,
        reason: str,
        actor: str,
        now: _dt.datetime,
        *,
        cutoff: int,
        forget: _dt.datetime,
    ) -> Revocation:
        if tenant is not None:
            _name(tenant, "tenant")
            if tenant == _ALL_TENANTS:
                tenant = None
        _name(reason, "a revocation's reason")
        _name(actor, "a revocation's actor")
        revocation = Revocation(
            kind=kind,
            target=target,
            tenant=tenant,
            reason=reason,
            actor=actor,
            revoked_at=now,
            not_before=_utc(cutoff) if kind == "agent" else None,
            forget_after=forget,
        )
        forget_s = math.ceil(forget.timestamp())
        with self._store.write() as tx:
            tx.execute(
                "DELETE FROM token_revocations WHERE forget_after <= ?",
                (math.floor(now.timestamp()),),
            )
            tx.execute(
                f"INSERT INTO token_revocations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, target, tenant) DO UPDATE SET reason = excluded.reason, "
                "actor = excluded.actor, revoked_at = excluded.revoked_at, "
                "cutoff = CASE WHEN excluded.cutoff > token_revocations.cutoff "
                "THEN excluded.cutoff ELSE token_revocations.cutoff END, "
                "forget_after = CASE WHEN excluded.forget_after > token_revocations.forget_after "
                "THEN excluded.forget_after ELSE token_revocations.forget_after END",
                (
                    kind,
                    target,
                    tenant or _ALL_TENANTS,
                    reason,
                    actor,
                    now.isoformat(),
                    cutoff,
                    forget_s,
                ),
            )
            if self._record is not None:
                self._record(tx, revocation)
            tx.notify(REVOCATION_CHANNEL)
        if self._flush is not None:
            self._flush()
        self.refresh()
        return revocation

    def list(self) -> list[Revocation]:
        """Every revocation still in force, read from the store now (newest first)."""
        now = math.floor(self._clock.now().timestamp())
        with self._store.read() as tx:
            rows = tx.fetchall(
                f"SELECT {_COLUMNS} FROM token_revocations WHERE forget_after > ? "
                "ORDER BY revoked_at DESC, kind, target",
                (now,),
            )
        return [
            Revocation(
                kind="agent" if kind == "agent" else "token",
                target=str(target),
                tenant=None if tenant == _ALL_TENANTS else str(tenant),
                reason=str(reason),
                actor=str(actor),
                revoked_at=_dt.datetime.fromisoformat(str(revoked_at)),
                not_before=_utc(int(cutoff)) if kind == "agent" else None,
                forget_after=_utc(int(forget)),
            )
            for kind, target, tenant, reason, actor, revoked_at, cutoff, forget in rows
        ]

    # -- verifier side -----------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the view from the store now (a call finding it stale does this for you)."""
        with self._refresh_lock:
            self._load()

    def _poll(self) -> None:
        # The hot path found the view stale. If another thread is reloading it already, go on
        # with the current view rather than queue behind it (it is at most one period old).
        if self._next_refresh == -math.inf:  # never loaded: there is no view to go on with
            self.refresh()
        elif self._refresh_lock.acquire(blocking=False):
            try:
                self._load()
            finally:
                self._refresh_lock.release()

    def _load(self) -> None:
        started = self._clock.monotonic()
        revocations = self.list()
        entries: dict[str, _dt.datetime] = {}
        agents: dict[str, list[tuple[str | None, float]]] = {}
        for r in revocations:
            if r.kind == "token":
                entries[r.target] = max(r.forget_after, entries.get(r.target, r.forget_after))
            else:
                assert r.not_before is not None
                agents.setdefault(r.target, []).append((r.tenant, r.not_before.timestamp()))
        self._agents = {agent: tuple(cutoffs) for agent, cutoffs in agents.items()}
        self._entries = entries
        self._next_refresh = started + self._refresh_every
