"""The circuit breaker guard: stop calling a target that keeps failing (ATTACKS.md #38).

One breaker per target (tool or model name)::

    closed ──(too many failures in the window)──▶ open ──(open_for elapsed)──▶ half-open
      ▲                                            ▲                              │
      └──────────────(probe succeeds)──────────────┼──────────────────────────────┤
                                                   └───────(probe fails)──────────┘

- **closed**: calls pass; outcomes go into a rolling window of ``window`` seconds. The breaker
  trips when the window holds ``failure_threshold`` failures, or when it holds at least
  ``min_calls`` outcomes of which a fraction ``error_rate`` or more failed.
- **open**: calls are refused at once, without reaching the target, with ``CircuitOpen``
  (retryable, ``retry_after_seconds`` = the time left, rule id ``breaker:<target>``).
- **half-open**: after ``open_for`` seconds up to ``half_open_max_calls`` probe calls pass;
  others are refused. A probe that succeeds closes the circuit (with a fresh window); one that
  fails opens it again for ``open_for``. A probe that never executed (stopped by a later guard,
  answered from an idempotency record, shadowed) frees its slot and decides nothing.

What counts as a failure: the target failed while executing — ``ToolError`` (timeouts and
invalid results included), ``ModelError``, ``TimeoutError``. Refusals never count: a policy
denial, a kill switch, a budget or rate limit stop the call before it runs (the gateway calls
``abort``, not ``after``), and other ``KeelError``s a tool raises (an upstream 4xx mapped to a
usage or authorization error) say nothing about the target's health. Outcomes of calls that were
admitted while closed but finish after the circuit opened are ignored.

The window is bucketed (ten buckets of ``window / 10`` seconds): memory is constant per target
whatever the call rate, and an outcome leaves the window between ``0.9 * window`` and ``window``
seconds after it happened.

State is in-process and in memory: each process has its own breakers (a restart closes them all).
Time is the clock's ``monotonic()``. Thread-safe: one lock guards all targets and is held only for
a few arithmetic operations; ``after`` never blocks inside the record transaction.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final, Literal

from keel.core import Clock
from keel.errors import ConfigError, ModelError, ToolError
from keel.gateway.context import CallContext
from keel.gateway.guards import Guard
from keel.store import Transaction

__all__ = ["BreakerState", "BreakerStatus", "CircuitBreakerGuard", "CircuitOpen"]

BreakerStatus = Literal["closed", "open", "half_open"]

_BUCKETS: Final = 10
#: Failures of the target itself; everything else is neutral.
_FAILURES: Final[tuple[type[BaseException], ...]] = (ToolError, ModelError, TimeoutError)


class CircuitOpen(ToolError):
    """The target's circuit breaker is open: the call was refused without reaching it.

    Retryable after ``retry_after`` seconds (also ``context["retry_after_seconds"]``); the
    context names the ``target`` and the rule id ``breaker:<target>``.
    """

    code = "circuit_open"
    retryable_default = True

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.context.setdefault("retry_after_seconds", round(retry_after, 3))


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A snapshot of one target's breaker, for metrics and the dashboard.

    ``calls`` and ``failures`` count the outcomes in the current window (closed state).
    ``retry_after_seconds`` is the time until an open circuit admits a probe (0 otherwise).
    ``trips`` counts how often the circuit opened since the process started. ``opened_at`` is
    the wall-clock time it last opened; ``last_error`` the code of the last counted failure.
    """

    target: str
    status: BreakerStatus
    calls: int = 0
    failures: int = 0
    retry_after_seconds: float = 0.0
    probes_in_flight: int = 0
    trips: int = 0
    opened_at: _dt.datetime | None = None
    last_error: str | None = None

    @property
    def error_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "calls": self.calls,
            "failures": self.failures,
            "error_rate": round(self.error_rate, 4),
            "retry_after_seconds": round(self.retry_after_seconds, 3),
            "probes_in_flight": self.probes_in_flight,
            "trips": self.trips,
            "opened_at": self.opened_at.isoformat() if self.opened_at else None,
            "last_error": self.last_error,
        }


