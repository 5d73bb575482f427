"""The governed call: the guard chain and the single chokepoint that composes it."""

from __future__ import annotations

from keel.gateway.budget import LedgerGuard, LimitsCache, LimitsSource, RateLimitGuard
from keel.gateway.context import CallContext, CallRequest, CallResult
from keel.gateway.gateway import Gateway
from keel.gateway.guards import (
    ApprovalGate,
    AuthenticateGuard,
    Authenticator,
    Decider,
    Guard,
    IdempotencyGuard,
    KillSwitchGuard,
    PolicyGuard,
    ResolveGuard,
    Resolver,
    ResponseCacheGuard,
    ScopeGuard,
)
from keel.gateway.idempotency import IdempotencyKeys
from keel.gateway.killswitch import KillScope, KillSwitch, KillSwitches

__all__ = [
    "ApprovalGate",
    "AuthenticateGuard",
    "Authenticator",
    "CallContext",
    "CallRequest",
    "CallResult",
    "Decider",
    "Gateway",
    "Guard",
    "IdempotencyGuard",
    "IdempotencyKeys",
    "KillScope",
    "KillSwitch",
    "KillSwitchGuard",
    "KillSwitches",
    "LedgerGuard",
    "LimitsCache",
    "LimitsSource",
    "PolicyGuard",
    "RateLimitGuard",
    "ResolveGuard",
    "Resolver",
    "ResponseCacheGuard",
    "ScopeGuard",
]
