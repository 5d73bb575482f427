"""The demo's models: two scripted tiers priced like real small and medium models.

``triage-small`` classifies tickets (and, for the runaway ticket, keeps asking to look the order
up again, forever); ``writer-medium`` drafts replies. They are ``ScriptedModel`` providers, the
same fake the test suite uses, metered and priced through the real gateway.
"""

from __future__ import annotations

import re
from typing import Any

from keel.models import ModelRequest
from keel.testing import Reply, Rule, ScriptedModel

__all__ = ["MODEL_SETTINGS", "scripted_models"]

#: The ``models:`` section of the demo's keel.yaml (prices in USD per million tokens).
MODEL_SETTINGS: dict[str, Any] = {
    "prices": {
        "scripted:triage-small": {"input": "0.15", "output": "0.60"},
        "scripted:writer-medium": {"input": "2.50", "output": "10.00"},
    },
    "router": {
        "tiers": {"small": ["scripted:triage-small"], "medium": ["scripted:writer-medium"]},
        "task_classes": {"triage": "small", "reply": "medium"},
    },
}

_CATEGORIES = [
    (r"(?i)ignore (all )?previous|system:|as the admin|forward the full", "suspicious"),
    (r"(?i)refund|wrong item|damaged|broken|cancel", "refund"),
    (r"(?i)invoice|accountant", "billing"),
    (r"(?i)delete|removed entirely|close account", "account"),
]


_RUNAWAY = re.compile(r"(?P<order>ORD-\d+): check its status again and again")


def _runaway_order(request: ModelRequest) -> str | None:
    for message in request.messages:
        found = _RUNAWAY.search(message.content or "") if message.role == "user" else None
        if found:
            return found.group("order")
    return None


def _look_again(request: ModelRequest, _found: re.Match[str] | None) -> Reply:
    return Reply(tool_calls=[("orders.lookup", {"order_id": _runaway_order(request)})])


def scripted_models() -> tuple[ScriptedModel, ScriptedModel]:
    """``(triage, writer)``: fresh scripted providers for one demo run."""
    triage = ScriptedModel(
        [
            # The runaway: whatever the tool says, look the order up again.
            Rule(lambda request: _runaway_order(request) is not None, _look_again),
            *(Rule(pattern, Reply(text=f"category: {name}")) for pattern, name in _CATEGORIES),
        ],
        default="category: status",
        name="scripted",
    )
    writer = ScriptedModel(
        [
            Rule(
                r"(?i)status: (?P<status>\w+)",
                Reply(
                    text="Hello, and thank you for your patience. Your order is $status; you "
                    "will receive a confirmation by email as soon as it reaches you. If "
                    "anything else comes up, reply to this message and we will help."
                ),
            )
        ],
        default="Thank you for contacting us; we are looking into it.",
        name="scripted",
    )
    return triage, writer
