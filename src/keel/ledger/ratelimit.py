"""Rate limits: token buckets in the store, shared by every process, keyed on identity.

A :class:`RateLimit` allows ``requests`` calls and/or ``tokens`` model tokens per ``interval``,
with a burst of ``burst`` calls (default: ``requests``). Each limit is one bucket per
dimension and per identity key:

==========  ==============================================================================
scope       bucket key
==========  ==============================================================================
``agent``   the calling agent within its tenant (``[tenant, agent]``)
``tenant``  the calling tenant: every agent of the tenant drains the same bucket
``tool``    the tool's name (for tool calls; the limit does not apply to model calls)
``model``   the model's name (for model calls; the limit does not apply to tool calls)
==========  ==============================================================================

Keys come only from the verified principal's tenant and agent id and from the call's target —
never from a session, token, run or request id — so rotating those does not evade a limit
(ATTACKS.md #39). :func:`bucket_keys` builds them; :meth:`RateLimiter.acquire` takes all the
buckets of one call or none.

**Arithmetic.** Exact integers: a bucket of capacity C units refilling R units per interval of
I ms holds its level in units x I; it refills R per elapsed ms and one unit costs I. Time is the
injected clock's wall time in whole ms (shared by processes; a clock that steps backwards
refills nothing until it catches up). One statement per call takes every bucket: an upsert that
refills and debits each bucket only where the refilled level covers the cost; fewer changed
rows than buckets means the call is limited and the transaction rolls back.

**Fast path.** Buckets only ever gain units with time, so the level a process last saw, plus
the refill since, bounds the true level from above. When that bound is below the cost, the call
is refused without touching the store (a flood of refused calls costs no write lock). The answer
is the same as the store would give; ``retry_after`` may be shorter than the store's (a retry
then asks the store).
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, Literal, Protocol, cast

from keel.canonical import canonical_json
from keel.core import Clock, Principal
from keel.errors import RateLimited, UsageError
from keel.store import Store

__all__ = [
    "BucketKey",
    "BucketState",
    "RateLimit",
    "RateLimitSpecLike",
    "RateLimiter",
    "RateScope",
    "bucket_keys",
]

RateScope = Literal["agent", "tenant", "tool", "model"]
Dimension = Literal["requests", "tokens"]
RATE_SCOPES: Final[tuple[RateScope, ...]] = ("agent", "tenant", "tool", "model")
#: Bounds keeping every bucket value well inside 64-bit integers.
MAX_RATE_UNITS: Final = 10**9
MAX_INTERVAL: Final = _dt.timedelta(days=7)
_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_CACHE_LIMIT: Final = 10_000


def _usage(message: str, limit_id: str) -> UsageError:
    return UsageError(message, code="invalid_rate_limit", context={"limit": limit_id})


class RateLimitSpecLike(Protocol):
    """What :meth:`RateLimit.from_spec` reads: the attributes of ``keel.policy.RateLimitSpec``."""

    @property
    def id(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def interval_seconds(self) -> int: ...
    @property
    def requests(self) -> int | None: ...
    @property
    def tokens(self) -> int | None: ...
    @property
    def burst(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``requests`` calls and/or ``tokens`` tokens per ``interval``; ``burst`` calls at once.

    ``id`` is part of the buckets' identity (policy limits use ``<policy>#<id>``). Raises
    UsageError (code ``invalid_rate_limit``) for values out of range: counts 1..10^9, interval
    1 ms..7 days, at least one of ``requests``/``tokens``, ``burst`` only with ``requests``.
    """

    id: str
    scope: RateScope
    interval: _dt.timedelta
    requests: int | None = None
    tokens: int | None = None
    burst: int | None = None
    interval_ms: int = field(init=False, repr=False, compare=False)

    @classmethod
    def from_spec(cls, spec: RateLimitSpecLike) -> RateLimit:
        """The limiter's limit for a policy rate limit (``PolicySet.limits_for(...)
        .rate_limits``): ``per`` (``interval_seconds``) becomes ``interval``; the rest as is."""
        return cls(
            spec.id,
            cast(RateScope, spec.scope),
            _dt.timedelta(seconds=spec.interval_seconds),
            requests=spec.requests,
            tokens=spec.tokens,
            burst=spec.burst,
        )

    def __post_init__(self) -> None:
        if not isinstance(self.interval, _dt.timedelta):
            raise _usage(f"rate limit {self.id!r}: interval must be a timedelta", str(self.id))
        if not isinstance(self.id, str) or not self.id or len(self.id) > 200:
            raise _usage(f"rate limit id {self.id!r} must be 1-200 characters", str(self.id))
        if self.scope not in RATE_SCOPES:
            raise _usage(
                f"rate limit {self.id!r}: scope {self.scope!r} is not one of "
                + ", ".join(RATE_SCOPES),
                self.id,
            )
        ms = self.interval // _dt.timedelta(milliseconds=1)
        if ms < 1 or self.interval > MAX_INTERVAL:
            raise _usage(f"rate limit {self.id!r}: interval must be 1 ms to 7 days", self.id)
        if self.requests is None and self.tokens is None:
            raise _usage(f"rate limit {self.id!r}: give requests, tokens or both", self.id)
        if self.burst is not None and self.requests is None:
            raise _usage(f"rate limit {self.id!r}: burst needs requests", self.id)
        for name in ("requests", "tokens", "burst"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= MAX_RATE_UNITS
            ):
                raise _usage(
                    f"rate limit {self.id!r}: {name} must be a whole number from 1 to "
                    f"{MAX_RATE_UNITS}, got {value!r}",
                    self.id,
                )
        object.__setattr__(self, "interval_ms", ms)

    def bucket(self, dimension: Dimension) -> tuple[int, int, int]:
        """(capacity, refill per ms, ms to refill from empty) of one dimension, scaled."""
        return _bucket(self, dimension)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "scope": self.scope,
            "interval_seconds": self.interval.total_seconds(),
            "requests": self.requests,
            "tokens": self.tokens,
            "burst": self.burst,
        }


