"""When a failed step may be tried again, and how long to wait first (ATTACKS.md #38).

``RetryPolicy`` is pure: no clock, no sleeping, no state. The runtime asks ``decide`` after each
failed attempt and waits ``delay_for`` before the next one (durably, as a timer), so a policy is
deterministic under a seeded ``random.Random`` and safe to share between threads.

The rules, in order (the first that applies decides):

1. ``attempt`` (1-based, the attempt that just failed) has reached ``max_attempts``: stop. The
   run ends ``failed`` with the last error (the dead-letter set) and may be re-driven.
2. The error is not a ``KeelError``: stop (the gateway wraps tool exceptions; anything else is a
   bug to surface, not to retry).
3. Refusals are final whatever their ``retryable`` flag says: ``AuthenticationError``,
   ``AuthorizationError`` (policy, kill switch, budget, approval), ``UsageError`` (bad input or
   config) and ``ConflictError`` — except ``IdempotencyInFlight``, which means "the same key is
   executing right now; its outcome will be there soon".
4. ``error.retryable`` is False: stop.
5. The effect decides whether running the tool again is safe:
   - ``read`` tools, and tools that honour idempotency keys (``ToolSpec.idempotent``; the retry
     reuses the step's key, so the system of record applies the effect at most once): retry.
   - ``reversible`` and ``irreversible`` tools that do not honour keys: retry **only if the error
     proves the tool did not run** (``proves_not_executed``), because a second run could repeat
     the effect (a second refund, a second email).

What proves that a call did not run
    The error was raised before the adapter was invoked, or by the remote side refusing the
    request before acting on it:
    - ``RateLimited`` — a rate-limit guard refused the call, or the upstream answered 429;
    - ``IdempotencyInFlight`` — the idempotency guard refused a duplicate;
    - ``CircuitOpen`` — the circuit breaker refused the call;
    - any ``KeelError`` whose ``context["executed"]`` is ``False``: adapters set it when the
      request provably never left (connection refused, DNS failure, TLS handshake failure).
    A timeout, a 5xx answer, a dropped connection after sending, or a store error while recording
    prove nothing: the effect may have happened. Those steps go to reconciliation, not to a retry.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from keel.core import Effect
from keel.errors import (
    AuthenticationError,
    AuthorizationError,
    ConfigError,
    ConflictError,
    IdempotencyInFlight,
    KeelError,
    RateLimited,
    UsageError,
)
from keel.gateway.breaker import CircuitOpen

__all__ = ["Jitter", "RetryDecision", "RetryPolicy", "proves_not_executed"]

Jitter = Literal["full", "equal", "none"]

_JITTERS: Final = ("full", "equal", "none")
_MAX_ATTEMPTS: Final = 100
_MAX_SECONDS: Final = 86_400.0
#: Refused before the adapter ran: the call certainly had no effect.
_NOT_EXECUTED: Final[tuple[type[KeelError], ...]] = (RateLimited, IdempotencyInFlight, CircuitOpen)
_FINAL: Final[tuple[type[KeelError], ...]] = (
    AuthenticationError,
    AuthorizationError,
    UsageError,
    ConflictError,
)


def proves_not_executed(error: BaseException) -> bool:
    """Whether ``error`` proves the call never reached the tool (see the module docstring)."""
    if not isinstance(error, KeelError):
        return False
    if error.context.get("executed") is False:
        return True
    return isinstance(error, _NOT_EXECUTED)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """The answer of ``RetryPolicy.decide``: whether to retry, and why (for the record)."""

    retry: bool
    reason: str

    def __bool__(self) -> bool:
        return self.retry


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a failed step is retried.

    Up to ``max_attempts`` attempts in all (1 = never retry). After failed attempt *k* the wait is
    drawn from the backoff ``min(max_delay, base_delay * multiplier**(k-1))``:
    ``full`` jitter draws uniformly from ``[0, backoff]`` (AWS "full jitter": spreads a herd of
    retries best), ``equal`` from ``[backoff/2, backoff]``, ``none`` waits exactly ``backoff``.
    Immutable and thread-safe.
    """

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not 1 <= self.max_attempts <= _MAX_ATTEMPTS:
            raise ConfigError(
                f"retry max_attempts must be a whole number from 1 to {_MAX_ATTEMPTS}, "
                f"got {self.max_attempts!r}",
                context={"key": "retry.max_attempts"},
            )
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value <= _MAX_SECONDS):
                raise ConfigError(
                    f"retry {name} must be from 0 to {_MAX_SECONDS:.0f} seconds, got {value!r}",
                    context={"key": f"retry.{name}"},
                )
        if self.max_delay < self.base_delay:
            raise ConfigError(
                f"retry max_delay ({self.max_delay}) must not be below base_delay "
                f"({self.base_delay})",
                context={"key": "retry.max_delay"},
            )
        if not (isinstance(self.multiplier, int | float) and 1 <= self.multiplier <= 100):
            raise ConfigError(
                f"retry multiplier must be from 1 to 100, got {self.multiplier!r}",
                context={"key": "retry.multiplier"},
            )
        if self.jitter not in _JITTERS:
            raise ConfigError(
                f"retry jitter must be one of {', '.join(_JITTERS)}, got {self.jitter!r}",
                context={"key": "retry.jitter"},
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RetryPolicy:
        """Build from a config mapping with these field names; unknown keys are refused."""
        known = {"max_attempts", "base_delay", "max_delay", "multiplier", "jitter"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown retry setting {unknown[0]!r}; accepted: {', '.join(sorted(known))}",
                context={"key": f"retry.{unknown[0]}"},
            )
        return cls(**dict(data))

    # -- waiting -------------------------------------------------------------------------------

    def backoff(self, attempt: int) -> float:
        """The jitter-free wait after failed attempt ``attempt`` (1-based), at most max_delay."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        try:
            raw = self.base_delay * math.pow(self.multiplier, attempt - 1)
        except OverflowError:
            raw = math.inf
        return min(self.max_delay, raw)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt``: in ``[0, max_delay]`` always."""
        cap = self.backoff(attempt)
        if self.jitter == "full":
            wait = rng.uniform(0.0, cap)
        elif self.jitter == "equal":
            wait = rng.uniform(cap / 2.0, cap)
        else:
            wait = cap
        return min(max(wait, 0.0), self.max_delay)

    def delay_for(self, error: BaseException, attempt: int, rng: random.Random) -> float:
        """``delay``, but never less than the error's retry-after hint.

        ``RateLimited.retry_after`` or ``context["retry_after_seconds"]`` (a circuit breaker's
        remaining open time) may exceed ``max_delay``: the side that refused knows best, and a
        retry before it is pointless.
        """
        wait = self.delay(attempt, rng)
        hint = getattr(error, "retry_after", None)
        if hint is None and isinstance(error, KeelError):
            hint = error.context.get("retry_after_seconds")
        if isinstance(hint, int | float) and not isinstance(hint, bool) and math.isfinite(hint):
            wait = max(wait, float(hint))
        return wait

    # -- deciding ------------------------------------------------------------------------------

    def decide(
        self, error: BaseException, effect: Effect, idempotent: bool, attempt: int
    ) -> RetryDecision:
        """Whether to try again after failed attempt ``attempt`` (1-based), with the reason.

        ``effect`` and ``idempotent`` come from the tool's contract (``ToolSpec``; model calls
        are ``read``). See the module docstring for the rules.
        """
        if attempt >= self.max_attempts:
            return RetryDecision(
                False, f"attempt {attempt} of {self.max_attempts}: no retries left"
            )
        if not isinstance(error, KeelError):
            return RetryDecision(False, f"{type(error).__name__} is not a Keel error")
        if isinstance(error, _FINAL) and not isinstance(error, IdempotencyInFlight):
            return RetryDecision(False, f"{error.code} is a refusal; retrying cannot change it")
        if not error.retryable:
            return RetryDecision(False, f"{error.code} is not retryable")
        if effect == "read":
            return RetryDecision(True, f"{error.code} is retryable and the tool only reads")
        if idempotent:
            return RetryDecision(
                True, f"{error.code} is retryable and the tool honours idempotency keys"
            )
        if proves_not_executed(error):
            return RetryDecision(True, f"{error.code} proves the {effect} call did not run")
        return RetryDecision(
            False,
            f"the {effect} tool does not honour idempotency keys and {error.code} does not "
            "prove it did not run: reconcile instead of repeating the effect",
        )

    def should_retry(
        self, error: BaseException, effect: Effect, idempotent: bool, attempt: int
    ) -> bool:
        """``decide(...).retry``."""
        return self.decide(error, effect, idempotent, attempt).retry
