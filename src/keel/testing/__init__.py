"""Public fakes for testing code built on Keel: a frozen clock and fake tools.

Use these instead of mocks: they implement the same interfaces as the real parts.
"""

from __future__ import annotations

from keel.testing._clock import FrozenClock
from keel.testing._tools import RecordingTool

__all__ = ["FrozenClock", "RecordingTool"]
