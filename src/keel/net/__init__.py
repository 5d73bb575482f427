"""Outbound network access for tools: the SSRF-safe egress policy and the pinned HTTP client."""

from __future__ import annotations

from keel.net.egress import (
    DEFAULT_MAX_RESPONSE_BYTES,
    METADATA_ADDRESSES,
    EgressClient,
    EgressPolicy,
    EgressResponse,
    Resolver,
    Target,
)

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "METADATA_ADDRESSES",
    "EgressClient",
    "EgressPolicy",
    "EgressResponse",
    "Resolver",
    "Target",
]
