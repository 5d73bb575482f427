"""Public fakes for testing code built on Keel: a frozen clock, fake tools, a scripted model and
HTTP stand-ins that speak the OpenAI and Anthropic wire formats on 127.0.0.1.

Use these instead of mocks: they implement the same interfaces as the real parts.
"""

from __future__ import annotations

from keel.testing._clock import FrozenClock
from keel.testing._model import FaultPlan, Reply, Rule, ScriptedModel
from keel.testing._standins import (
    AnthropicStandIn,
    OpenAIStandIn,
    RecordedRequest,
    StandInFault,
    StandInReply,
)
from keel.testing._tools import RecordingTool

__all__ = [
    "AnthropicStandIn",
    "FaultPlan",
    "FrozenClock",
    "OpenAIStandIn",
    "RecordedRequest",
    "RecordingTool",
    "Reply",
    "Rule",
    "ScriptedModel",
    "StandInFault",
    "StandInReply",
]
