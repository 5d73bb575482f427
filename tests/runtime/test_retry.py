"""Retry policy: backoff with jitter, and retries only where repeating the call is safe."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.core import Effect
from keel.errors import (
    ApprovalRequired,
    AuthenticationError,
    BudgetExceeded,
    ConfigError,
    ConflictError,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InternalError,
    InvalidRequestError,
    KeelError,
    KillSwitchEngaged,
    ModelError,
    ModelTimeout,
    PolicyDenied,
    RateLimited,
    StoreError,
    ToolError,
    ToolTimeout,
    UsageError,
)
from keel.gateway.breaker import CircuitOpen
from keel.runtime.retry import RetryPolicy, proves_not_executed

EFFECTS: tuple[Effect, ...] = ("read", "reversible", "irreversible")

REFUSALS: list[KeelError] = [
    PolicyDenied("no", retryable=True),
    KillSwitchEngaged("stop", retryable=True),
    BudgetExceeded("cap", retryable=True),
    ApprovalRequired("ask", retryable=True),
    AuthenticationError("who", retryable=True),
    UsageError("bad", retryable=True),
    InvalidRequestError("bad args", retryable=True),
    ConfigError("bad config", retryable=True),
    ConflictError("clash", retryable=True),
    IdempotencyMismatch("other args", retryable=True),
]


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.max_delay) == (3, 0.5, 30.0)
    assert (policy.multiplier, policy.jitter) == (2.0, "full")


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30, multiplier=2, jitter="none")
    assert [policy.backoff(k) for k in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [policy.delay(k, random.Random(0)) for k in (1, 2, 7)] == [0.5, 1, 30]
    assert policy.backoff(10_000) == 30  # no overflow
    with pytest.raises(ValueError, match="start at 1"):
        policy.backoff(0)


def test_full_jitter_spreads_over_zero_to_backoff() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=100, multiplier=2)
    rng = random.Random(7)
    waits = [policy.delay(4, rng) for _ in range(2000)]
    assert all(0 <= w <= 8 for w in waits)
    assert min(waits) < 0.5
    assert max(waits) > 7.5


def test_equal_jitter_keeps_half_the_backoff() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=100, jitter="equal")
    rng = random.Random(3)
    assert all(4 <= policy.delay(4, rng) <= 8 for _ in range(500))


def test_same_seed_same_delays() -> None:
    policy = RetryPolicy()
    one = [policy.delay(k, random.Random(42)) for k in range(1, 6)]
    two = [policy.delay(k, random.Random(42)) for k in range(1, 6)]
    assert one == two


def test_delay_for_honours_retry_after_hints() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1)
    rng = random.Random(0)
    assert policy.delay_for(RateLimited("slow down", retry_after=45), 1, rng) == 45
    assert policy.delay_for(CircuitOpen("open", retry_after=12.5), 1, rng) == 12.5
    hinted = ToolError("busy", retryable=True, context={"retry_after_seconds": 3})
    assert policy.delay_for(hinted, 1, rng) == 3
    assert policy.delay_for(ToolError("x", retryable=True), 1, rng) <= 0.1


@pytest.mark.parametrize("error", REFUSALS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("effect", EFFECTS)
def test_refusals_are_never_retried(error: KeelError, effect: Effect) -> None:
    decision = RetryPolicy(max_attempts=10).decide(error, effect, True, 1)
    assert not decision
    assert "refusal" in decision.reason


def test_in_flight_duplicate_is_retried_even_for_irreversible_tools() -> None:
    policy = RetryPolicy()
    error = IdempotencyInFlight("same key running")
    assert policy.should_retry(error, "irreversible", False, 1)


@pytest.mark.parametrize(
    "error",
    [ToolError("boom", retryable=False), ModelError("400"), InternalError("bug")],
    ids=lambda e: type(e).__name__,
)
def test_non_retryable_errors_are_not_retried(error: KeelError) -> None:
    assert not RetryPolicy().should_retry(error, "read", True, 1)


def test_only_keel_errors_are_retried() -> None:
    decision = RetryPolicy().decide(RuntimeError("oops"), "read", True, 1)
    assert not decision
    assert "not a Keel error" in decision.reason


@pytest.mark.parametrize(
    "error",
    [
        ToolError("503", retryable=True),
        ToolTimeout("slow"),
        ModelTimeout("slow"),
        StoreError("locked"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_reads_and_key_honouring_tools_retry_retryable_errors(error: KeelError) -> None:
    policy = RetryPolicy()
    assert policy.should_retry(error, "read", False, 1)
    assert policy.should_retry(error, "irreversible", True, 1)
    assert policy.should_retry(error, "reversible", True, 2)


@pytest.mark.parametrize("effect", ["reversible", "irreversible"])
def test_effects_without_keys_are_not_repeated_without_proof(effect: Effect) -> None:
    policy = RetryPolicy()
    for maybe_ran in (
        ToolTimeout("timed out after sending"),
        ToolError("502 bad gateway", retryable=True),
        StoreError("could not record the outcome"),
    ):
        decision = policy.decide(maybe_ran, effect, False, 1)
        assert not decision
        assert "reconcile" in decision.reason


@pytest.mark.parametrize("effect", ["reversible", "irreversible"])
def test_effects_without_keys_retry_when_the_error_proves_it_did_not_run(effect: Effect) -> None:
    policy = RetryPolicy()
    never_sent = ToolError("connection refused", retryable=True, context={"executed": False})
    for error in (
        RateLimited("429", retry_after=1),
        IdempotencyInFlight("running"),
        CircuitOpen("open", retry_after=5),
        never_sent,
    ):
        assert proves_not_executed(error)
        assert policy.should_retry(error, effect, False, 1)
    assert not proves_not_executed(ToolTimeout("slow"))
    assert not proves_not_executed(ValueError("x"))


def test_attempts_stop_at_max() -> None:
    policy = RetryPolicy(max_attempts=3)
    error = ToolError("503", retryable=True)
    assert policy.should_retry(error, "read", False, 1)
    assert policy.should_retry(error, "read", False, 2)
    decision = policy.decide(error, "read", False, 3)
    assert not decision
    assert "no retries left" in decision.reason
    assert not RetryPolicy(max_attempts=1).should_retry(error, "read", False, 1)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_attempts": 0},
        {"max_attempts": 1000},
        {"max_attempts": True},
        {"base_delay": -1},
        {"max_delay": 0.1, "base_delay": 1},
        {"multiplier": 0.5},
        {"jitter": "sometimes"},
    ],
)
def test_bad_settings_are_config_errors(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy(**settings)  # type: ignore[arg-type]
    assert info.value.context["key"].startswith("retry.")


def test_from_mapping() -> None:
    assert RetryPolicy.from_mapping({"max_attempts": 5, "jitter": "equal"}) == RetryPolicy(
        max_attempts=5, jitter="equal"
    )
    with pytest.raises(ConfigError, match="max_retries"):
        RetryPolicy.from_mapping({"max_retries": 5})


# -- properties ------------------------------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 100),
    base_delay=st.floats(0, 60, allow_nan=False),
    max_delay=st.floats(60, 3600, allow_nan=False),
    multiplier=st.floats(1, 100, allow_nan=False),
    jitter=st.sampled_from(["full", "equal", "none"]),
)

errors = st.one_of(
    st.sampled_from(REFUSALS),
    st.builds(ToolError, st.just("x"), retryable=st.booleans()),
    st.builds(ModelError, st.just("x"), retryable=st.booleans()),
    st.builds(StoreError, st.just("x"), retryable=st.booleans()),
    st.builds(ToolTimeout, st.just("x"), retryable=st.booleans()),
    st.builds(RateLimited, st.just("x"), retry_after=st.floats(0, 10)),
    st.builds(IdempotencyInFlight, st.just("x")),
    st.builds(CircuitOpen, st.just("x"), retry_after=st.floats(0, 10)),
)


@given(policy=policies, attempt=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_delays_are_bounded_by_max_delay(policy: RetryPolicy, attempt: int, seed: int) -> None:
    wait = policy.delay(attempt, random.Random(seed))
    assert 0 <= wait <= policy.max_delay
    assert wait == policy.delay(attempt, random.Random(seed))  # deterministic


@given(
    policy=policies,
    error=errors,
    effect=st.sampled_from(EFFECTS),
    idempotent=st.booleans(),
    attempt=st.integers(1, 200),
)
def test_never_retries_what_must_not_be_retried(
    policy: RetryPolicy, error: KeelError, effect: Effect, idempotent: bool, attempt: int
) -> None:
    retry = policy.should_retry(error, effect, idempotent, attempt)
    if retry:
        assert error.retryable
        assert attempt < policy.max_attempts
        assert not isinstance(error, PolicyDenied | AuthenticationError | UsageError)
        assert effect == "read" or idempotent or proves_not_executed(error)


@given(
    policy=policies,
    error=errors,
    effect=st.sampled_from(EFFECTS),
    idempotent=st.booleans(),
)
def test_a_retry_loop_never_exceeds_max_attempts(
    policy: RetryPolicy, error: KeelError, effect: Effect, idempotent: bool
) -> None:
    attempts = 1
    while policy.should_retry(error, effect, idempotent, attempts):
        attempts += 1
        assert attempts <= policy.max_attempts
    assert attempts <= policy.max_attempts
