"""Rate limits: token buckets keyed on identity, shared by processes (ATTACKS.md #39)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest

from keel.core import Principal
from keel.errors import RateLimited, UsageError
from keel.ledger import BucketKey, RateLimit, RateLimiter, bucket_keys
from keel.store import Store
from keel.testing import FrozenClock

BOT = Principal("bot", "acme", roles=frozenset({"support"}), run_id="r1", token_id="t1")
MINUTE = dt.timedelta(minutes=1)


def _keys(
    limits: list[RateLimit],
    principal: Principal = BOT,
    kind: Any = "tool",
    target: str = "billing.refund",
    tokens: int = 0,
) -> list[BucketKey]:
    return bucket_keys(limits, principal, kind, target, tokens=tokens)


def _refused(limiter: RateLimiter, keys: list[BucketKey]) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        limiter.acquire(keys)
    return info.value


def test_burst_then_steady_refill(limiter: RateLimiter, clock: FrozenClock) -> None:
    keys = _keys([RateLimit("p#agent", "agent", MINUTE, requests=60, burst=3)])
    for _ in range(3):
        limiter.acquire(keys)
    error = _refused(limiter, keys)
    assert error.retry_after == pytest.approx(1.0)
    assert error.retryable
    assert error.context["limit"] == "p#agent"
    assert error.context["retry_after_seconds"] == 1.0
    clock.advance(seconds=0.5)
    assert _refused(limiter, keys).retry_after == pytest.approx(0.5)
    clock.advance(seconds=0.5)
    limiter.acquire(keys)
    _refused(limiter, keys)
    clock.advance(seconds=10)  # refills to the burst, not beyond
    for _ in range(3):
        limiter.acquire(keys)
    _refused(limiter, keys)


def test_retry_after_is_exact(limiter: RateLimiter, clock: FrozenClock) -> None:
    keys = _keys([RateLimit("p#slow", "agent", MINUTE, requests=2)])
    limiter.acquire(keys)
    limiter.acquire(keys)
    assert _refused(limiter, keys).retry_after == 30.0
    clock.advance(seconds=10)
    error = _refused(limiter, keys)
    assert error.retry_after == 20.0
    assert "retry after 20.000s" in str(error)
    clock.advance(seconds=20)
    limiter.acquire(keys)


def test_token_buckets(limiter: RateLimiter, clock: FrozenClock) -> None:
    limit = RateLimit("p#tokens", "model", MINUTE, tokens=1000)
    limiter.acquire(_keys([limit], kind="model", target="gpt-4o", tokens=600))
    keys = _keys([limit], kind="model", target="gpt-4o", tokens=600)
    error = _refused(limiter, keys)
    assert error.retry_after == 12.0  # 200 tokens missing at 1000 per minute
    assert error.context["dimension"] == "tokens"
    assert limiter.state(keys)[0].available == 400
    clock.advance(seconds=12)
    limiter.acquire(keys)
    assert _keys([limit], kind="model", target="gpt-4o", tokens=0) == []


def test_a_call_larger_than_the_bucket_is_never_granted(limiter: RateLimiter) -> None:
    limit = RateLimit("p#tokens", "tenant", MINUTE, tokens=1000)
    error = _refused(limiter, _keys([limit], tokens=1001))
    assert not error.retryable
    assert "can ever grant" in str(error)


def test_all_or_nothing_across_buckets(limiter: RateLimiter) -> None:
    roomy = RateLimit("p#tenant", "tenant", MINUTE, requests=100)
    tight = RateLimit("p#tool", "tool", MINUTE, requests=1)
    limiter.acquire(_keys([tight]))
    error = _refused(limiter, _keys([roomy, tight]))
    assert error.context["limit"] == "p#tool"
    (tenant,) = limiter.state(_keys([roomy]))
    assert tenant.available == 100  # the refused call took nothing from the tenant bucket


def test_limits_are_keyed_on_identity_not_sessions(limiter: RateLimiter) -> None:
    agent = RateLimit("p#agent", "agent", MINUTE, requests=2)
    limiter.acquire(_keys([agent]))
    limiter.acquire(_keys([agent]))
    # Rotating run, token, delegation, roles or the human does not give a new bucket.
    for disguise in (
        Principal("bot", "acme", run_id="r2"),
        Principal("bot", "acme", token_id="t2", on_behalf_of="mallory"),
        Principal("bot", "acme", roles=frozenset({"admin"}), act=("router",)),
    ):
        error = _refused(limiter, _keys([agent], principal=disguise))
        assert error.context["key"] == '["acme","bot"]'
    # Another agent, or the same agent name in another tenant, is another identity.
    limiter.acquire(_keys([agent], principal=Principal("bot-2", "acme")))
    limiter.acquire(_keys([agent], principal=Principal("bot", "globex")))


def test_a_tenant_limit_is_shared_by_all_its_agents(limiter: RateLimiter) -> None:
    tenant = RateLimit("p#tenant", "tenant", MINUTE, requests=5)
    for n in range(5):
        limiter.acquire(_keys([tenant], principal=Principal(f"agent-{n}", "acme")))
    error = _refused(limiter, _keys([tenant], principal=Principal("agent-99", "acme")))
    assert error.context["key"] == "acme"
    limiter.acquire(_keys([tenant], principal=Principal("agent-0", "globex")))


def test_tool_and_model_scopes_key_on_the_target() -> None:
    tool = RateLimit("p#tool", "tool", MINUTE, requests=1)
    model = RateLimit("p#model", "model", MINUTE, requests=1, tokens=10)
    keys = _keys([tool, model], kind="tool", target="billing.refund", tokens=5)
    assert [(k.limit.id, k.dimension, k.key) for k in keys] == [
        ("p#tool", "requests", "billing.refund")
    ]
    keys = _keys([tool, model], kind="model", target="gpt-4o", tokens=5)
    assert [(k.limit.id, k.dimension, k.key, k.cost) for k in keys] == [
        ("p#model", "requests", "gpt-4o", 1),
        ("p#model", "tokens", "gpt-4o", 5),
    ]


def test_two_processes_share_a_bucket(
    db_url: str, store: Store, processes: Callable[..., list[dict[str, int]]]
) -> None:
    results = processes(
        ["bucket", db_url, "30", "20", "3600"], ["bucket", db_url, "30", "20", "3600"]
    )
    assert sum(r["ok"] for r in results) == 20
    assert sum(r["refused"] for r in results) == 40
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    limiter = RateLimiter(store, FrozenClock(start))
    limit = RateLimit("p#agent", "agent", dt.timedelta(seconds=3600), requests=20)
    keys = _keys([limit], principal=Principal("bot", "acme"))
    assert limiter.state(keys)[0].available == 0
    assert _refused(limiter, keys).retry_after == 180.0


def test_threads_never_take_more_than_the_bucket(store: Store, clock: FrozenClock) -> None:
    limit = RateLimit("p#agent", "agent", dt.timedelta(hours=1), requests=25)
    keys = _keys([limit])
    granted: list[int] = []
    barrier = threading.Barrier(8)

    def hammer() -> None:
        limiter = RateLimiter(store, clock)
        barrier.wait()
        for _ in range(10):
            try:
                limiter.acquire(keys)
            except RateLimited:
                continue
            granted.append(1)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 25


def test_the_fast_path_is_never_more_generous(store: Store, clock: FrozenClock) -> None:
    limit = RateLimit("p#agent", "agent", MINUTE, requests=2)
    keys = _keys([limit])
    first, second = RateLimiter(store, clock), RateLimiter(store, clock, fast_path=False)
    first.acquire(keys)  # first remembers one unit left
    second.acquire(keys)  # ... which second takes
    assert _refused(first, keys).retry_after == 30.0  # first asks the store, not its memory
    fast = _refused(first, keys)  # now refused from memory, same answer
    assert fast.retry_after == 30.0
    clock.advance(seconds=30)
    first.acquire(keys)


def test_a_clock_stepping_back_refills_nothing(limiter: RateLimiter, clock: FrozenClock) -> None:
    keys = _keys([RateLimit("p#agent", "agent", MINUTE, requests=1)])
    limiter.acquire(keys)
    clock.set(clock.now() - dt.timedelta(hours=1))
    error = _refused(limiter, keys)
    assert error.retry_after == pytest.approx(3600 + 60)
    clock.set(clock.now() + dt.timedelta(hours=1, minutes=1))
    limiter.acquire(keys)


def test_a_changed_limit_applies_to_the_existing_bucket(limiter: RateLimiter) -> None:
    small = RateLimit("p#agent", "agent", MINUTE, requests=10)
    for _ in range(10):
        limiter.acquire(_keys([small]))
    bigger = RateLimit("p#agent", "agent", MINUTE, requests=20)
    _refused(limiter, _keys([bigger]))  # raising a limit does not refill the bucket at once
    shrunk = RateLimit("p#agent", "agent", MINUTE, requests=5)
    _refused(limiter, _keys([shrunk]))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"scope": "session"}, "scope 'session'"),
        ({"interval": dt.timedelta(0)}, "interval"),
        ({"interval": dt.timedelta(days=8)}, "interval"),
        ({"requests": None}, "give requests, tokens or both"),
        ({"requests": 0}, "requests must be"),
        ({"requests": 10**10}, "requests must be"),
        ({"requests": True}, "requests must be"),
        ({"requests": None, "tokens": 5, "burst": 2}, "burst needs requests"),
        ({"id": ""}, "rate limit id"),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    values: dict[str, Any] = {"id": "p#x", "scope": "agent", "interval": MINUTE, "requests": 5}
    values.update(kwargs)
    with pytest.raises(UsageError, match=fragment):
        RateLimit(**values)


def test_no_buckets_is_a_no_op(limiter: RateLimiter) -> None:
    limiter.acquire([])
    keys = _keys([RateLimit("p#agent", "agent", MINUTE, requests=5)])
    with pytest.raises(UsageError, match="listed twice"):
        limiter.acquire(keys + keys)
