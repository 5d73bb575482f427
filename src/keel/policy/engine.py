"""PolicySet: selects the documents that apply to a call and decides it.

``evaluate(call, effect, now)`` returns a :class:`keel.core.Verdict`; ``explain`` returns the
same decision with every rule that matched, as JSON-safe data. The semantics (default deny,
precedence, autonomy, shadow, hashes) are written down in :mod:`keel.policy.document`.

Speed: the documents applying to a (tenant, agent, workflow) are found once and remembered, and
for each tool name the rules that concern it are merged once into a plan. A call whose tool has
no argument-, time- or condition-dependent rules is answered with a prepared Verdict; otherwise
only that tool's checks run. No YAML, regex compilation or hashing happens at evaluate time.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Literal

from keel.canonical import digest
from keel.core import Call, Effect, Principal, Verdict
from keel.errors import ConfigError, UsageError
from keel.policy._checks import DENY_RANK, Check, Hit, Match
from keel.policy.compiler import CACHE_LIMIT, CompiledPolicy
from keel.policy.document import CapSpec, Limits, PolicyCaps, RateLimitSpec

__all__ = ["PolicySet", "combined_hash"]

_EFFECTS: Final[tuple[Effect, ...]] = ("read", "reversible", "irreversible")
_EFFECT_SET: Final = frozenset(_EFFECTS)


def combined_hash(hashes: Sequence[str]) -> str:
    """The hash naming several documents: one document's own hash, else ``digest([h1, h2...])``."""
    if len(hashes) == 1:
        return hashes[0]
    return digest(list(hashes))


def _best(matches: Iterable[Match]) -> Match | None:
    best: Match | None = None
    for match in matches:
        if best is None or match.rank > best.rank:
            best = match
    return best


class _Plan:
    """Everything the applicable documents say about one target, merged and prepared."""

    __slots__ = (
        "allow",
        "base",
        "base_verdicts",
        "checks",
        "default_deny",
        "default_verdicts",
        "deny",
        "grants",
        "policy_hash",
        "shadow",
        "static_best",
        "statics",
        "verdicts",
    )

    def __init__(
        self,
        *,
        policy_hash: str,
        deny: Match | None,
        allow: Match | None,
        default_deny: Match,
        grants: tuple[Check, ...],
        statics: dict[Effect, tuple[Match, ...]],
        checks: tuple[Check, ...],
        shadow: dict[Effect, str],
    ) -> None:
        self.policy_hash = policy_hash
        self.deny = deny
        self.allow = allow
        self.default_deny = default_deny
        self.grants = grants
        self.statics = statics
        self.checks = checks
        self.shadow = shadow
        self.static_best = {e: _best(statics[e]) for e in _EFFECTS}
        # The strongest call-independent match per effect, once the target is allowlisted.
        self.base: dict[Effect, Match | None] = {
            e: None if allow is None else _best((allow, *statics[e])) for e in _EFFECTS
        }
        self.base_verdicts: dict[Effect, Verdict] = {
            e: self.verdict(m, m.reason, e) for e, m in self.base.items() if m is not None
        }
        self.default_verdicts = {
            e: self.verdict(default_deny, default_deny.reason, e) for e in _EFFECTS
        }
        # Prepared verdicts: the whole answer when nothing depends on the call.
        self.verdicts: dict[Effect, Verdict | None] = {}
        for effect in _EFFECTS:
            verdict: Verdict | None = None
            if deny is not None:
                verdict = self.verdict(deny, deny.reason, effect)
            elif allow is None and not grants:
                verdict = self.default_verdicts[effect]
            elif allow is not None and not checks:
                verdict = self.base_verdicts[effect]
            self.verdicts[effect] = verdict

    def verdict(self, match: Match, reason: str, effect: Effect) -> Verdict:
        suffix = self.shadow.get(effect)
        # Positional arguments: measurably faster than keywords for this frozen dataclass; the
        # field order is pinned by a test.
        return Verdict(
            match.decision,
            match.rule_id,
            reason if suffix is None else reason + suffix,
            self.policy_hash,
            match.approvals,
            match.approvers,
            match.escalate_to,
            suffix is not None,
        )

    def decide(self, call: Call, effect: Effect, now: _dt.datetime) -> Verdict:
        prepared = self.verdicts[effect]
        if prepared is not None:
            return prepared
        best = self.base[effect]
        if best is None:  # not allowlisted: a conditional allow rule must grant the call
            for grant in self.grants:
                hit = grant.check(call, effect, now)
                if hit is not None:
                    break
            else:
                return self.default_verdicts[effect]
            best, reason = hit
            static = self.static_best[effect]
            if static is not None and static.rank > best.rank:
                best, reason = static, static.reason
            changed = True
        else:
            reason = best.reason
            changed = False
        if best.rank < DENY_RANK:
            for check in self.checks:
                hit = check.check(call, effect, now)
                if hit is not None and hit[0].rank > best.rank:
                    best, reason = hit
                    changed = True
                    if best.rank >= DENY_RANK:
                        break
        if not changed:
            return self.base_verdicts[effect]
        return self.verdict(best, reason, effect)

    def matches(self, call: Call, effect: Effect, now: _dt.datetime) -> list[Hit]:
        """Every match with its reason, in tie-break order (for ``explain``)."""
        out: list[Hit] = []
        if self.deny is not None:
            out.append((self.deny, self.deny.reason))
        if self.allow is not None:
            out.append((self.allow, self.allow.reason))
        granted = False
        for grant in self.grants:
            hit = grant.check(call, effect, now)
            if hit is not None:
                out.append(hit)
                granted = True
        if self.allow is None and not granted:
            out.append((self.default_deny, self.default_deny.reason))
        out.extend((m, m.reason) for m in self.statics[effect])
        for check in self.checks:
            hit = check.check(call, effect, now)
            if hit is not None:
                out.append(hit)
        return out


