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

    # Per-task caps (a task is a run): enforced by the ledger, not evaluate().
    spending_limit_usd: 10000      # money per run, every call (tools and models)
    max_tokens_per_task: 12000     # tokens per run, every call
    max_tool_calls_per_task: 25    # tool calls per run
    reflection_loop_cap: 25        # exposed for the runtime (not a ledger cap)

    caps:                          # more caps for the ledger (see "Caps" below)
      - id: refunds-per-customer-day         # required, unique among caps
        tools: [billing.refund]              # tool patterns; omit tools and models: every call
        per: [arguments.customer_id]         # tenant | agent | workflow | run |
                                             # arguments.<name> (default: the tenant)
        window: day                          # call | run | day | none (default: none)
        max_calls: 3                         # at least one of max_calls, max_usd, max_tokens
        max_usd: 500
        sum_argument: amount                 # sum this argument as the money, not the price
      - id: model-spend-per-agent-day
        models: ["gpt-4o*"]                  # model patterns (matched on the model name)
        per: [agent]
        window: day
        max_usd: 50
        max_tokens: 2000000
        alert_at: 0.9                        # burn alert at this fraction (0 < x <= 1)

    rate_limits:                   # token buckets keyed on identity (see "Rate limits" below)
      - id: agent-calls                      # required, unique among rate limits
        scope: agent                         # agent | tenant | tool | model
        requests: 60                         # calls per interval
        per: 1m                              # interval: <n>s, <n>m, <n>h or <n>d (1s to 7d)
        burst: 10                            # optional: calls at once (default: requests)
      - id: model-tokens
        scope: model
        models: ["gpt-*"]                    # optional: which calls take the bucket
        tokens: 100000                       # model tokens per interval (requests optional)
        per: 1m                              #   (tools: [...] likewise, not with scope model)

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

Caps
----
Every call is charged to the ledger's counters before it runs (its worst-case price, tokens and
one call) and settled after; a call that would take any counter over a limit is denied. A cap in
``caps:`` applies to calls whose target matches ``tools`` (tool calls) or ``models`` (model
calls); with neither, to every call. ``per`` picks the counter: one per combination of the listed
values, always within the caller's tenant; ``arguments.<name>`` keys on an argument's value (a
call without that argument is refused). ``window``: ``none`` one counter forever, ``day`` one per
calendar day in UTC, ``run`` one per run (a call outside any run is its own run), ``call`` no
counter: each call alone must fit. ``sum_argument`` counts the named argument's value as the
money (a refund's ``amount``) instead of the call's price; it needs ``max_usd``. ``alert_at``
raises a burn alert (the call then needs approval) the first time a counter reaches that
fraction of a limit; without it, run caps alert at the ledger's default (80%).

The per-task caps are caps too: ``spending_limit_usd`` and ``max_tokens_per_task`` form the cap
``task`` (window ``run``, every call), ``max_tool_calls_per_task`` the cap ``task-tool-calls``
(window ``run``, tool calls); across applicable documents the tightest value applies. Caps from
``caps:`` apply from every applicable document, each on its own counters, named
``<policy>#<id>``.

Rate limits
-----------
A rate limit is a token bucket refilled continuously: ``requests`` calls (and ``tokens`` model
tokens) per ``per`` interval, at most ``burst`` calls at once. Buckets are keyed on identity,
never on a session or token: ``agent`` one per agent (within its tenant), ``tenant`` one shared
by all of the tenant's agents, ``tool`` one per tool name (tool calls only), ``model`` one per
model name (model calls only). ``tools`` / ``models`` restrict which calls take the bucket. A
call takes every applicable bucket or none; a limited call is refused with the time after which
a retry may succeed. Limits from every applicable document apply, named ``<policy>#<id>``.

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
    "CAP_WINDOWS",
    "DAY_NAMES",
    "RATE_SCOPES",
    "ArgumentCondition",
    "Autonomy",
    "CapSpec",
    "CapWindow",
    "EmailPolicy",
    "Limits",
    "PolicyCaps",
    "PolicyDocument",
    "RateLimitSpec",
    "RateScope",
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
CapWindow = Literal["call", "run", "day", "none"]
CAP_WINDOWS: tuple[CapWindow, ...] = ("call", "run", "day", "none")
RateScope = Literal["agent", "tenant", "tool", "model"]
RATE_SCOPES: tuple[RateScope, ...] = ("agent", "tenant", "tool", "model")
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
class CapSpec:
    """One ``caps:`` entry (or a per-task cap), as the ledger needs it; see "Caps" above.

    ``tools``/``models`` select the calls (both empty: every call). ``per`` lists dimensions
    (``tenant``, ``agent``, ``workflow``, ``run``, ``arguments.<name>``; empty: the whole
    tenant, as every counter is within the caller's tenant). In a document ``id`` is
    as written; in :class:`Limits` it is qualified (``<policy>#<id>``, or ``task`` /
    ``task-tool-calls``).
    """

    id: str
    tools: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    per: tuple[str, ...] = ()
    window: CapWindow = "none"
    max_usd: Decimal | None = None
    max_tokens: int | None = None
    max_calls: int | None = None
    sum_argument: str | None = None
    alert_at: Decimal | None = None

    @property
    def key_arguments(self) -> tuple[str, ...]:
        """The argument names the counter is keyed on (``arguments.<name>`` in ``per``)."""
        return tuple(p[len("arguments.") :] for p in self.per if p.startswith("arguments."))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tools": list(self.tools),
            "models": list(self.models),
            "per": list(self.per),
            "window": self.window,
            "max_usd": None if self.max_usd is None else str(self.max_usd),
            "max_tokens": self.max_tokens,
            "max_calls": self.max_calls,
            "sum_argument": self.sum_argument,
            "alert_at": None if self.alert_at is None else str(self.alert_at),
        }


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """One ``rate_limits:`` entry; see "Rate limits" above. ``interval_seconds`` is ``per``."""

    id: str
    scope: RateScope
    interval_seconds: int
    requests: int | None = None
    tokens: int | None = None
    burst: int | None = None
    tools: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope,
            "interval_seconds": self.interval_seconds,
            "requests": self.requests,
            "tokens": self.tokens,
            "burst": self.burst,
            "tools": list(self.tools),
            "models": list(self.models),
        }