@lru_cache(maxsize=4096)
def _bucket(limit: RateLimit, dimension: Dimension) -> tuple[int, int, int]:
    interval = limit.interval_ms
    if dimension == "requests":
        rate = limit.requests or 0
        size = limit.burst if limit.burst is not None else rate
    else:
        rate = size = limit.tokens or 0
    capacity = size * interval
    return capacity, rate, -(-capacity // rate)


@dataclass(frozen=True, slots=True)
class BucketKey:
    """One bucket of one call: the limit, its dimension, the identity key and the cost."""

    limit: RateLimit
    dimension: Dimension
    key: str
    cost: int = 1

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.limit.id, self.dimension, self.key)


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket's level as of a moment, in units (fractional while refilling)."""

    limit_id: str
    dimension: Dimension
    key: str
    available: float
    capacity: int


def bucket_keys(
    limits: Sequence[RateLimit],
    principal: Principal,
    kind: Literal["tool", "model"],
    target: str,
    *,
    tokens: int = 0,
) -> list[BucketKey]:
    """The buckets a call takes: for each limit that applies, one request (if ``requests``) and
    ``tokens`` tokens (if ``tokens`` and the call uses any). Keys use only the principal's tenant
    and agent id and the call's target (see the module docstring)."""
    out: list[BucketKey] = []
    for limit in limits:
        scope = limit.scope
        if scope == "agent":
            key = canonical_json([principal.tenant, principal.agent_id])
        elif scope == "tenant":
            key = principal.tenant
        elif scope == kind:  # "tool" for tool calls, "model" for model calls
            key = target
        else:
            continue
        if limit.requests is not None:
            out.append(BucketKey(limit, "requests", key, 1))
        if limit.tokens is not None and tokens > 0:
            out.append(BucketKey(limit, "tokens", key, tokens))
    return out


