"""Compiling a PolicyDocument once into per-tool parts that evaluate fast.

A :class:`CompiledPolicy` holds the document, its hash and caps, and everything evaluation needs
prepared ahead: glob patterns, regular expressions, value sets, and the prepared matches for
static rules. For each tool name it meets, it resolves once which of its rules apply to that
tool (:meth:`CompiledPolicy.tool_part`) and keeps the answer, so evaluating a call only runs the
checks that concern its tool. Tool names are compared exactly, never normalized.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from keel.core import Call, Effect, Verdict
from keel.policy._checks import (
    Check,
    CompiledCondition,
    ConstraintCheck,
    EmailCheck,
    Glob,
    Match,
    Owner,
    RuleCheck,
    ThresholdCheck,
    WindowCheck,
    subject_for,
)
from keel.policy.document import (
    AUTONOMY_LEVELS,
    ArgumentCondition,
    Autonomy,
    CapSpec,
    PolicyCaps,
    PolicyDocument,
    RateLimitSpec,
    Scope,
)

if TYPE_CHECKING:
    from keel.policy.engine import PolicySet

__all__ = ["CompiledPolicy", "ToolPart", "compile_policy", "selects"]

#: Per-document caches of resolved tool and model names stop growing past this many entries
#: (later names are resolved on every call instead); names come from the tool registry.
CACHE_LIMIT: Final = 4096


def selects(tools: Glob, models: Glob, kind: Literal["tool", "model"], target: str) -> bool:
    """Whether a cap or rate limit with these ``tools``/``models`` patterns applies to a call:
    neither given -> every call; else a tool call must match ``tools``, a model call ``models``."""
    if not tools.patterns and not models.patterns:
        return True
    return (tools if kind == "tool" else models).matches(target)


class ToolPart:
    """What one document says about one tool, resolved once and reused for every call.

    ``deny``/``allow`` are the tool/model deny and allow list matches (or None); ``grants`` are
    conditional allow rules; ``statics`` are matches that hold for every call to the tool
    (``approval_required``, ``two_person_rule``); ``checks`` depend on the call.
    """

    __slots__ = ("allow", "checks", "deny", "grants", "statics")

    def __init__(
        self,
        deny: Match | None,
        allow: Match | None,
        grants: tuple[Check, ...] = (),
        statics: tuple[Match, ...] = (),
        checks: tuple[Check, ...] = (),
    ) -> None:
        self.deny = deny
        self.allow = allow
        self.grants = grants
        self.statics = statics
        self.checks = checks


class CompiledPolicy:
    """One policy document, compiled. Immutable from the outside; safe to share across threads.

    ``hash`` is ``sha256:<hex>`` of the canonical JSON of the normalized document. ``caps`` are
    the per-task caps for the ledger (not enforced by evaluation). ``source`` names where the
    document came from (for messages).
    """

    def __init__(self, document: PolicyDocument, *, source: str = "<policy>") -> None:
        self.document = document
        self.source = source
        self.name = document.name
        self.version = document.version
        self.hash = document.hash
        self.caps: PolicyCaps = document.caps
        self.scope: Scope = document.scope
        self.autonomy: Autonomy = document.autonomy
        self.autonomy_rank = AUTONOMY_LEVELS.index(document.autonomy)
        self.shadow = document.shadow
        self.escalation = document.escalation
        self.approvers = document.approvers
        self.owner = Owner(document.name, self.hash, document.approvers, document.escalation)
        self._tenants = Glob(document.scope.tenants)
        self._agents = Glob(document.scope.agents)
        self._workflows = Glob(document.scope.workflows)
        self._tools_allow = Glob(document.tools_allow)
        self._tools_deny = Glob(document.tools_deny)
        self._models_allow = Glob(document.models_allow)
        self._models_deny = Glob(document.models_deny)
        self._approval = Glob(document.approval_required)
        self._two_person = Glob(document.two_person_rule)
        self._constraints = tuple(
            (Glob((c.tool,)), c.id, c.argument, CompiledCondition(c.condition))
            for c in document.constraints
        )
        if document.allowed_vendors is not None:
            vendors = ArgumentCondition(in_=tuple(document.allowed_vendors), required=False)
            self._constraints += (
                (Glob(("*",)), "allowed_vendors", "vendor", CompiledCondition(vendors)),
            )
        self._thresholds = tuple(
            (Glob((t.tool,)), t.id, t.argument, t.over) for t in document.thresholds
        )
        email = document.email
        self._email = (
            (Glob(email.tools), email.arguments, email.internal_domains)
            if (email.deny_external)
            else None
        )
        self._windows = tuple(
            (Glob(w.tools), WindowCheck(self.owner, w.id, w.tzinfo, w.during, w.outside, w.reason))
            for w in document.time_windows
        )
        rules: list[tuple[Glob, RuleCheck]] = []
        for rule in document.rules:
            match = self.owner.match(
                rule.decision,
                rule.id,
                rule.reason,
                approvals=rule.approvals_required or 1,
                approvers=rule.approvers,
                escalate_to=rule.escalate_to,
            )
            check = RuleCheck(
                match,
                tuple((arg, CompiledCondition(cond)) for arg, cond in rule.arguments),
                frozenset(rule.roles),
                frozenset(rule.not_roles),
                rule.tainted,
                frozenset(rule.effects),
            )
            rules.append((Glob(rule.tools), check))
        self._rules = tuple(rules)
        qualify = f"{document.name}#"
        self._budget_caps = tuple(
            (Glob(c.tools), Glob(c.models), dataclasses.replace(c, id=qualify + c.id))
            for c in document.budget_caps
        )
        self._rate_limits = tuple(
            (Glob(r.tools), Glob(r.models), dataclasses.replace(r, id=qualify + r.id))
            for r in document.rate_limits
        )
        self._tool_parts: dict[str, ToolPart] = {}
        self._model_parts: dict[str, ToolPart] = {}
        self._solo: PolicySet | None = None

    def __repr__(self) -> str:
        return f"CompiledPolicy(name={self.name!r}, version={self.version!r}, hash={self.hash!r})"

    # -- scope ----------------------------------------------------------------------------------

    def applies_to(self, tenant: str, agent_id: str, workflow: str | None) -> bool:
        """Whether the scope admits this tenant, agent and workflow (an empty field admits all)."""
        scope = self.scope
        if scope.tenants and not self._tenants.matches(tenant):
            return False
        if scope.agents and not self._agents.matches(agent_id):
            return False
        return not scope.workflows or (workflow is not None and self._workflows.matches(workflow))

    def covers_tenant(self, tenant: str) -> bool:
        """Whether the scope admits ``tenant`` (a document without tenants admits every one)."""
        return not self.scope.tenants or self._tenants.matches(tenant)

    # -- per-name resolution --------------------------------------------------------------------

    def tool_part(self, tool: str) -> ToolPart:
        """This document's rules for ``tool`` (resolved once per tool name, then cached)."""
        part = self._tool_parts.get(tool)
        if part is None:
            part = self._resolve_tool(tool)
            if len(self._tool_parts) < CACHE_LIMIT:
                self._tool_parts[tool] = part
        return part

    def model_part(self, model: str) -> ToolPart:
        """This document's ``models.deny`` / ``models.allow`` matches for ``model``."""
        part = self._model_parts.get(model)
        if part is None:
            owner = self.owner
            denied = self._models_deny.first(model)
            allowed = self._models_allow.first(model)
            part = ToolPart(
                deny=None
                if denied is None
                else owner.match(
                    "deny",
                    "models.deny",
                    f"model {model!r} is on the deny list of policy {self.name!r} ({denied})",
                ),
                allow=None
                if allowed is None
                else owner.match(
                    "allow",
                    "models.allow",
                    f"model {model!r} is allowed by policy {self.name!r} ({allowed})",
                ),
            )
            if len(self._model_parts) < CACHE_LIMIT:
                self._model_parts[model] = part
        return part

    def _resolve_tool(self, tool: str) -> ToolPart:
        owner = self.owner
        subject = subject_for(tool)
        denied = self._tools_deny.first(tool)
        allowed = self._tools_allow.first(tool)
        deny = (
            None
            if denied is None
            else owner.match(
                "deny",
                "tools.deny",
                f"tool {tool!r} is on the deny list of policy {self.name!r} ({denied})",
            )
        )
        allow = (
            None
            if allowed is None
            else owner.match(
                "allow",
                "tools.allow",
                f"tool {tool!r} is allowlisted by policy {self.name!r} ({allowed})",
            )
        )
        statics: list[Match] = []
        if self._approval.matches(tool):
            statics.append(
                owner.match(
                    "require_approval",
                    "approval_required",
                    f"{tool} always needs approval (approval_required in policy {self.name!r})",
                )
            )
        if self._two_person.matches(tool):
            statics.append(
                owner.match(
                    "require_approval",
                    "two_person_rule",
                    f"{tool} falls under the two-person rule: two distinct approvers must approve",
                    approvals=2,
                )
            )
        checks: list[Check] = []
        for glob, rule_id, arg, cond in self._constraints:
            if glob.matches(tool):
                checks.append(ConstraintCheck(owner, rule_id, arg, cond, subject))
        for glob, rule_id, arg, over in self._thresholds:
            if glob.matches(tool):
                checks.append(ThresholdCheck(owner, rule_id, arg, over, subject))
        if self._email is not None and self._email[0].matches(tool):
            checks.append(EmailCheck(owner, self._email[1], self._email[2], tool))
        checks.extend(window for glob, window in self._windows if glob.matches(tool))
        grants: list[Check] = []
        for glob, rule in self._rules:
            if glob.matches(tool):
                (grants if rule.decision == "allow" else checks).append(rule)
        return ToolPart(deny, allow, tuple(grants), tuple(statics), tuple(checks))

    def limits_part(
        self, kind: Literal["tool", "model"], target: str
    ) -> tuple[tuple[CapSpec, ...], tuple[RateLimitSpec, ...]]:
        """This document's ``caps`` and ``rate_limits`` entries that apply to a call to
        ``target`` (ids qualified ``<policy>#<id>``). Not cached here: PolicySet caches the
        merged answer per target."""
        caps = tuple(
            c for tools, models, c in self._budget_caps if selects(tools, models, kind, target)
        )
        limits = tuple(
            r
            for tools, models, r in self._rate_limits
            if (r.scope not in ("tool", "model") or r.scope == kind)
            and selects(tools, models, kind, target)
        )
        return caps, limits

    # -- convenience ----------------------------------------------------------------------------

    def _as_set(self) -> PolicySet:
        if self._solo is None:
            from keel.policy.engine import PolicySet  # engine imports this module

            self._solo = PolicySet([self])
        return self._solo

    def evaluate(self, call: Call, effect: Effect, now: _dt.datetime) -> Verdict:
        """``PolicySet([self]).evaluate(...)``: a call outside this document's scope is denied."""
        return self._as_set().evaluate(call, effect, now)

    def explain(self, call: Call, effect: Effect, now: _dt.datetime) -> dict[str, Any]:
        """``PolicySet([self]).explain(...)``."""
        return self._as_set().explain(call, effect, now)

    def to_dict(self) -> Mapping[str, Any]:
        """The normalized document (what :attr:`hash` is computed over)."""
        return self.document.to_dict()


def compile_policy(document: PolicyDocument, *, source: str = "<policy>") -> CompiledPolicy:
    """Compile a parsed document (regexes, globs and value sets are prepared here, once)."""
    return CompiledPolicy(document, source=source)
