"""Evaluate-time primitives: glob patterns, numbers, e-mail addresses, compiled checks.

Everything here is built at compile time (regexes compiled, sets frozen, reasons prepared) so that
a check at evaluate time is a few attribute reads and comparisons. A check returns ``None`` when
it does not fire, or a :class:`Match` (allocated only then).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from keel.core import DECISION_PRECEDENCE, Call, Decision, Effect
from keel.policy.document import ArgumentCondition, Scalar, TimeSlot

__all__ = [
    "DENY_RANK",
    "Check",
    "CompiledCondition",
    "ConstraintCheck",
    "EmailCheck",
    "Glob",
    "Hit",
    "Match",
    "Owner",
    "RuleCheck",
    "ThresholdCheck",
    "WindowCheck",
    "as_number",
    "parse_addresses",
    "rank_of",
    "show",
    "subject_for",
]

_MAX_NUMBER_TEXT = 64
_SHOW_MAX = 60
_MISSING: Final = object()
_VERBS = frozenset(
    {
        "send",
        "create",
        "update",
        "delete",
        "lookup",
        "read",
        "write",
        "get",
        "list",
        "run",
        "execute",
        "post",
        "put",
        "search",
        "call",
        "invoke",
        "fetch",
        "set",
        "add",
        "remove",
    }
)


def rank_of(decision: Decision, approvals: int = 0) -> int:
    """Order of strength: precedence first, then (among approvals) the number of approvers."""
    return DECISION_PRECEDENCE[decision] * 100 + approvals


DENY_RANK: Final = rank_of("deny")


def show(value: object) -> str:
    """A short, single-line rendering of an argument value for a reason."""
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= _SHOW_MAX else value[: _SHOW_MAX - 3] + "..."
        return repr(text)
    return f"a {type(value).__name__}"


def subject_for(tool: str) -> str:
    """How reasons name a tool's call: ``billing.refund`` -> ``refund``, ``email.send`` stays."""
    last = tool.rsplit(".", 1)[-1]
    if last == tool or last in _VERBS or not last.replace("_", "").isalnum():
        return tool
    return last.replace("_", " ")


