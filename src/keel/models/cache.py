"""An exact-match response cache on the store's ``model_cache`` table.

Keyed by tenant and request digest (``ModelRequest.digest()``, plus the provider name when
given), so one tenant never sees another's answers and a changed request never hits an old one.
Entries live for ``ttl``; ``purge_expired()`` deletes the dead ones.

Only deterministic requests are cached (``ModelRequest.deterministic``: ``n == 1`` and either
``temperature == 0`` or no temperature with a fixed ``seed``): caching a sampled answer would
silently turn variety into repetition. ``cache_nondeterministic=True`` caches every request.
Answers cut short (``finish_reason == "length"``) are not stored.

A hit returns the stored response with ``cached=True`` (it cost nothing; the gateway records
that). Hit and miss counts are kept per instance (``stats()``) and hits per entry in the table.

Thread safety: share one instance between threads. Every method blocks on the store.
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass, replace

from keel.canonical import canonical_json, digest, parse_json
from keel.core import Clock
from keel.errors import ConfigError, KeelError
from keel.models.types import ModelRequest, ModelResponse
from keel.store import Store

__all__ = ["CacheStats", "ResponseCache"]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache object was made: ``bypassed`` counts non-cacheable requests."""

    hits: int
    misses: int
    bypassed: int
    stored: int


class ResponseCache:
    """See the module docstring."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        ttl: _dt.timedelta,
        *,
        cache_nondeterministic: bool = False,
    ) -> None:
        if ttl <= _dt.timedelta(0):
            raise ConfigError("the model cache ttl must be positive", context={"key": "cache.ttl"})
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._nondeterministic = cache_nondeterministic
        self._lock = threading.Lock()
        self._hits = self._misses = self._bypassed = self._stored = 0

    def cacheable(self, request: ModelRequest) -> bool:
        """True if ``request`` may be answered from (and stored in) the cache."""
        return self._nondeterministic or request.deterministic

    @staticmethod
    def key(request: ModelRequest, provider: str | None = None) -> str:
        """The row key: the request digest, or a digest over provider and request digest."""
        if provider is None:
            return request.digest()
        return digest({"provider": provider, "request": request.digest()})

    def _count(self, what: str) -> None:
        with self._lock:
            if what == "hit":
                self._hits += 1
            elif what == "miss":
                self._misses += 1
            elif what == "bypass":
                self._bypassed += 1
            else:
                self._stored += 1

    def get(
        self, tenant: str, request: ModelRequest, *, provider: str | None = None
    ) -> ModelResponse | None:
        """The cached answer to ``request`` for ``tenant``, or None (miss or not cacheable)."""
        if not self.cacheable(request):
            self._count("bypass")
            return None
        key = self.key(request, provider)
        now = _stamp(self._clock.now())
        row = self._store.read_one(
            "SELECT response FROM model_cache "
            "WHERE tenant = ? AND request_digest = ? AND expires_at > ?",
            (tenant, key, now),
        )
        response = _decode(row[0]) if row is not None else None
        if response is None:
            self._count("miss")
            return None
        with self._store.write(locks=()) as tx:  # one atomic statement
            tx.execute(
                "UPDATE model_cache SET hits = hits + 1 WHERE tenant = ? AND request_digest = ?",
                (tenant, key),
            )
        self._count("hit")
        return replace(response, cached=True, latency_ms=0)

    def put(
        self,
        tenant: str,
        request: ModelRequest,
        response: ModelResponse,
        *,
        provider: str | None = None,
    ) -> bool:
        """Store ``response`` as the answer to ``request``; False if it was not stored."""
        if not self.cacheable(request) or response.cached or response.finish_reason == "length":
            return False
        now = self._clock.now()
        self._store_row(tenant, self.key(request, provider), response, now)
        self._count("store")
        return True

    def _store_row(self, tenant: str, key: str, response: ModelResponse, now: _dt.datetime) -> None:
        with self._store.write(locks=()) as tx:  # one upsert: atomic
            tx.execute(
                "INSERT INTO model_cache "
                "(tenant, request_digest, response, created_at, expires_at, hits) "
                "VALUES (?, ?, ?, ?, ?, 0) "
                "ON CONFLICT (tenant, request_digest) DO UPDATE SET "
                "response = excluded.response, created_at = excluded.created_at, "
                "expires_at = excluded.expires_at, hits = 0",
                (
                    tenant,
                    key,
                    canonical_json(response.to_dict()),
                    _stamp(now),
                    _stamp(now + self._ttl),
                ),
            )

    def hits_of(self, tenant: str, request: ModelRequest, *, provider: str | None = None) -> int:
        """How often the stored entry for ``request`` was served (0 if there is none)."""
        row = self._store.read_one(
            "SELECT hits FROM model_cache WHERE tenant = ? AND request_digest = ?",
            (tenant, self.key(request, provider)),
        )
        return int(row[0]) if row is not None else 0

    def purge_expired(self) -> int:
        """Delete expired entries; return how many."""
        with self._store.write() as tx:
            return tx.execute(
                "DELETE FROM model_cache WHERE expires_at <= ?", (_stamp(self._clock.now()),)
            )

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._bypassed, self._stored)


def _decode(text: str) -> ModelResponse | None:
    try:
        return ModelResponse.from_dict(parse_json(text, max_bytes=64 * 1024 * 1024))
    except KeelError:
        return None  # written by a newer Keel, or damaged: a miss, never a wrong answer


def _stamp(when: _dt.datetime) -> str:
    """UTC ISO-8601 with microseconds: fixed width, so text order is time order."""
    return when.astimezone(_dt.UTC).isoformat(timespec="microseconds")
