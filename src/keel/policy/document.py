"""Policy documents: the YAML format reference and the normalized, typed document.

Policy file format
==================

A policy is one YAML document (a mapping). Unknown keys, duplicate keys, tags other than plain
values, YAML merge keys and multi-document files are errors, reported as
``<file>:<line>: key '<dotted.key>': <problem>`` (for example
``refunds.yaml:12: key 'rules[2].decision': 'alow' is not one of allow, deny, require_approval,
escalate (did you mean 'allow'?)``). List indexes in keys count from 0; keys that are tool names
are written in brackets (``constraints[billing.refund].amount.max``).

Scalars follow a strict schema: only ``true``/``false`` are booleans (``yes``, ``no``, ``on``,
``NO`` are strings), ``17:00`` is a string, and numbers are read exactly as written into
``Decimal`` (money is never a float). A quoted number (``"19.99"``) is accepted where a number
is expected.

.. code-block:: yaml

    policy: support-refunds        # required: the document's name
    version: 3                     # optional, default "1"; recorded in the policy hash
    description: Support agents    # optional free text

    scope:                         # optional; an omitted field matches everything
      tenant: acme                 # a name or a list; glob patterns allowed
      agents: [support-bot]        # the principal's agent_id
      workflows: [refunds]         # the call's workflow; a listed workflow never matches a call
                                   # made outside any workflow
    agent: Procurement-Agent-v2    # seed shorthand for scope.agents: [Procurement-Agent-v2]

    autonomy: L3                   # L0..L4, default L3 (see "Autonomy" below)
    shadow: false                  # true: record every tool call's verdict, execute nothing
    escalation: human_review       # escalate_to on escalate / require_approval verdicts
    approvers: [support-lead]      # default approvers (roles or people) for approval verdicts

    tools:
      allow: [orders.lookup, "tickets.*"]   # allowlist (glob: * and ? only; * spans dots)
      deny: ["billing.delete_*"]            # explicit deny list; beats every allow
    allowlisted_tools: [...]       # seed spelling of tools.allow (give one of the two)
    models:                        # model calls (Call.kind == "model"), matched on Call.target
      allow: ["gpt-4o*"]
      deny: []

    approval_required: [github.repo.delete]     # these tools always need one approval
    two_person_rule: [procurement.wire_transfer] # these need two distinct approvers, always

    require_approval_if_over:      # approval when a numeric argument is strictly greater
      billing.refund: 200          #   tool: number        -> the tool's `amount` argument
      procurement.purchase:        #   tool: {arg: number} -> named arguments
        amount: 5000
    # seed flat form: `require_approval_if_over: 5000` = the `amount` argument of every tool

    constraints:                   # per tool pattern, per argument; a violation denies
      billing.refund:
        amount: {min: 0.01, max: 1000}      # inclusive bounds, compared as Decimal
        currency: {in: [USD, EUR]}
        destination: {pattern: "original_payment_method|acct_[0-9a-z]{8,32}"}
        reason: {max_length: 500, required: false}
    allowed_vendors: [Vendor_A, Vendor_B]   # constraint on every tool's `vendor` argument
                                            # (checked only when the argument is present)

    deny_external_email: true      # deny addresses outside internal_domains (all, if none given)
    internal_domains: [example.com]          # "*.example.com" also admits subdomains
    email_tools: ["*"]             # optional: tools checked (default: every tool)
    email_arguments: [to, cc, bcc] # optional: arguments checked (default: to, cc, bcc)

    time_windows:
      - id: refunds-business-hours           # optional, default time_windows[<index>]
        tools: [billing.refund]
        timezone: America/New_York           # IANA name, UTC, or an offset such as +02:00
        during:                              # open slots (any one suffices)
          - {days: mon-fri, hours: "09:00-17:00"}
          - {days: [sat], hours: "10:00-14:00"}
        outside: require_approval            # deny (default), require_approval or escalate
        reason: refunds are reviewed outside business hours

    rules:
      - id: tainted-refund-review            # required, unique in the document
        tool: billing.refund                 # or tools: [patterns]
        when:                                # optional; every condition given must hold
          arguments: {amount: {gt: 50}}      # same operators as constraints (not `required`)
          tainted: true                      # untrusted content entered the run
          roles: [trainee]                   # principal has at least one of these roles
          not_roles: [supervisor]            # principal has none of these roles
          effect: [irreversible]             # the tool's effect is one of these
        decision: escalate                   # allow | deny | require_approval | escalate
        reason: refunds after reading untrusted text go to a person
        approvers: [fraud-team]              # optional, approval/escalate only
        approvals_required: 2                # optional, approval/escalate only (default 1)
        escalate_to: fraud_review            # optional, escalate only (default: escalation)

    # Caps: parsed and exposed as CompiledPolicy.caps; enforced by the ledger, not evaluate().
    spending_limit_usd: 10000
    max_tokens_per_task: 12000
    max_tool_calls_per_task: 25
    reflection_loop_cap: 25

The seed's nested form is also accepted: a file whose only top-level key is ``policy`` holding
a mapping is read as that mapping (its name is ``name:`` inside it, else its ``agent:``).

Argument operators
------------------
``min``/``max`` (inclusive) and ``gt``/``lt`` (strict) compare numbers as ``Decimal``; a value is
a number if it is an int, a finite float (read through its shortest repr, so ``0.1`` is one
tenth), a Decimal or a numeric string; booleans are not numbers. ``in``/``not_in`` compare
exactly and by type (``"200"`` is not ``200``; ``1`` is not ``true``). ``pattern`` is a Python
regular expression that must match the whole string. ``email_domains`` admits a string of
comma-separated addresses (``Name <a@b>`` allowed) or a list of them, each with a domain in the
list; anything a mail parser could read two ways (two ``@``, text around ``<...>``, quoted
display names) fails. ``min_length``/``max_length`` bound a string's or list's length. In a
constraint a value of the wrong type fails (fail closed), and a missing argument fails unless
``required: false``.
In a rule's ``when.arguments`` a missing argument makes the condition false; a value of the wrong
type makes it true for deny/escalate/require_approval rules and false for allow rules (fail
closed both ways).

Evaluation
----------
Every call is checked against every *applicable* document (scope matches the principal's tenant
and agent and the call's workflow). Each document contributes matches; the verdict is the
strongest by ``keel.core.DECISION_PRECEDENCE``: deny > escalate > require_approval > allow
(among approvals, the one needing more approvers wins).

- **Default deny**: a tool call is denied (rule ``default-deny``) unless some applicable document
  allowlists the tool (``tools.allow``) or one of its ``allow`` rules matches the call. Model calls
  are likewise denied unless a ``models.allow`` pattern matches.
- ``tools.deny`` / ``models.deny`` deny outright, whatever else matches.
- ``approval_required`` tools need one approval, ``two_person_rule`` tools two; thresholds need one.
- Constraints, ``allowed_vendors`` and ``deny_external_email`` deny on violation. Thresholds,
  time windows and rules decide as written.
- Ties (same decision) go to the first match in this order: tool/model deny, allowlist,
  ``approval_required``, ``two_person_rule``, autonomy, then per document constraints,
  ``allowed_vendors``, thresholds, external email, time windows, rules in file order; documents in
  the order the PolicySet was given.
- Approval verdicts carry ``approvals_required`` (1, or 2 under the two-person rule or a rule's
  setting), ``approvers`` (the rule's, else the document's) and ``escalate_to`` (the rule's, else
  the document's ``escalation``). Escalate verdicts carry the same.
- ``policy_hash`` is the hash of the one applicable document, or for several the combined hash
  ``keel.canonical.digest([hash, ...])`` over their hashes in PolicySet order; when no document
  applies it is the PolicySet's own hash (the combined hash of all its documents).

Autonomy
--------
``effect`` is the tool's declared effect: ``read``, ``reversible`` or ``irreversible``.

- **L0 suggest**: reads run as decided; every non-read tool call gets ``shadow=True`` (its
  verdict is recorded as decided, nothing executes, no approval is requested).
- **L1 recommend**: every non-read tool call needs approval (rule ``autonomy.L1``).
- **L2 reversible**: reversible calls run within policy; irreversible ones need approval
  (rule ``autonomy.L2``).
- **L3 bounded** (default): calls run when the policy allows them.
- **L4 high autonomy**: evaluated exactly like L3 by this engine; the level is exposed for the
  runtime (e.g. multi-step plans without per-step check-ins).

``shadow: true`` marks every tool call's verdict ``shadow=True``, reads included: the decision is
recorded, nothing executes. Model calls are never shadowed. With several applicable documents the
lowest autonomy level applies and shadow applies if any document sets it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, TypeVar

from keel.canonical import digest
from keel.core import Decision, Effect

__all__ = [
    "AUTONOMY_LEVELS",
    "DAY_NAMES",
    "ArgumentCondition",
    "Autonomy",
    "EmailPolicy",
    "PolicyCaps",
    "PolicyDocument",
    "Rule",
    "Scalar",
    "Scope",
    "Threshold",
    "TimeSlot",
    "TimeWindow",
    "ToolConstraint",
]

Autonomy = Literal["L0", "L1", "L2", "L3", "L4"]
AUTONOMY_LEVELS: tuple[Autonomy, ...] = ("L0", "L1", "L2", "L3", "L4")
DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_N = TypeVar("_N", int, Decimal)


def _low(a: _N | None, b: _N | None) -> _N | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


#: A plain value in an ``in``/``not_in`` list. Numbers are Decimal (never float).
Scalar = str | Decimal | bool | None


def _scalar_json(value: Scalar) -> Any:
    # Numbers are tagged so that 200 and "200" do not hash alike.
    if isinstance(value, Decimal):
        return {"number": str(value)}
    return value


def scalar_sort_key(value: Scalar) -> tuple[int, str]:
    if value is None:
        return (0, "")
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, Decimal):
        return (2, str(value))
    return (3, value)


@dataclass(frozen=True, slots=True)
class Scope:
    """Which calls a document applies to; an empty tuple matches everything."""

    tenants: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    workflows: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenants": sorted(self.tenants),
            "agents": sorted(self.agents),
            "workflows": sorted(self.workflows),
        }


@dataclass(frozen=True, slots=True)
class ArgumentCondition:
    """Operators on one argument's value; see "Argument operators" in the module docstring."""

    min: Decimal | None = None
    max: Decimal | None = None
    gt: Decimal | None = None
    lt: Decimal | None = None
    in_: tuple[Scalar, ...] | None = None
    not_in: tuple[Scalar, ...] | None = None
    pattern: str | None = None
    email_domains: tuple[str, ...] | None = None
    min_length: int | None = None
    max_length: int | None = None
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("min", "max", "gt", "lt"):
            bound = getattr(self, name)
            if bound is not None:
                out[name] = str(bound)
        if self.in_ is not None:
            out["in"] = [_scalar_json(v) for v in self.in_]
        if self.not_in is not None:
            out["not_in"] = [_scalar_json(v) for v in self.not_in]
        if self.pattern is not None:
            out["pattern"] = self.pattern
        if self.email_domains is not None:
            out["email_domains"] = list(self.email_domains)
        if self.min_length is not None:
            out["min_length"] = self.min_length
        if self.max_length is not None:
            out["max_length"] = self.max_length
        out["required"] = self.required
        return out