def as_number(value: object) -> int | Decimal | None:
    """``value`` as an int or a finite Decimal (both compare exactly with Decimal bounds), or
    None if it is not a number (booleans are not numbers)."""
    kind = type(value)
    if kind is int:
        return value  # type: ignore[return-value]
    if kind is Decimal:
        return value if value.is_finite() else None  # type: ignore[attr-defined,return-value]
    if kind is float:
        return Decimal(repr(value)) if math.isfinite(value) else None  # type: ignore[arg-type]
    if kind is str:
        text: str = value  # type: ignore[assignment]
        if len(text) > _MAX_NUMBER_TEXT:
            return None
        try:
            number = Decimal(text.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    return None


class Glob:
    """Glob patterns where ``*`` is any run of characters (dots included) and ``?`` one character.

    Names are compared exactly (case-sensitive, no normalization).
    """

    __slots__ = ("_tests", "patterns")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        tests: list[tuple[str, re.Pattern[str] | None]] = []
        for pattern in patterns:
            if "*" not in pattern and "?" not in pattern:
                tests.append((pattern, None))
            else:
                body = "".join(
                    ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern
                )
                tests.append((pattern, re.compile(body, re.DOTALL)))
        self._tests = tuple(tests)

    def first(self, name: str) -> str | None:
        """The first pattern matching ``name``, or None."""
        for pattern, regex in self._tests:
            if (name == pattern) if regex is None else regex.fullmatch(name) is not None:
                return pattern
        return None

    def matches(self, name: str) -> bool:
        return self.first(name) is not None


def parse_addresses(value: object) -> list[str] | None:
    """E-mail domains in ``value`` (a comma/semicolon-separated string or a list of them).

    Returns the lower-cased domain of each ``@`` address (items without ``@`` are skipped), or
    None when the value cannot be inspected safely (not text, or an address that is ambiguous,
    such as ``Name <a@x> b@y``): callers treat None as a failure (fail closed).
    """
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return None
    domains: list[str] = []
    for item in items:
        if not isinstance(item, str):
            return None
        for raw in item.replace(";", ",").split(","):
            part = raw.strip()
            if "@" not in part:
                if "<" in part or ">" in part:
                    return None
                continue
            if "<" in part or ">" in part:
                left = part.rfind("<")
                right = part.find(">", left)
                if right != len(part) - 1 or "<" in part[:left] or ">" in part[:left]:
                    return None
                if "@" in part[:left] or '"' in part[:left]:
                    return None
                part = part[left + 1 : right].strip()
            if part.count("@") != 1:  # mail parsers disagree on such addresses: refuse
                return None
            local, _, domain = part.partition("@")
            domain = domain.lower()
            if (
                not local
                or not domain
                or any(not (ch.isascii() and (ch.isalnum() or ch in ".-")) for ch in domain)
            ):
                return None
            domains.append(domain)
    return domains


class _DomainSet:
    __slots__ = ("exact", "shown", "suffixes")

    def __init__(self, domains: tuple[str, ...]) -> None:
        self.exact = frozenset(d for d in domains if not d.startswith("*."))
        self.suffixes = tuple(d[1:] for d in domains if d.startswith("*."))
        self.shown = ", ".join(domains) if domains else "(none)"

    def admits(self, domain: str) -> bool:
        return domain in self.exact or any(domain.endswith(s) for s in self.suffixes)


class Match:
    """A rule that fired: its decision, id, reason and approval details."""

    __slots__ = (
        "approvals",
        "approvers",
        "decision",
        "escalate_to",
        "policy",
        "policy_hash",
        "rank",
        "reason",
        "rule_id",
    )

    def __init__(
        self,
        decision: Decision,
        rule_id: str,
        reason: str,
        *,
        policy: str | None,
        policy_hash: str | None,
        approvals: int = 0,
        approvers: tuple[str, ...] = (),
        escalate_to: str | None = None,
    ) -> None:
        approving = decision in ("require_approval", "escalate")
        self.decision: Decision = decision
        self.rule_id = rule_id
        self.reason = reason
        self.policy = policy
        self.policy_hash = policy_hash
        self.approvals = max(approvals, 1) if approving else 0
        self.approvers = approvers if approving else ()
        self.escalate_to = escalate_to if approving else None
        self.rank = rank_of(decision, self.approvals)

    def to_dict(self, reason: str | None = None) -> dict[str, Any]:
        """JSON-safe form for ``explain`` (``reason``: this call's reason, if it differs)."""
        out: dict[str, Any] = {
            "rule_id": self.rule_id,
            "decision": self.decision,
            "reason": self.reason if reason is None else reason,
            "policy": self.policy,
            "policy_hash": self.policy_hash,
        }
        if self.approvals:
            out["approvals_required"] = self.approvals
            out["approvers"] = list(self.approvers)
        if self.escalate_to:
            out["escalate_to"] = self.escalate_to
        return out


class Owner:
    """Which document a check belongs to, and its defaults for approval matches."""

    __slots__ = ("approvers", "escalation", "hash", "name")

    def __init__(
        self, name: str, hash_: str, approvers: tuple[str, ...], escalation: str | None
    ) -> None:
        self.name = name
        self.hash = hash_
        self.approvers = approvers
        self.escalation = escalation

    def match(
        self,
        decision: Decision,
        rule_id: str,
        reason: str,
        *,
        approvals: int = 1,
        approvers: tuple[str, ...] = (),
        escalate_to: str | None = None,
    ) -> Match:
        return Match(
            decision,
            rule_id,
            reason,
            policy=self.name,
            policy_hash=self.hash,
            approvals=approvals,
            approvers=approvers or self.approvers,
            escalate_to=escalate_to or self.escalation,
        )


class CompiledCondition:
    """An :class:`ArgumentCondition` ready to test values (regex compiled, sets split by type)."""

    __slots__ = (
        "_domains",
        "_in",
        "_in_text",
        "_not_in",
        "_pattern",
        "_pattern_text",
        "gt",
        "lt",
        "max",
        "max_length",
        "min",
        "min_length",
        "numeric",
        "required",
    )

    def __init__(self, cond: ArgumentCondition) -> None:
        self.min, self.max, self.gt, self.lt = cond.min, cond.max, cond.gt, cond.lt
        self.numeric = any(b is not None for b in (cond.min, cond.max, cond.gt, cond.lt))
        self._in = None if cond.in_ is None else _ValueSet(cond.in_)
        self._in_text = "" if cond.in_ is None else ", ".join(_plain(v) for v in cond.in_)
        self._not_in = None if cond.not_in is None else _ValueSet(cond.not_in)
        self._pattern = None if cond.pattern is None else re.compile(cond.pattern)
        self._pattern_text = cond.pattern or ""
        self._domains = None if cond.email_domains is None else _DomainSet(cond.email_domains)
        self.min_length, self.max_length = cond.min_length, cond.max_length
        self.required = cond.required

    def failure(self, subject: str, value: object) -> tuple[str, bool] | None:
        """None if ``value`` satisfies every operator; else (reason, indeterminate).

        ``indeterminate`` is True when the value has the wrong type for an operator (so the
        operator could not be decided), False when it was decided and failed.
        """
        if self.numeric:
            number = as_number(value)
            if number is None:
                return f"{subject} {show(value)} is not a number", True
            if self.min is not None and number < self.min:
                return f"{subject} {show(value)} is under the minimum {self.min}", False
            if self.max is not None and number > self.max:
                return f"{subject} {show(value)} is over the maximum {self.max}", False
            if self.gt is not None and number <= self.gt:
                return f"{subject} {show(value)} is not over {self.gt}", False
            if self.lt is not None and number >= self.lt:
                return f"{subject} {show(value)} is not under {self.lt}", False
        if self._in is not None:
            found = self._in.contains(value)
            if found is None:
                return f"{subject} {show(value)} is not a plain value", True
            if not found:
                return f"{subject} {show(value)} is not one of {self._in_text}", False
        if self._not_in is not None:
            found = self._not_in.contains(value)
            if found is None:
                return f"{subject} {show(value)} is not a plain value", True
            if found:
                return f"{subject} {show(value)} is not allowed", False
        if self._pattern is not None:
            if not isinstance(value, str):
                return f"{subject} {show(value)} is not a string", True
            if self._pattern.fullmatch(value) is None:
                return (
                    f"{subject} {show(value)} does not match the pattern {self._pattern_text!r}",
                    False,
                )
        if self._domains is not None:
            domains = parse_addresses(value)
            if domains is None or not domains:
                return f"{subject} {show(value)} is not a list of e-mail addresses", True
            for domain in domains:
                if not self._domains.admits(domain):
                    return (
                        f"{subject} has an address at {domain!r}, outside the allowed domains "
                        f"{self._domains.shown}",
                        False,
                    )
        if self.min_length is not None or self.max_length is not None:
            if not isinstance(value, (str, list, tuple)):
                return f"{subject} {show(value)} has no length", True
            size = len(value)
            if self.min_length is not None and size < self.min_length:
                return f"{subject} is {size} long; the minimum length is {self.min_length}", False
            if self.max_length is not None and size > self.max_length:
                return f"{subject} is {size} long; the maximum length is {self.max_length}", False
        return None


def _plain(value: Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _ValueSet:
    """Membership by type: strings with strings, numbers with numbers, booleans with booleans."""

    __slots__ = ("bools", "has_null", "numbers", "strings")

    def __init__(self, values: tuple[Scalar, ...]) -> None:
        self.strings = frozenset(v for v in values if isinstance(v, str))
        self.numbers = frozenset(v for v in values if isinstance(v, Decimal))
        self.bools = frozenset(v for v in values if isinstance(v, bool))
        self.has_null = any(v is None for v in values)

    def contains(self, value: object) -> bool | None:
        if isinstance(value, str):
            return value in self.strings
        if isinstance(value, bool):
            return value in self.bools
        if value is None:
            return self.has_null
        if isinstance(value, (int, float, Decimal)):
            number = as_number(value)
            return number is not None and number in self.numbers
        return None


#: What a check returns when it fires: the rule's prepared Match and this call's reason.
Hit = tuple[Match, str]


class Check:
    """Base of the compiled checks: ``check`` returns a Hit when the check fires, else None."""

    __slots__ = ()

    def check(self, call: Call, effect: Effect, now: _dt.datetime) -> Hit | None:
        raise NotImplementedError


class ConstraintCheck(Check):
    """An argument constraint (or ``allowed_vendors``): denies when violated."""

    __slots__ = ("arg", "cond", "deny", "subject")

    def __init__(
        self, owner: Owner, rule_id: str, arg: str, cond: CompiledCondition, subject: str
    ) -> None:
        self.arg, self.cond = arg, cond
        self.subject = f"{subject} {arg}"
        self.deny = owner.match("deny", rule_id, f"{self.subject} violates a constraint")

    def check(self, call: Call, effect: Effect, now: _dt.datetime) -> Hit | None:
        value = call.arguments.get(self.arg, _MISSING)
        if value is _MISSING:
            if not self.cond.required:
                return None
            return self.deny, f"{self.subject} is missing"
        failed = self.cond.failure(self.subject, value)
        if failed is None:
            return None
        return self.deny, failed[0]


class ThresholdCheck(Check):
    """``require_approval_if_over``: approval when a number is strictly over the threshold."""

    __slots__ = ("approve", "arg", "deny", "over", "over_text", "subject")

    def __init__(self, owner: Owner, rule_id: str, arg: str, over: Decimal, subject: str) -> None:
        self.arg, self.over, self.over_text = arg, over, str(over)
        self.subject = f"{subject} {arg}"
        self.approve = owner.match(
            "require_approval", rule_id, f"{self.subject} is over the approval threshold {over}"
        )
        self.deny = owner.match("deny", rule_id, f"{self.subject} is not a number")

    def check(self, call: Call, effect: Effect, now: _dt.datetime) -> Hit | None:
        value = call.arguments.get(self.arg, _MISSING)
        if value is _MISSING:
            return None
        number = as_number(value)
        if number is None:
            return (
                self.deny,
                f"{self.subject} {show(value)} is not a number, so the approval threshold "
                f"{self.over_text} cannot be checked",
            )
        if number <= self.over:
            return None
        return (
            self.approve,
            f"{self.subject} {show(value)} is over the approval threshold {self.over_text}",
        )


class EmailCheck(Check):
    """``deny_external_email``: every address in the listed arguments is internal."""

    __slots__ = ("args", "deny", "domains", "subject")

    def __init__(
        self, owner: Owner, args: tuple[str, ...], domains: tuple[str, ...], subject: str
    ) -> None:
        self.args, self.subject = args, subject
        self.domains = _DomainSet(domains)
        self.deny = owner.match(
            "deny", "deny_external_email", f"{subject} has an external e-mail address"
        )

    def check(self, call: Call, effect: Effect, now: _dt.datetime) -> Hit | None:
        arguments = call.arguments
        for arg in self.args:
            value = arguments.get(arg, _MISSING)
            if value is _MISSING or value is None:
                continue
            domains = parse_addresses(value)
            if domains is None:
                return (
                    self.deny,
                    f"{self.subject} {arg} {show(value)} cannot be checked for external addresses",
                )
            for domain in domains:
                if not self.domains.admits(domain):
                    return (
                        self.deny,
                        f"{self.subject} {arg} has an external address at {domain!r}; "
                        f"internal domains: {self.domains.shown}",
                    )
        return None


class WindowCheck(Check):
    """A time window: outside every open slot, the window's ``outside`` decision applies."""

    __slots__ = ("hit", "slots", "tz")

    def __init__(
        self,
        owner: Owner,
        rule_id: str,
        tz: _dt.tzinfo,
        slots: tuple[TimeSlot, ...],
        outside: Decision,
        reason: str,
    ) -> None:
        self.tz = tz
        self.slots = tuple((sum(1 << d for d in slot.days), slot.start, slot.end) for slot in slots)
        match = owner.match(outside, rule_id, reason)
        self.hit: Hit = (match, match.reason)

    def check(self, call: Call, effect: Effect, now: _dt.datetime) -> Hit | None:
        local = now.astimezone(self.tz)
        day = 1 << local.weekday()
        minute = local.hour * 60 + local.minute
        for days, start, end in self.slots:
            if days & day and (
                start <= minute < end if start < end else minute >= start or minute < end
            ):
                return None
        return self.hit


class RuleCheck(Check):
    """A custom rule: fires (with its prepared Match) when every condition holds."""

    __slots__ = ("args", "effects", "fail_closed", "hit", "not_roles", "roles", "tainted")

    def __init__(
        self,
        match: Match,
        args: tuple[tuple[str, CompiledCondition], ...],
        roles: frozenset[str],
        not_roles: frozenset[str],
        tainted: bool | None,
        effects: frozenset[str],
    ) -> None:
        self.hit: Hit = (match, match.reason)
        self.args = args
        self.roles, self.not_roles = roles, not_roles
        self.tainted = tainted
        self.effects = effects
        self.fail_closed = match.decision != "allow"

    @property
    def decision(self) -> Decision:
        return self.hit[0].decision

    def check(self, call: Call, effect: Effect, now: _dt.datetime) -> Hit | None:
        if self.tainted is not None and bool(call.tainted) != self.tainted:
            return None
        if self.effects and effect not in self.effects:
            return None
        if self.roles and self.roles.isdisjoint(call.principal.roles):
            return None
        if self.not_roles and not self.not_roles.isdisjoint(call.principal.roles):
            return None
        if self.args:
            arguments: Mapping[str, Any] = call.arguments
            for arg, cond in self.args:
                value = arguments.get(arg, _MISSING)
                if value is _MISSING:
                    return None
                failed = cond.failure(arg, value)
                if failed is not None and not (failed[1] and self.fail_closed):
                    return None
        return self.hit