@dataclass(frozen=True, slots=True)
class Limits:
    """Every cap and rate limit that applies to one call target for one principal and workflow
    (:meth:`keel.policy.PolicySet.limits_for`), ids qualified, in document order."""

    caps: tuple[CapSpec, ...] = ()
    rate_limits: tuple[RateLimitSpec, ...] = ()


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
    budget_caps: tuple[CapSpec, ...] = ()
    rate_limits: tuple[RateLimitSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The normalized document as JSON-safe data (what the hash is computed over)."""
        out: dict[str, Any] = {
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
        # Added in a later release: present only when used, so documents without them keep
        # the hash they always had.
        if self.budget_caps:
            out["budget_caps"] = [c.to_dict() for c in self.budget_caps]
        if self.rate_limits:
            out["rate_limits"] = [r.to_dict() for r in self.rate_limits]
        return out

    @property
    def hash(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of :meth:`to_dict`."""
        return digest(self.to_dict())

    def rule_ids(self) -> tuple[str, ...]:
        """Every rule id a verdict of this document can name, in document order: the tool and
        model lists, ``approval_required``, ``two_person_rule``, each constraint, threshold,
        time window and custom rule, ``deny_external_email``, and the autonomy rule (L1, L2)."""
        ids = [
            rule_id
            for rule_id, present in (
                ("tools.deny", self.tools_deny),
                ("tools.allow", self.tools_allow),
                ("models.deny", self.models_deny),
                ("models.allow", self.models_allow),
                ("approval_required", self.approval_required),
                ("two_person_rule", self.two_person_rule),
            )
            if present
        ]
        ids += [c.id for c in self.constraints]
        if self.allowed_vendors is not None:
            ids.append("allowed_vendors")
        ids += [t.id for t in self.thresholds]
        if self.email.deny_external:
            ids.append("deny_external_email")
        ids += [w.id for w in self.time_windows]
        ids += [r.id for r in self.rules]
        if self.autonomy in ("L1", "L2"):
            ids.append(f"autonomy.{self.autonomy}")
        return tuple(dict.fromkeys(ids))
