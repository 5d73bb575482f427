"""The governed call: the guard chain and the single chokepoint that composes it."""

from __future__ import annotations

from keel.gateway.approval import ApprovalGuard
from keel.gateway.breaker import BreakerState, BreakerStatus, CircuitBreakerGuard, CircuitOpen
from keel.gateway.budget import LedgerGuard, LimitsCache, LimitsSource, RateLimitGuard
from keel.gateway.context import CallContext, CallRequest, CallResult
from keel.gateway.gateway import CallObserver, Gateway, OpenCall
from keel.gateway.guards import (
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
    "ApprovalGuard",
    "AuthenticateGuard",
    "Authenticator",
    "BreakerState",
    "BreakerStatus",
    "CallContext",
    "CallObserver",
    "CallRequest",
    "CallResult",
    "CircuitBreakerGuard",
    "CircuitOpen",
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
    "OpenCall",
    "PolicyGuard",
    "RateLimitGuard",
    "ResolveGuard",
    "Resolver",
    "ResponseCacheGuard",
    "ScopeGuard",
]