@dataclass(frozen=True, slots=True)
class ToolConstraint:
    """A condition an argument of the matching tools must satisfy, or the call is denied."""

    id: str
    tool: str
    argument: str
    condition: ArgumentCondition

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tool": self.tool,
            "argument": self.argument,
            "condition": self.condition.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Threshold:
    """Approval is required when ``argument`` of a matching tool is strictly over ``over``."""

    id: str
    tool: str
    argument: str
    over: Decimal

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tool": self.tool, "argument": self.argument, "over": str(self.over)}


@dataclass(frozen=True, slots=True)
class Rule:
    """A custom rule: tool patterns, conditions, and the decision when all conditions hold."""

    id: str
    tools: tuple[str, ...]
    decision: Decision
    reason: str
    description: str = ""
    arguments: tuple[tuple[str, ArgumentCondition], ...] = ()
    roles: tuple[str, ...] = ()
    not_roles: tuple[str, ...] = ()
    tainted: bool | None = None
    effects: tuple[Effect, ...] = ()
    approvers: tuple[str, ...] = ()
    approvals_required: int | None = None
    escalate_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tools": list(self.tools),
            "decision": self.decision,
            "reason": self.reason,
            "description": self.description,
            "arguments": {name: cond.to_dict() for name, cond in self.arguments},
            "roles": sorted(self.roles),
            "not_roles": sorted(self.not_roles),
            "tainted": self.tainted,
            "effects": sorted(self.effects),
            "approvers": list(self.approvers),
            "approvals_required": self.approvals_required,
            "escalate_to": self.escalate_to,
        }


