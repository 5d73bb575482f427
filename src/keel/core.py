"""The vocabulary every package shares: Principal, Call, Verdict, Effect, Clock.

These are plain frozen dataclasses so the hot path pays nothing for validation it already did:
a Principal is built only from a verified token, a Call only by the gateway after schema checks.
"""

from __future__ import annotations

import datetime as _dt
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "DECISION_PRECEDENCE",
    "ZERO_COST",
    "Call",
    "Clock",
    "Cost",
    "Decision",
    "Effect",
    "Principal",
    "SystemClock",
    "Verdict",
    "new_id",
    "utcnow",
]

Effect = Literal["read", "reversible", "irreversible"]
Decision = Literal["allow", "deny", "require_approval", "escalate"]

#: Higher wins when several rules match: deny > escalate > require_approval > allow.
DECISION_PRECEDENCE: Mapping[Decision, int] = {
    "allow": 0,
    "require_approval": 1,
    "escalate": 2,
    "deny": 3,
}


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def new_id(prefix: str = "") -> str:
    """A random, URL-safe, unique id (``prefix`` + 32 hex digits)."""
    return prefix + uuid.uuid4().hex


@runtime_checkable
class Clock(Protocol):
    """Source of time. ``now`` is timezone-aware UTC; ``monotonic`` measures durations.

    Implementations must be thread-safe. Tests use ``keel.testing.FrozenClock``.
    """

    def now(self) -> _dt.datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    def now(self) -> _dt.datetime:
        return _dt.datetime.now(_dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True, slots=True)
class Cost:
    """What a call costs or may cost: money (exact, USD) and model tokens."""

    usd: Decimal = Decimal("0")
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"usd": str(self.usd)}
        if self.input_tokens or self.output_tokens:
            record["input_tokens"] = self.input_tokens
            record["output_tokens"] = self.output_tokens
        return record


ZERO_COST = Cost()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who acts: an agent, in a tenant, possibly on behalf of a human and inside a run.

    ``act`` is the delegation chain (RFC 8693 ``act`` claims), nearest actor first: if agent
    ``router`` delegated to ``refunds``, the child principal has ``agent_id="refunds"`` and
    ``act=("router",)``.
    """

    agent_id: str
    tenant: str
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    on_behalf_of: str | None = None
    run_id: str | None = None
    act: tuple[str, ...] = ()
    token_id: str | None = None
    expires_at: _dt.datetime | None = None

    def has_scope(self, scope: str) -> bool:
        """True if ``scope`` is granted exactly or by a wildcard such as ``billing:*`` or ``*``."""
        if scope in self.scopes or "*" in self.scopes:
            return True
        resource, _, _action = scope.partition(":")
        return f"{resource}:*" in self.scopes

    def to_record(self) -> dict[str, Any]:
        """The JSON-safe form stored in audit records."""
        return {
            "agent": self.agent_id,
            "tenant": self.tenant,
            "roles": sorted(self.roles),
            "on_behalf_of": self.on_behalf_of,
            "run_id": self.run_id,
            "act": list(self.act),
            "token_id": self.token_id,
        }


@dataclass(frozen=True, slots=True)
class Call:
    """One request by a principal to a tool or a model: the unit that is governed and recorded.

    ``arguments`` are already validated against the target's schema when a guard sees them.
    ``tainted`` says untrusted content (tool output, retrieved text) has entered the context
    that produced this call; policies may condition on it.
    """

    kind: Literal["tool", "model"]
    target: str
    arguments: Mapping[str, Any]
    principal: Principal
    call_id: str = field(default_factory=new_id)
    run_id: str | None = None
    step_id: str | None = None
    workflow: str | None = None
    idempotency_key: str | None = None
    tainted: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision about a call, always with the rule that made it and a readable reason.

    ``policy_hash`` identifies the exact policy content that decided. ``approvals_required`` is
    the number of distinct approvers needed (2 under the two-person rule). ``approvers`` lists the
    roles or people allowed to approve; ``escalate_to`` names the escalation target. ``shadow``
    means: record what would happen, execute nothing.
    """

    decision: Decision
    rule_id: str
    reason: str
    policy_hash: str = ""
    approvals_required: int = 0
    approvers: tuple[str, ...] = ()
    escalate_to: str | None = None
    shadow: bool = False

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "decision": self.decision,
            "rule_id": self.rule_id,
            "reason": self.reason,
            "policy_hash": self.policy_hash,
        }
        if self.approvals_required:
            record["approvals_required"] = self.approvals_required
            record["approvers"] = list(self.approvers)
        if self.escalate_to:
            record["escalate_to"] = self.escalate_to
        if self.shadow:
            record["shadow"] = True
        return record