_B = "rate_buckets"
_COLUMNS = (
    "limit_id, dimension, bucket_key, capacity, refill, full_after_ms, level, updated_ms, last_cost"
)
# The level refilled to now (excluded.updated_ms), clamped to the capacity; time never runs back.
_REFILLED = (
    f"CASE WHEN excluded.updated_ms <= {_B}.updated_ms THEN "
    f"CASE WHEN {_B}.level > excluded.capacity THEN excluded.capacity ELSE {_B}.level END "
    f"WHEN excluded.updated_ms - {_B}.updated_ms >= excluded.full_after_ms "
    "THEN excluded.capacity "
    f"WHEN {_B}.level + (excluded.updated_ms - {_B}.updated_ms) * excluded.refill "
    ">= excluded.capacity THEN excluded.capacity "
    f"ELSE {_B}.level + (excluded.updated_ms - {_B}.updated_ms) * excluded.refill END"
)


@lru_cache(maxsize=16)
def _take_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return (
        f"INSERT INTO {_B} ({_COLUMNS}) VALUES {values} "
        "ON CONFLICT (limit_id, dimension, bucket_key) DO UPDATE SET "
        f"level = ({_REFILLED}) - excluded.last_cost, "
        f"updated_ms = CASE WHEN excluded.updated_ms > {_B}.updated_ms "
        f"THEN excluded.updated_ms ELSE {_B}.updated_ms END, "
        "capacity = excluded.capacity, refill = excluded.refill, "
        "full_after_ms = excluded.full_after_ms, last_cost = excluded.last_cost "
        f"WHERE ({_REFILLED}) >= excluded.last_cost "
        "RETURNING limit_id, dimension, bucket_key, level, updated_ms"
    )


_READ = (
    f"SELECT level, updated_ms FROM {_B} WHERE limit_id = ? AND dimension = ? AND bucket_key = ?"
)


def _refill(level: int, at_ms: int, now_ms: int, capacity: int, rate: int) -> int:
    """The same arithmetic as the SQL, in Python."""
    if now_ms <= at_ms:
        return min(level, capacity)
    return min(capacity, level + (now_ms - at_ms) * rate)