class _Applicable:
    """The documents applying to one (tenant, agent, workflow), with their per-target plans."""

    __slots__ = ("caps", "docs", "limits", "model_plans", "names", "policy_hash", "tool_plans")

    def __init__(self, docs: tuple[CompiledPolicy, ...], set_hash: str) -> None:
        self.docs = docs
        self.names = ", ".join(repr(d.name) for d in docs)
        self.policy_hash = combined_hash([d.hash for d in docs]) if docs else set_hash
        self.tool_plans: dict[str, _Plan] = {}
        self.model_plans: dict[str, _Plan] = {}
        caps = PolicyCaps()
        for doc in docs:
            caps = caps.tightest(doc.caps)
        self.caps = caps
        self.limits: dict[tuple[str, str], Limits] = {}

    def limits_for(self, kind: Literal["tool", "model"], target: str) -> Limits:
        key = (kind, target)
        found = self.limits.get(key)
        if found is None:
            found = self._build_limits(kind, target)
            if len(self.limits) < CACHE_LIMIT:
                self.limits[key] = found
        return found

    def _build_limits(self, kind: Literal["tool", "model"], target: str) -> Limits:
        caps: list[CapSpec] = []
        task = self.caps
        if task.spending_limit_usd is not None or task.max_tokens_per_task is not None:
            caps.append(
                CapSpec(
                    id="task",
                    window="run",
                    max_usd=task.spending_limit_usd,
                    max_tokens=task.max_tokens_per_task,
                )
            )
        if kind == "tool" and task.max_tool_calls_per_task is not None:
            caps.append(
                CapSpec(
                    id="task-tool-calls",
                    tools=("*",),
                    window="run",
                    max_calls=task.max_tool_calls_per_task,
                )
            )
        limits: list[RateLimitSpec] = []
        for doc in self.docs:
            doc_caps, doc_limits = doc.limits_part(kind, target)
            caps.extend(doc_caps)
            limits.extend(doc_limits)
        return Limits(caps=tuple(caps), rate_limits=tuple(limits))

    def tool_plan(self, tool: str) -> _Plan:
        plan = self.tool_plans.get(tool)
        if plan is None:
            plan = self._build_tool(tool)
            if len(self.tool_plans) < CACHE_LIMIT:
                self.tool_plans[tool] = plan
        return plan

    def model_plan(self, model: str) -> _Plan:
        plan = self.model_plans.get(model)
        if plan is None:
            plan = self._build_model(model)
            if len(self.model_plans) < CACHE_LIMIT:
                self.model_plans[model] = plan
        return plan

    def _default_deny(self, what: str, target: str) -> Match:
        if self.docs:
            reason = f"{what} {target!r} is not allowlisted by any applicable policy ({self.names})"
        else:
            reason = (
                f"no policy applies to this tenant, agent and workflow, so {what} {target!r} "
                "is denied by default"
            )
        return Match("deny", "default-deny", reason, policy=None, policy_hash=None)

    def _build_model(self, model: str) -> _Plan:
        parts = [doc.model_part(model) for doc in self.docs]
        return _Plan(
            policy_hash=self.policy_hash,
            deny=next((p.deny for p in parts if p.deny is not None), None),
            allow=next((p.allow for p in parts if p.allow is not None), None),
            default_deny=self._default_deny("model", model),
            grants=(),
            statics=dict.fromkeys(_EFFECTS, ()),
            checks=(),
            shadow={},
        )

    def _build_tool(self, tool: str) -> _Plan:
        parts = [doc.tool_part(tool) for doc in self.docs]
        statics: dict[Effect, tuple[Match, ...]] = {}
        shadow: dict[Effect, str] = {}
        common = tuple(m for p in parts for m in p.statics)
        lowest = min(self.docs, key=lambda d: d.autonomy_rank) if self.docs else None
        shadowing = next((d for d in self.docs if d.shadow), None)
        for effect in _EFFECTS:
            extra: tuple[Match, ...] = ()
            if lowest is not None and effect != "read":
                if lowest.autonomy == "L1":
                    extra = (
                        lowest.owner.match(
                            "require_approval",
                            "autonomy.L1",
                            f"autonomy L1 (recommend) in policy {lowest.name!r}: {tool} is a "
                            f"{effect} action, and every action that changes the world needs "
                            "approval",
                        ),
                    )
                elif lowest.autonomy == "L2" and effect == "irreversible":
                    extra = (
                        lowest.owner.match(
                            "require_approval",
                            "autonomy.L2",
                            f"autonomy L2 in policy {lowest.name!r}: {tool} is irreversible, and "
                            "irreversible actions need approval",
                        ),
                    )
                elif lowest.autonomy == "L0":
                    shadow[effect] = (
                        f" [shadow: autonomy L0 (suggest) in policy {lowest.name!r} records "
                        "this action and executes nothing]"
                    )
            if shadowing is not None:
                shadow[effect] = (
                    f" [shadow: policy {shadowing.name!r} is in shadow mode; recorded, "
                    "not executed]"
                )
            statics[effect] = common + extra
        return _Plan(
            policy_hash=self.policy_hash,
            deny=next((p.deny for p in parts if p.deny is not None), None),
            allow=next((p.allow for p in parts if p.allow is not None), None),
            default_deny=self._default_deny("tool", tool),
            grants=tuple(g for p in parts for g in p.grants),
            statics=statics,
            checks=tuple(c for p in parts for c in p.checks),
            shadow=shadow,
        )


