"""The response cache: hits, misses, TTL, tenant isolation, non-deterministic bypass."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator

import pytest

from keel.errors import ConfigError
from keel.models import ModelResponse, ResponseCache, Usage
from keel.store import Store, open_store
from keel.testing import FrozenClock

from .conftest import request

TTL = _dt.timedelta(minutes=10)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


def answer(text: str = "cached answer") -> ModelResponse:
    return ModelResponse("gpt-4o-mini", "openai", text, Usage(10, 3), latency_ms=250)


def test_miss_then_hit(store: Store, clock: FrozenClock) -> None:
    cache = ResponseCache(store, clock, TTL)
    req = request(temperature=0)
    assert cache.get("t1", req) is None
    assert cache.put("t1", req, answer())
    hit = cache.get("t1", req)
    assert hit is not None
    assert hit.text == "cached answer" and hit.cached and hit.latency_ms == 0
    assert hit.usage == Usage(10, 3)
    assert cache.get("t1", req) is not None
    assert cache.hits_of("t1", req) == 2
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.stored, stats.bypassed) == (2, 1, 1, 0)


def test_changed_request_misses(store: Store, clock: FrozenClock) -> None:
    cache = ResponseCache(store, clock, TTL)
    cache.put("t1", request("a", temperature=0), answer())
    assert cache.get("t1", request("b", temperature=0)) is None
    assert cache.get("t1", request("a", temperature=0, max_tokens=65)) is None
    assert cache.get("t1", request("a", temperature=0, metadata={"trace": "x"})) is not None


def test_tenants_are_isolated(store: Store, clock: FrozenClock) -> None:
    cache = ResponseCache(store, clock, TTL)
    req = request(temperature=0)
    cache.put("tenant-a", req, answer("for a"))
    assert cache.get("tenant-b", req) is None
    cache.put("tenant-b", req, answer("for b"))
    hit_a, hit_b = cache.get("tenant-a", req), cache.get("tenant-b", req)
    assert hit_a is not None and hit_a.text == "for a"
    assert hit_b is not None and hit_b.text == "for b"


def test_providers_are_separate_when_named(store: Store, clock: FrozenClock) -> None:
    cache = ResponseCache(store, clock, TTL)
    req = request(temperature=0)
    cache.put("t", req, answer(), provider="openai")
    assert cache.get("t", req, provider="azure") is None
    assert cache.get("t", req, provider="openai") is not None


def test_ttl_expiry_and_purge(store: Store, clock: FrozenClock) -> None:
    cache = ResponseCache(store, clock, TTL)
    req = request(temperature=0)
    cache.put("t1", req, answer())
    clock.advance(seconds=TTL.total_seconds() - 1)
    assert cache.get("t1", req) is not None
    clock.advance(seconds=1)
    assert cache.get("t1", req) is None
    cache.put("t1", request("other", temperature=0), answer())
    assert cache.purge_expired() == 1
    assert cache.get("t1", request("other", temperature=0)) is not None


def test_non_deterministic_requests_bypass_the_cache(store: Store, clock: FrozenClock) -> None:
    cache = ResponseCache(store, clock, TTL)
    for req in (request(), request(temperature=0.7, seed=1), request(temperature=0, n=2)):
        assert not cache.cacheable(req)
        assert not cache.put("t1", req, answer())
        assert cache.get("t1", req) is None
    assert cache.stats().bypassed == 3
    assert cache.stats().misses == 0
    assert cache.put("t1", request(seed=42), answer())  # seeded, default temperature: cached


def test_non_deterministic_caching_when_configured(store: Store, clock: FrozenClock) -> None:
    cache = ResponseCache(store, clock, TTL, cache_nondeterministic=True)
    req = request(temperature=0.9)
    assert cache.put("t1", req, answer())
    assert cache.get("t1", req) is not None


def test_cut_short_and_cached_answers_are_not_stored(store: Store, clock: FrozenClock) -> None:
    cache = ResponseCache(store, clock, TTL)
    req = request(temperature=0)
    cut = ModelResponse("m", "p", "partial", Usage(1, 1), finish_reason="length")
    assert not cache.put("t1", req, cut)
    cache.put("t1", req, answer())
    hit = cache.get("t1", req)
    assert hit is not None and not cache.put("t1", req, hit)


def test_an_unreadable_entry_is_a_miss(store: Store, clock: FrozenClock) -> None:
    cache = ResponseCache(store, clock, TTL)
    req = request(temperature=0)
    cache.put("t1", req, answer())
    with store.write() as tx:
        tx.execute("UPDATE model_cache SET response = ?", ('{"v": 99, "model": "m"}',))
    assert cache.get("t1", req) is None


def test_ttl_must_be_positive(store: Store, clock: FrozenClock) -> None:
    with pytest.raises(ConfigError):
        ResponseCache(store, clock, _dt.timedelta(0))