class _Window:
    """Outcome counts over the last ``_BUCKETS`` buckets of ``width`` seconds."""

    __slots__ = ("_buckets", "_width", "calls", "failures")

    def __init__(self, width: float) -> None:
        self._width = width
        self._buckets: deque[list[int]] = deque()  # [bucket index, calls, failures]
        self.calls = 0
        self.failures = 0

    def _prune(self, index: int) -> None:
        buckets = self._buckets
        while buckets and buckets[0][0] <= index - _BUCKETS:
            _old, calls, failures = buckets.popleft()
            self.calls -= calls
            self.failures -= failures

    def record(self, now: float, failed: bool) -> None:
        index = int(now // self._width)
        self._prune(index)
        buckets = self._buckets
        if buckets and buckets[-1][0] >= index:
            bucket = buckets[-1]  # a clock that never goes back; equal or newer: same bucket
        else:
            bucket = [index, 0, 0]
            buckets.append(bucket)
        bucket[1] += 1
        self.calls += 1
        if failed:
            bucket[2] += 1
            self.failures += 1

    def counts(self, now: float) -> tuple[int, int]:
        self._prune(int(now // self._width))
        return self.calls, self.failures

    def clear(self) -> None:
        self._buckets.clear()
        self.calls = self.failures = 0


class _Breaker:
    """One target's mutable state; guarded by the owning guard's lock."""

    __slots__ = (
        "generation",
        "last_error",
        "open_until",
        "opened_at",
        "probes",
        "status",
        "trips",
        "window",
    )

    def __init__(self, width: float) -> None:
        self.status: BreakerStatus = "closed"
        self.window = _Window(width)
        self.open_until = 0.0
        self.opened_at: _dt.datetime | None = None
        self.probes = 0
        self.trips = 0
        self.generation = 0
        self.last_error: str | None = None


@dataclass(frozen=True, slots=True)
class _Probe:
    target: str
    generation: int


class CircuitBreakerGuard(Guard):
    """Refuses calls to a failing target; lets a probe through after a pause (module docstring).

    ``targets`` limits the breaker to those tool or model names (default: every target).
    Place it after the policy and budget guards and before idempotency and approval, as
    ``App(extra_guards=[...])`` does, so refused calls cost nothing and probes are released when a
    later guard stops them.
    """

    name = "circuit_breaker"
    keyed_safe = True  # its state lives in memory; nothing is written in the transaction

    def __init__(
        self,
        clock: Clock,
        *,
        failure_threshold: int = 5,
        window: float = 60.0,
        error_rate: float = 0.5,
        min_calls: int = 20,
        open_for: float = 30.0,
        half_open_max_calls: int = 1,
        targets: Collection[str] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError("breaker failure_threshold must be at least 1")
        if not 0 < error_rate <= 1:
            raise ConfigError("breaker error_rate must be above 0 and at most 1")
        if min_calls < 1:
            raise ConfigError("breaker min_calls must be at least 1")
        if window <= 0 or open_for <= 0:
            raise ConfigError("breaker window and open_for must be positive seconds")
        if half_open_max_calls < 1:
            raise ConfigError("breaker half_open_max_calls must be at least 1")
        self._clock = clock
        self.failure_threshold = failure_threshold
        self.window = float(window)
        self.error_rate = float(error_rate)
        self.min_calls = min_calls
        self.open_for = float(open_for)
        self.half_open_max_calls = half_open_max_calls
        self._only = frozenset(targets) if targets is not None else None
        self._width = self.window / _BUCKETS
        self._lock = threading.Lock()
        self._breakers: dict[str, _Breaker] = {}
        self._probes: dict[int, tuple[CallContext, _Probe]] = {}

    # -- the guard -----------------------------------------------------------------------------

    def before(self, ctx: CallContext) -> None:
        call = ctx.call
        assert call is not None
        target = call.target
        if self._only is not None and target not in self._only:
            return
        breaker = self._breakers.get(target)
        if breaker is None or breaker.status == "closed":
            # Unlocked fast path: a call slipping in as the circuit opens is harmless (its
            # outcome is ignored once the circuit is open).
            return
        if self._admit(ctx, target, breaker, self._clock.monotonic()):
            ctx.notes["breaker"] = "probe"

    def _admit(self, ctx: CallContext, target: str, breaker: _Breaker, now: float) -> bool:
        """Refuse, or admit (True: as a half-open probe holding a slot until ``after``/``done``)."""
        with self._lock:
            if breaker.status == "closed":
                return False
            if breaker.status == "open":
                if now < breaker.open_until:
                    raise self._refuse(target, breaker, breaker.open_until - now)
                breaker.status = "half_open"
                breaker.probes = 0
                breaker.generation += 1
            if breaker.probes >= self.half_open_max_calls:
                # A probe is out; its answer decides. Try again shortly, not after open_for.
                raise self._refuse(target, breaker, min(self.open_for, 1.0))
            breaker.probes += 1
            self._probes[id(ctx)] = (ctx, _Probe(target, breaker.generation))
            return True

    def after(self, ctx: CallContext, tx: Transaction) -> None:
        call = ctx.call
        if call is None:
            return
        target = call.target
        if self._only is not None and target not in self._only:
            return
        if ctx.replay is not None or ctx.notes.get("shadow"):
            return  # the target was not called; ``done`` frees a probe slot
        error = ctx.error
        failed = error is not None and isinstance(error, _FAILURES)
        if error is not None and not failed:
            return  # neutral: says nothing about the target's health
        now = self._clock.monotonic()
        with self._lock:
            held = self._probes.pop(id(ctx), None)
            breaker = self._breakers.get(target)
            if breaker is None:
                breaker = self._breakers[target] = _Breaker(self._width)
            if failed:
                breaker.last_error = str(getattr(error, "code", type(error).__name__))
            if held is not None:
                if breaker.status == "half_open" and held[1].generation == breaker.generation:
                    breaker.probes -= 1
                    if failed:
                        self._open(breaker, now)
                    else:
                        self._close(breaker)
                return
            if breaker.status != "closed":
                return  # admitted before the circuit opened: too late to matter
            breaker.window.record(now, failed)
            if failed and self._trips(breaker.window):
                self._open(breaker, now)

    def done(self, ctx: CallContext) -> None:
        if not self._probes:  # only this thread adds this ctx: no lock needed to miss it
            return
        with self._lock:
            held = self._probes.pop(id(ctx), None)
            if held is None:
                return
            breaker = self._breakers.get(held[1].target)
            if (
                breaker is not None
                and breaker.status == "half_open"
                and breaker.generation == held[1].generation
            ):
                breaker.probes -= 1

    # -- transitions (lock held) ---------------------------------------------------------------

    def _trips(self, window: _Window) -> bool:
        calls, failures = window.calls, window.failures
        if failures >= self.failure_threshold:
            return True
        return calls >= self.min_calls and failures >= self.error_rate * calls

    def _open(self, breaker: _Breaker, now: float) -> None:
        breaker.status = "open"
        breaker.open_until = now + self.open_for
        breaker.opened_at = self._clock.now()
        breaker.probes = 0
        breaker.trips += 1
        breaker.generation += 1
        breaker.window.clear()

    def _close(self, breaker: _Breaker) -> None:
        breaker.status = "closed"
        breaker.probes = 0
        breaker.generation += 1
        breaker.window.clear()

    def _refuse(self, target: str, breaker: _Breaker, retry_after: float) -> CircuitOpen:
        state = "open" if breaker.status == "open" else "half-open, a probe call is in flight"
        return CircuitOpen(
            f"circuit breaker for {target} is {state} after repeated failures "
            f"(last: {breaker.last_error or 'unknown'}); retry in {retry_after:.1f} s",
            retry_after=retry_after,
            context={"rule_id": f"breaker:{target}", "target": target},
        )

    # -- observation ---------------------------------------------------------------------------

    def state(self, target: str) -> BreakerState:
        """A snapshot of ``target``'s breaker (closed and empty if it has seen no outcome)."""
        now = self._clock.monotonic()
        with self._lock:
            breaker = self._breakers.get(target)
            if breaker is None:
                return BreakerState(target=target, status="closed")
            return self._snapshot(target, breaker, now)

    def states(self) -> list[BreakerState]:
        """Snapshots of every target that has a breaker, sorted by target."""
        now = self._clock.monotonic()
        with self._lock:
            return [self._snapshot(t, b, now) for t, b in sorted(self._breakers.items())]

    def _snapshot(self, target: str, breaker: _Breaker, now: float) -> BreakerState:
        status = breaker.status
        retry_after = 0.0
        if status == "open":
            if now >= breaker.open_until:
                status = "half_open"  # the next call is a probe
            else:
                retry_after = breaker.open_until - now
        calls, failures = breaker.window.counts(now)
        return BreakerState(
            target=target,
            status=status,
            calls=calls,
            failures=failures,
            retry_after_seconds=retry_after,
            probes_in_flight=breaker.probes if breaker.status == "half_open" else 0,
            trips=breaker.trips,
            opened_at=breaker.opened_at,
            last_error=breaker.last_error,
        )

    def reset(self, target: str | None = None) -> None:
        """Close ``target``'s breaker (every breaker if None), e.g. after an operator's fix."""
        with self._lock:
            for name, breaker in self._breakers.items():
                if target is None or name == target:
                    self._close(breaker)