class PolicySet:
    """Several compiled documents; decides calls by the ones whose scope matches.

    Immutable: to change policies (an autonomy level, a threshold), build a new PolicySet and
    swap it in; no deploy is needed. Thread-safe: its caches only ever gain entries, and an
    entry computed twice by two threads is identical. ``hash`` is the combined hash of all its
    documents (see :func:`combined_hash`).
    """

    def __init__(self, policies: Iterable[CompiledPolicy] = ()) -> None:
        self.policies: tuple[CompiledPolicy, ...] = tuple(policies)
        seen: dict[str, CompiledPolicy] = {}
        for policy in self.policies:
            if policy.name in seen:
                first = seen[policy.name]
                raise ConfigError(
                    f"{policy.source}: policy name {policy.name!r} is already used by "
                    f"{first.source}; each policy in a set needs its own name",
                    context={
                        "file": policy.source,
                        "key": "policy",
                        "line": None,
                        "other_file": first.source,
                    },
                )
            seen[policy.name] = policy
        self.hash = digest([p.hash for p in self.policies])
        self._scopes: dict[tuple[str, str, str | None], _Applicable] = {}
        self._groups: dict[tuple[int, ...], _Applicable] = {}

    def __len__(self) -> int:
        return len(self.policies)

    def __iter__(self) -> Iterator[CompiledPolicy]:
        return iter(self.policies)

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.policies)
        return f"PolicySet([{names}], hash={self.hash!r})"

    def get(self, name: str) -> CompiledPolicy | None:
        """The document called ``name``, if any."""
        return next((p for p in self.policies if p.name == name), None)

    # -- scope ----------------------------------------------------------------------------------

    def _applicable(self, tenant: str, agent_id: str, workflow: str | None) -> _Applicable:
        key = (tenant, agent_id, workflow)
        found = self._scopes.get(key)
        if found is None:
            index = tuple(
                i for i, p in enumerate(self.policies) if p.applies_to(tenant, agent_id, workflow)
            )
            found = self._groups.get(index)
            if found is None:
                found = _Applicable(tuple(self.policies[i] for i in index), self.hash)
                self._groups[index] = found
            if len(self._scopes) < CACHE_LIMIT:
                self._scopes[key] = found
        return found

    def applicable(
        self, principal: Principal, workflow: str | None = None
    ) -> tuple[CompiledPolicy, ...]:
        """The documents whose scope admits this principal (tenant, agent) and workflow."""
        return self._applicable(principal.tenant, principal.agent_id, workflow).docs

    def caps_for(self, principal: Principal, workflow: str | None = None) -> PolicyCaps:
        """The tightest per-task caps over the applicable documents."""
        return self._applicable(principal.tenant, principal.agent_id, workflow).caps

    def limits_for(
        self,
        principal: Principal,
        workflow: str | None,
        kind: Literal["tool", "model"],
        target: str,
    ) -> Limits:
        """Every cap and rate limit the ledger must apply to a call to ``target``: the per-task
        caps (``task``, and ``task-tool-calls`` for tool calls; tightest over the applicable
        documents), then each applicable document's ``caps`` and ``rate_limits`` entries that
        select the call, ids qualified ``<policy>#<id>``. Cached per (tenant, agent, workflow)
        and target: on the hot path this is two dictionary lookups."""
        key = (principal.tenant, principal.agent_id, workflow)
        group = self._scopes.get(key) or self._applicable(*key)
        found = group.limits.get((kind, target))
        return found if found is not None else group.limits_for(kind, target)

    # -- decisions ------------------------------------------------------------------------------

    def _plan(self, call: Call, effect: Effect, now: _dt.datetime) -> _Plan:
        if effect not in _EFFECT_SET:
            raise UsageError(
                f"effect {effect!r} is not one of read, reversible, irreversible",
                code="invalid_argument",
                context={"effect": str(effect)},
            )
        if now.tzinfo is None:
            raise UsageError(
                "policy evaluation needs a timezone-aware 'now' (UTC)", code="invalid_argument"
            )
        principal = call.principal
        key = (principal.tenant, principal.agent_id, call.workflow)
        group = self._scopes.get(key) or self._applicable(*key)
        if call.kind == "tool":
            return group.tool_plans.get(call.target) or group.tool_plan(call.target)
        if call.kind == "model":
            return group.model_plan(call.target)
        raise UsageError(f"call kind {call.kind!r} is not tool or model", code="invalid_argument")

    def evaluate(self, call: Call, effect: Effect, now: _dt.datetime) -> Verdict:
        """Decide ``call``: deterministic, side-effect free, and fast (see the module docstring).

        ``effect`` is the target tool's declared effect (ignored for model calls); ``now`` is
        timezone-aware and used only by time windows.
        """
        return self._plan(call, effect, now).decide(call, effect, now)

    def explain(self, call: Call, effect: Effect, now: _dt.datetime) -> dict[str, Any]:
        """The verdict of :meth:`evaluate` plus every rule that matched, as JSON-safe data.

        Keys: ``verdict`` (the decision), ``rule_id``, ``reason``, ``policy_hash``,
        ``approvals_required``, ``approvers``, ``escalate_to``, ``shadow``, ``call`` (what was
        decided), ``policies`` (the applicable documents: name, version, hash, source) and
        ``matched`` (each matching rule: rule_id, decision, reason, policy, policy_hash, and
        approval details), in tie-break order.
        """
        plan = self._plan(call, effect, now)
        verdict = plan.decide(call, effect, now)
        principal = call.principal
        group = self._applicable(principal.tenant, principal.agent_id, call.workflow)
        return {
            "verdict": verdict.decision,
            "rule_id": verdict.rule_id,
            "reason": verdict.reason,
            "policy_hash": verdict.policy_hash,
            "approvals_required": verdict.approvals_required,
            "approvers": list(verdict.approvers),
            "escalate_to": verdict.escalate_to,
            "shadow": verdict.shadow,
            "call": {
                "kind": call.kind,
                "target": call.target,
                "effect": effect,
                "tenant": principal.tenant,
                "agent": principal.agent_id,
                "roles": sorted(principal.roles),
                "workflow": call.workflow,
                "tainted": call.tainted,
                "at": now.astimezone(_dt.UTC).isoformat(),
            },
            "policies": [
                {"name": p.name, "version": p.version, "hash": p.hash, "source": p.source}
                for p in group.docs
            ],
            "matched": [m.to_dict(reason) for m, reason in plan.matches(call, effect, now)],
        }