class RateLimiter:
    """Token buckets in the store. Thread-safe; processes sharing the store share the buckets.

    ``fast_path`` (default on) refuses calls that cannot pass without touching the store (see
    the module docstring).
    """

    def __init__(self, store: Store, clock: Clock, *, fast_path: bool = True) -> None:
        self._store = store
        self._clock = clock
        self._fast = fast_path
        self._seen: dict[tuple[str, str, str, int, int], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def _now_ms(self, now: _dt.datetime | None) -> int:
        moment = self._clock.now() if now is None else now
        if moment.tzinfo is None:
            raise UsageError("rate limits need timezone-aware times", code="invalid_argument")
        return (moment - _EPOCH) // _dt.timedelta(milliseconds=1)

    def acquire(self, keys: Sequence[BucketKey], now: _dt.datetime | None = None) -> None:
        """Take every bucket of one call, or none and raise RateLimited.

        RateLimited names the limit whose wait is longest (``context``: ``limit``, ``scope``,
        ``key``, ``dimension``) and carries ``retry_after`` (seconds). A cost larger than a
        bucket can ever hold is refused as not retryable. A store failure raises StoreError.
        """
        if not keys:
            return
        now_ms = self._now_ms(now)
        rows: list[tuple[object, ...]] = []
        seen: set[tuple[str, str, str]] = set()
        for bucket in keys:
            capacity, rate, full_after = bucket.limit.bucket(bucket.dimension)
            cost = bucket.cost * bucket.limit.interval_ms
            if bucket.ident in seen:
                raise UsageError(
                    f"bucket {bucket.ident} is listed twice for this call",
                    code="invalid_rate_limit",
                )
            seen.add(bucket.ident)
            if cost > capacity:
                raise self._limited(bucket, float(full_after) / 1000, retryable=False)
            if self._fast:
                self._check_fast(bucket, capacity, rate, cost, now_ms)
            rows.append((*bucket.ident, capacity, rate, full_after, capacity - cost, now_ms, cost))
        rows.sort()  # one lock order
        with self._store.write(locks=()) as tx:  # one conditional upsert: atomic
            returned = tx.fetchall(_take_sql(len(rows)), [v for row in rows for v in row])
            if len(returned) == len(rows):
                self._remember(keys, returned)
                return
            done = {(r[0], r[1], r[2]) for r in returned}
            worst: tuple[int, BucketKey] | None = None
            for bucket in keys:
                if bucket.ident in done:
                    continue
                state = tx.fetchone(_READ, bucket.ident)
                capacity, rate, _full = bucket.limit.bucket(bucket.dimension)
                level = capacity if state is None else int(state[0])
                at = now_ms if state is None else int(state[1])
                self._note(bucket, level, at)
                wait = self._wait_ms(bucket, level, at, now_ms)
                if worst is None or wait > worst[0]:
                    worst = (wait, bucket)
            assert worst is not None
            raise self._limited(worst[1], worst[0] / 1000)

    @staticmethod
    def _wait_ms(bucket: BucketKey, level: int, at_ms: int, now_ms: int) -> int:
        capacity, rate, _full = bucket.limit.bucket(bucket.dimension)
        cost = bucket.cost * bucket.limit.interval_ms
        have = _refill(level, at_ms, now_ms, capacity, rate)
        start = max(now_ms, at_ms)
        ready = start + max(0, -(-(cost - have) // rate))
        return max(1, ready - now_ms)

    def _cache_key(self, bucket: BucketKey) -> tuple[str, str, str, int, int]:
        capacity, rate, _full = bucket.limit.bucket(bucket.dimension)
        return (*bucket.ident, capacity, rate)

    def _check_fast(
        self, bucket: BucketKey, capacity: int, rate: int, cost: int, now_ms: int
    ) -> None:
        seen = self._seen.get(self._cache_key(bucket))
        if seen is None:
            return
        level, at = seen
        if _refill(level, at, now_ms, capacity, rate) < cost:
            raise self._limited(bucket, self._wait_ms(bucket, level, at, now_ms) / 1000)

    def _note(self, bucket: BucketKey, level: int, at_ms: int) -> None:
        if not self._fast:
            return
        with self._lock:
            if len(self._seen) >= _CACHE_LIMIT:
                self._seen.clear()
            self._seen[self._cache_key(bucket)] = (level, at_ms)

    def _remember(self, keys: Sequence[BucketKey], returned: list[tuple[object, ...]]) -> None:
        if not self._fast:
            return
        by_ident = {(r[0], r[1], r[2]): r for r in returned}
        for bucket in keys:
            row = by_ident[bucket.ident]
            self._note(bucket, int(row[3]), int(row[4]))  # type: ignore[call-overload]

    @staticmethod
    def _limited(bucket: BucketKey, seconds: float, *, retryable: bool = True) -> RateLimited:
        limit = bucket.limit
        per = limit.interval.total_seconds()
        amount = limit.requests if bucket.dimension == "requests" else limit.tokens
        if retryable:
            message = (
                f"rate limit {limit.id!r} ({amount} {bucket.dimension} per {per:g}s, "
                f"{limit.scope} {bucket.key!r}) reached; retry after {seconds:.3f}s"
            )
        else:
            message = (
                f"this call needs {bucket.cost} {bucket.dimension}, more than rate limit "
                f"{limit.id!r} ({limit.scope} {bucket.key!r}) can ever grant at once"
            )
        return RateLimited(
            message,
            retry_after=seconds,
            retryable=retryable,
            context={
                "limit": limit.id,
                "scope": limit.scope,
                "key": bucket.key,
                "dimension": bucket.dimension,
                "cost": bucket.cost,
            },
        )

    def state(
        self, keys: Sequence[BucketKey], now: _dt.datetime | None = None
    ) -> list[BucketState]:
        """The buckets' levels as of ``now`` (read only; a bucket never used is full)."""
        now_ms = self._now_ms(now)
        out: list[BucketState] = []
        with self._store.read() as tx:
            for bucket in keys:
                capacity, rate, _full = bucket.limit.bucket(bucket.dimension)
                row = tx.fetchone(_READ, bucket.ident)
                level = (
                    capacity
                    if row is None
                    else _refill(int(row[0]), int(row[1]), now_ms, capacity, rate)
                )
                size = capacity // bucket.limit.interval_ms
                out.append(
                    BucketState(
                        bucket.limit.id,
                        bucket.dimension,
                        bucket.key,
                        level / bucket.limit.interval_ms,
                        size,
                    )
                )
        return out