@dataclass(frozen=True, slots=True)
class TimeSlot:
    """Open on ``days`` (0 = Monday) from minute ``start`` (inclusive) to ``end`` (exclusive).

    ``start > end`` wraps past midnight; the day is the local weekday of the moment checked.
    """

    days: tuple[int, ...]
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": [DAY_NAMES[d] for d in self.days],
            "hours": f"{self.start // 60:02d}:{self.start % 60:02d}-"
            f"{self.end // 60:02d}:{self.end % 60:02d}",
        }


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Matching tools may run only inside one of the ``during`` slots; outside -> ``outside``."""

    id: str
    tools: tuple[str, ...]
    timezone: str
    tzinfo: _dt.tzinfo = field(compare=False, repr=False)
    during: tuple[TimeSlot, ...]
    outside: Decision
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tools": list(self.tools),
            "timezone": self.timezone,
            "during": [slot.to_dict() for slot in self.during],
            "outside": self.outside,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class EmailPolicy:
    """``deny_external_email``: listed arguments of matching tools hold only internal addresses."""

    deny_external: bool = False
    internal_domains: tuple[str, ...] = ()
    tools: tuple[str, ...] = ("*",)
    arguments: tuple[str, ...] = ("to", "cc", "bcc")

    def to_dict(self) -> dict[str, Any]:
        return {
            "deny_external": self.deny_external,
            "internal_domains": sorted(self.internal_domains),
            "tools": sorted(self.tools),
            "arguments": sorted(self.arguments),
        }


@dataclass(frozen=True, slots=True)
class PolicyCaps:
    """Per-task caps. Parsed here; enforced by the ledger, never by ``evaluate``.

    ``None`` means no cap. :meth:`tightest` combines caps from several documents.
    """

    spending_limit_usd: Decimal | None = None
    max_tokens_per_task: int | None = None
    max_tool_calls_per_task: int | None = None
    reflection_loop_cap: int | None = None

    def tightest(self, other: PolicyCaps) -> PolicyCaps:
        """The stricter of two caps, field by field."""

        return PolicyCaps(
            spending_limit_usd=_low(self.spending_limit_usd, other.spending_limit_usd),
            max_tokens_per_task=_low(self.max_tokens_per_task, other.max_tokens_per_task),
            max_tool_calls_per_task=_low(
                self.max_tool_calls_per_task, other.max_tool_calls_per_task
            ),
            reflection_loop_cap=_low(self.reflection_loop_cap, other.reflection_loop_cap),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "spending_limit_usd": None
            if self.spending_limit_usd is None
            else str(self.spending_limit_usd),
            "max_tokens_per_task": self.max_tokens_per_task,
            "max_tool_calls_per_task": self.max_tool_calls_per_task,
            "reflection_loop_cap": self.reflection_loop_cap,
        }


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """One parsed policy file, normalized: aliases resolved, defaults filled in.

    ``to_dict()`` is the normalized form; its canonical JSON digest is the policy hash.
    """

    name: str
    version: str = "1"
    description: str = ""
    scope: Scope = Scope()
    autonomy: Autonomy = "L3"
    shadow: bool = False
    escalation: str | None = None
    approvers: tuple[str, ...] = ()
    tools_allow: tuple[str, ...] = ()
    tools_deny: tuple[str, ...] = ()
    models_allow: tuple[str, ...] = ()
    models_deny: tuple[str, ...] = ()
    approval_required: tuple[str, ...] = ()
    two_person_rule: tuple[str, ...] = ()
    constraints: tuple[ToolConstraint, ...] = ()
    allowed_vendors: tuple[str, ...] | None = None
    thresholds: tuple[Threshold, ...] = ()
    email: EmailPolicy = EmailPolicy()
    time_windows: tuple[TimeWindow, ...] = ()
    rules: tuple[Rule, ...] = ()
    caps: PolicyCaps = PolicyCaps()

    def to_dict(self) -> dict[str, Any]:
        """The normalized document as JSON-safe data (what the hash is computed over)."""
        return {
            "format": 1,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "scope": self.scope.to_dict(),
            "autonomy": self.autonomy,
            "shadow": self.shadow,
            "escalation": self.escalation,
            "approvers": list(self.approvers),
            "tools": {"allow": sorted(self.tools_allow), "deny": sorted(self.tools_deny)},
            "models": {"allow": sorted(self.models_allow), "deny": sorted(self.models_deny)},
            "approval_required": sorted(self.approval_required),
            "two_person_rule": sorted(self.two_person_rule),
            "constraints": [c.to_dict() for c in self.constraints],
            "allowed_vendors": None
            if self.allowed_vendors is None
            else sorted(self.allowed_vendors),
            "thresholds": [t.to_dict() for t in self.thresholds],
            "email": self.email.to_dict(),
            "time_windows": [w.to_dict() for w in self.time_windows],
            "rules": [r.to_dict() for r in self.rules],
            "caps": self.caps.to_dict(),
        }

    @property
    def hash(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of :meth:`to_dict`."""
        return digest(self.to_dict())
