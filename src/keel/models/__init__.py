"""Models: one provider interface, HTTP providers, prices, routing, a response cache, token
estimates. Knows nothing of governance: the gateway meters, authorizes and records model calls.

- ``types``: ``ModelRequest`` / ``ModelResponse`` / ``StreamChunk`` and their parts;
- ``provider``: the ``Provider`` protocol, ``complete_sync``, ``collect``;
- ``openai`` / ``anthropic``: providers over httpx, with ``RetryPolicy``;
- ``tokens``: the documented token estimator used to reserve budget;
- ``prices``: ``PriceBook`` (genai-prices + overrides), exact ``Decimal`` costs, worst case;
- ``router``: tiers, rules by task class / risk / sensitivity, cascade;
- ``cache``: exact-match, tenant-scoped response cache with TTL.

Fakes for tests (``ScriptedModel``, HTTP stand-ins) live in ``keel.testing``.
"""

from __future__ import annotations

from keel.models._http import RetryPolicy
from keel.models.anthropic import DEFAULT_ANTHROPIC_VERSION, AnthropicProvider
from keel.models.cache import CacheStats, ResponseCache
from keel.models.openai import OpenAIProvider
from keel.models.prices import ModelPrice, PriceBook, PriceTier, worst_case
from keel.models.provider import Provider, collect, complete_sync
from keel.models.router import RouteDecision, Router, RouterConfig, Target
from keel.models.tokens import (
    estimate_input_tokens,
    estimate_output_tokens,
    estimate_text_tokens,
)
from keel.models.types import (
    MAX_N,
    MAX_STOP_SEQUENCES,
    MAX_TOKENS_CAP,
    Choice,
    FinishReason,
    Message,
    ModelRequest,
    ModelResponse,
    Role,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    ToolDef,
    Usage,
)

__all__ = [
    "DEFAULT_ANTHROPIC_VERSION",
    "MAX_N",
    "MAX_STOP_SEQUENCES",
    "MAX_TOKENS_CAP",
    "AnthropicProvider",
    "CacheStats",
    "Choice",
    "FinishReason",
    "Message",
    "ModelPrice",
    "ModelRequest",
    "ModelResponse",
    "OpenAIProvider",
    "PriceBook",
    "PriceTier",
    "Provider",
    "ResponseCache",
    "RetryPolicy",
    "Role",
    "RouteDecision",
    "Router",
    "RouterConfig",
    "StreamChunk",
    "Target",
    "ToolCall",
    "ToolCallDelta",
    "ToolDef",
    "Usage",
    "collect",
    "complete_sync",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "estimate_text_tokens",
    "worst_case",
]
