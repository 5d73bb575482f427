from __future__ import annotations

import datetime as _dt
import threading

__all__ = ["FrozenClock"]


class FrozenClock:
    """A clock that only moves when told to. Thread-safe; implements ``keel.core.Clock``.

    ``now()`` starts at ``start`` (default 2026-01-01T00:00:00Z); ``advance(seconds=...)`` moves
    both ``now()`` and ``monotonic()``; ``set(dt)`` jumps ``now()`` (also backwards, to test clock
    jumps) without touching ``monotonic()``.
    """

    def __init__(self, start: _dt.datetime | None = None) -> None:
        start = start or _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware start time")
        self._now = start.astimezone(_dt.UTC)
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self) -> _dt.datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float = 0.0, **delta: float) -> None:
        step = _dt.timedelta(seconds=seconds, **delta)
        with self._lock:
            self._now += step
            self._mono += step.total_seconds()

    def set(self, when: _dt.datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("FrozenClock.set needs a timezone-aware time")
        with self._lock:
            self._now = when.astimezone(_dt.UTC)
