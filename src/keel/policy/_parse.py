"""Composed YAML nodes -> :class:`PolicyDocument`, with a located ConfigError for every mistake."""

from __future__ import annotations

import datetime as _dt
import re
import zoneinfo
from decimal import Decimal
from typing import cast

import yaml

from keel.core import Decision, Effect
from keel.policy._limits import LimitsParser
from keel.policy._names import ARG as _ARG
from keel.policy._names import ARG_WHAT as _ARG_WHAT
from keel.policy._names import NAME as _NAME
from keel.policy._names import NAME_WHAT as _NAME_WHAT
from keel.policy._names import TOOL_PATTERN
from keel.policy._names import TOOL_WHAT as _TOOL_WHAT
from keel.policy._yaml import MapView, Reader, join_key, suggest
from keel.policy.document import (
    AUTONOMY_LEVELS,
    DAY_NAMES,
    ArgumentCondition,
    Autonomy,
    EmailPolicy,
    PolicyCaps,
    PolicyDocument,
    Rule,
    Scalar,
    Scope,
    Threshold,
    TimeSlot,
    TimeWindow,
    ToolConstraint,
    scalar_sort_key,
)

__all__ = ["RESERVED_RULE_IDS", "parse_document"]

_TOKEN = re.compile(r"\S+")
_TOKEN_WHAT = "a name without spaces"
_LABEL = re.compile(r"\S(?:.*\S)?")
_LABEL_WHAT = "a non-empty name without leading or trailing spaces"
_DOMAIN = re.compile(
    r"(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_DOMAIN_WHAT = "a domain name such as example.com or *.example.com"
_HOURS = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_OFFSET = re.compile(r"(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?")
_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+)*")

DECISIONS: tuple[Decision, ...] = ("allow", "deny", "require_approval", "escalate")
EFFECTS: tuple[Effect, ...] = ("read", "reversible", "irreversible")
_OUTSIDE: tuple[Decision, ...] = ("deny", "require_approval", "escalate")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

#: Built-in rule ids; custom rules may not reuse them.
RESERVED_RULE_IDS = frozenset(
    {
        "default-deny",
        "tools.allow",
        "tools.deny",
        "models.allow",
        "models.deny",
        "approval_required",
        "two_person_rule",
        "allowed_vendors",
        "deny_external_email",
        "require_approval_if_over",
        *(f"autonomy.{level}" for level in AUTONOMY_LEVELS),
    }
)

_TOP_KEYS = frozenset(
    {
        "policy",
        "version",
        "description",
        "scope",
        "agent",
        "autonomy",
        "shadow",
        "escalation",
        "approvers",
        "tools",
        "allowlisted_tools",
        "models",
        "approval_required",
        "two_person_rule",
        "require_approval_if_over",
        "constraints",
        "allowed_vendors",
        "deny_external_email",
        "internal_domains",
        "email_tools",
        "email_arguments",
        "time_windows",
        "rules",
        "spending_limit_usd",
        "max_tokens_per_task",
        "max_tool_calls_per_task",
        "reflection_loop_cap",
        "caps",
        "rate_limits",
    }
)
_NESTED_KEYS = (_TOP_KEYS - {"policy"}) | {"name"}
_CONDITION_KEYS = frozenset(
    {
        "min",
        "max",
        "gt",
        "lt",
        "in",
        "not_in",
        "pattern",
        "email_domains",
        "min_length",
        "max_length",
        "required",
    }
)
_RULE_KEYS = frozenset(
    {
        "id",
        "description",
        "tool",
        "tools",
        "when",
        "decision",
        "reason",
        "approvers",
        "approvals_required",
        "escalate_to",
    }
)
_WHEN_KEYS = frozenset({"arguments", "tainted", "roles", "not_roles", "effect"})
_WINDOW_KEYS = frozenset({"id", "tool", "tools", "timezone", "during", "outside", "reason"})


class _Parser(LimitsParser):
    def __init__(self, source: str) -> None:
        self.r = Reader(source)

    # -- small readers (``tools`` comes from LimitsParser) ----------------------------------------

    def tool_key(self, view: MapView, name: str) -> str:
        if not TOOL_PATTERN.fullmatch(name):
            self.r.fail(view.key_node(name), view.path(name), f"{name!r} is not {_TOOL_WHAT}")
        return name

    def arg_key(self, view: MapView, name: str) -> str:
        if not _ARG.fullmatch(name):
            self.r.fail(view.key_node(name), view.path(name), f"{name!r} is not {_ARG_WHAT}")
        return name

    def one_of_tool_keys(self, view: MapView) -> tuple[str, ...]:
        """``tool: x`` or ``tools: [x, y]``: exactly one of the two."""
        if "tool" in view and "tools" in view:
            self.r.fail(
                view.key_node("tools"), view.path("tools"), "give 'tool' or 'tools', not both"
            )
        if "tool" in view:
            return (
                self.r.string(
                    view.require("tool"), view.path("tool"), pattern=TOOL_PATTERN, what=_TOOL_WHAT
                ),
            )
        if "tools" not in view:
            self.r.fail(
                view.node,
                view.path("tools"),
                f"missing required key 'tools' (or 'tool') in {view.key!r}",
            )
        return self.tools(view.require("tools"), view.path("tools"))

    # -- argument conditions --------------------------------------------------------------------

    def condition(self, node: yaml.Node, key: str, *, in_rule: bool) -> ArgumentCondition:
        allowed = _CONDITION_KEYS - {"required"} if in_rule else _CONDITION_KEYS
        view = self.r.mapping(node, key, allowed)
        if not any(name != "required" for name in view.names()):
            self.r.fail(
                node,
                key,
                "no operators given; accepted: " + ", ".join(sorted(allowed - {"required"})),
            )
        bounds: dict[str, Decimal] = {}
        for name in ("min", "max", "gt", "lt"):
            value = view.get(name)
            if value is not None:
                bounds[name] = self.r.number(value, view.path(name))
        low = [(n, v) for n, v in bounds.items() if n in ("min", "gt")]
        high = [(n, v) for n, v in bounds.items() if n in ("max", "lt")]
        for low_name, low_value in low:
            for high_name, high_value in high:
                empty = low_value > high_value or (
                    low_value == high_value and (low_name == "gt" or high_name == "lt")
                )
                if empty:
                    self.r.fail(
                        view.get(high_name),
                        view.path(high_name),
                        f"no value can satisfy {low_name} {low_value} and {high_name} {high_value}",
                    )
        members: dict[str, tuple[Scalar, ...]] = {}
        for name in ("in", "not_in"):
            value = view.get(name)
            if value is None:
                continue
            items = [
                self.r.value(item, item_key)
                for item_key, item in self.r.items(value, view.path(name))
            ]
            if not items:
                self.r.fail(value, view.path(name), "expected at least one value")
            unique = {scalar_sort_key(v): v for v in items}
            members[name] = tuple(unique[k] for k in sorted(unique))
        pattern: str | None = None
        if (node_p := view.get("pattern")) is not None:
            pattern = self.r.string(node_p, view.path("pattern"), what="a regular expression")
            try:
                re.compile(pattern)
            except re.error as exc:
                self.r.fail(node_p, view.path("pattern"), f"invalid regular expression: {exc}")
        domains: tuple[str, ...] | None = None
        if (node_d := view.get("email_domains")) is not None:
            domains = tuple(
                d.lower()
                for d in self.r.strings(
                    node_d, view.path("email_domains"), pattern=_DOMAIN, what=_DOMAIN_WHAT
                )
            )
        lengths: dict[str, int] = {}
        for name in ("min_length", "max_length"):
            value = view.get(name)
            if value is not None:
                lengths[name] = self.r.integer(value, view.path(name))
        if (
            "min_length" in lengths
            and "max_length" in lengths
            and (lengths["min_length"] > lengths["max_length"])
        ):
            self.r.fail(
                view.get("max_length"),
                view.path("max_length"),
                "max_length is smaller than min_length",
            )
        required = True
        if (node_r := view.get("required")) is not None:
            required = self.r.boolean(node_r, view.path("required"))
        return ArgumentCondition(
            min=bounds.get("min"),
            max=bounds.get("max"),
            gt=bounds.get("gt"),
            lt=bounds.get("lt"),
            in_=members.get("in"),
            not_in=members.get("not_in"),
            pattern=pattern,
            email_domains=domains,
            min_length=lengths.get("min_length"),
            max_length=lengths.get("max_length"),
            required=required,
        )

    # -- sections -------------------------------------------------------------------------------

    def scope(self, body: MapView) -> Scope:
        tenants: tuple[str, ...] = ()
        agents: tuple[str, ...] = ()
        workflows: tuple[str, ...] = ()
        if (node := body.get("scope")) is not None:
            view = self.r.mapping(node, body.path("scope"), {"tenant", "agents", "workflows"})
            if (n := view.get("tenant")) is not None:
                tenants = self.r.strings(n, view.path("tenant"), pattern=_TOKEN, what=_TOKEN_WHAT)
            if (n := view.get("agents")) is not None:
                agents = self.r.strings(n, view.path("agents"), pattern=_TOKEN, what=_TOKEN_WHAT)
            if (n := view.get("workflows")) is not None:
                workflows = self.r.strings(
                    n, view.path("workflows"), pattern=_TOKEN, what=_TOKEN_WHAT
                )
        if (node := body.get("agent")) is not None:
            if agents:
                self.r.fail(node, body.path("agent"), "give 'agent' or 'scope.agents', not both")
            agents = (self.r.string(node, body.path("agent"), pattern=_TOKEN, what=_TOKEN_WHAT),)
        return Scope(tenants=tenants, agents=agents, workflows=workflows)

    def allow_deny(self, body: MapView, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        node = body.get(name)
        if node is None:
            return (), ()
        view = self.r.mapping(node, body.path(name), {"allow", "deny"})
        allow = self.tools(n, view.path("allow")) if (n := view.get("allow")) is not None else ()
        deny = self.tools(n, view.path("deny")) if (n := view.get("deny")) is not None else ()
        return allow, deny

    def constraints(self, body: MapView) -> tuple[ToolConstraint, ...]:
        node = body.get("constraints")
        if node is None:
            return ()
        out: list[ToolConstraint] = []
        tools = self.r.mapping(node, body.path("constraints"))
        for tool, tool_key, args_node in tools.entries():
            self.tool_key(tools, tool)
            args = self.r.mapping(args_node, tool_key)
            if not len(args):
                self.r.fail(args_node, tool_key, "expected at least one argument")
            for arg, arg_key, cond_node in args.entries():
                self.arg_key(args, arg)
                cond = self.condition(cond_node, arg_key, in_rule=False)
                out.append(ToolConstraint(id=arg_key, tool=tool, argument=arg, condition=cond))
        return tuple(out)

    def thresholds(self, body: MapView) -> tuple[Threshold, ...]:
        node = body.get("require_approval_if_over")
        if node is None:
            return ()
        key = body.path("require_approval_if_over")
        if isinstance(node, yaml.ScalarNode):
            over = self.r.number(node, key)
            return (
                Threshold(id="require_approval_if_over", tool="*", argument="amount", over=over),
            )
        out: list[Threshold] = []
        tools = self.r.mapping(node, key)
        for tool, tool_key, value in tools.entries():
            self.tool_key(tools, tool)
            if isinstance(value, yaml.ScalarNode):
                out.append(
                    Threshold(
                        id=join_key("require_approval_if_over", tool),
                        tool=tool,
                        argument="amount",
                        over=self.r.number(value, tool_key),
                    )
                )
                continue
            args = self.r.mapping(value, tool_key)
            if not len(args):
                self.r.fail(value, tool_key, "expected at least one argument")
            for arg, arg_key, limit in args.entries():
                self.arg_key(args, arg)
                rule_id = join_key(join_key("require_approval_if_over", tool), arg)
                out.append(
                    Threshold(
                        id=rule_id, tool=tool, argument=arg, over=self.r.number(limit, arg_key)
                    )
                )
        return tuple(out)

    def email(self, body: MapView) -> EmailPolicy:
        deny = False
        if (node := body.get("deny_external_email")) is not None:
            deny = self.r.boolean(node, body.path("deny_external_email"))
        extras = [k for k in ("internal_domains", "email_tools", "email_arguments") if k in body]
        if not deny:
            if extras:
                self.r.fail(
                    body.key_node(extras[0]),
                    body.path(extras[0]),
                    "only meaningful with 'deny_external_email: true'",
                )
            return EmailPolicy()
        domains: tuple[str, ...] = ()
        if (node := body.get("internal_domains")) is not None:
            domains = tuple(
                d.lower()
                for d in self.r.strings(
                    node, body.path("internal_domains"), pattern=_DOMAIN, what=_DOMAIN_WHAT
                )
            )
        tools: tuple[str, ...] = ("*",)
        if (node := body.get("email_tools")) is not None:
            tools = self.tools(node, body.path("email_tools"))
        arguments: tuple[str, ...] = ("to", "cc", "bcc")
        if (node := body.get("email_arguments")) is not None:
            arguments = self.r.strings(
                node, body.path("email_arguments"), pattern=_ARG, what=_ARG_WHAT
            )
        return EmailPolicy(
            deny_external=True, internal_domains=domains, tools=tools, arguments=arguments
        )

    def days(self, node: yaml.Node, key: str) -> tuple[int, ...]:
        out: set[int] = set()
        accepted = [*DAY_NAMES, *_FULL_DAYS]
        for item in self.r.strings(node, key, what="a day (mon..sun) or a range such as mon-fri"):
            parts = [p.strip().lower() for p in item.split("-")]
            if len(parts) > 2:
                self.r.fail(node, key, f"{item!r} is not a day or a range such as mon-fri")
            index: list[int] = []
            for part in parts:
                if part in DAY_NAMES:
                    index.append(DAY_NAMES.index(part))
                elif part in _FULL_DAYS:
                    index.append(_FULL_DAYS.index(part))
                else:
                    self.r.fail(
                        node,
                        key,
                        f"{part!r} is not a day{suggest(part, accepted)}; "
                        f"accepted: {', '.join(DAY_NAMES)} or a range such as mon-fri",
                        accepted=list(DAY_NAMES),
                    )
            first, last = index[0], index[-1]
            day = first
            out.add(day)
            while day != last:
                day = (day + 1) % 7
                out.add(day)
        return tuple(sorted(out))

    def hours(self, node: yaml.Node, key: str) -> tuple[int, int]:
        text = self.r.string(node, key, what="an hour range such as 09:00-17:00")
        match = _HOURS.fullmatch(text.strip())
        if match is None:
            self.r.fail(node, key, f"{text!r} is not an hour range such as 09:00-17:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
            self.r.fail(node, key, f"{text!r} has an invalid time; hours run 00:00 to 24:00")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            self.r.fail(node, key, f"{text!r} is empty; use 00:00-24:00 for the whole day")
        return start, end

    def timezone(self, node: yaml.Node, key: str) -> tuple[str, _dt.tzinfo]:
        text = self.r.string(node, key, what="a time zone")
        if text in ("UTC", "Z", "utc"):
            return text, _dt.UTC
        if (match := _OFFSET.fullmatch(text)) is not None:
            sign, hh, mm = match.group(1), int(match.group(2)), int(match.group(3) or 0)
            if hh > 14 or mm > 59:
                self.r.fail(node, key, f"{text!r} is not a valid UTC offset")
            delta = _dt.timedelta(hours=hh, minutes=mm)
            return text, _dt.timezone(-delta if sign == "-" else delta)
        if _ZONE.fullmatch(text) and ".." not in text:
            try:
                return text, zoneinfo.ZoneInfo(text)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                pass
        raise self.r.error(
            node,
            key,
            f"{text!r} is not a time zone; use an IANA name such as "
            "Europe/Paris, UTC, or an offset such as +02:00",
        )

    def time_windows(self, body: MapView) -> tuple[TimeWindow, ...]:
        node = body.get("time_windows")
        if node is None:
            return ()
        out: list[TimeWindow] = []
        ids: set[str] = set()
        for key, item in self.r.items(node, body.path("time_windows")):
            view = self.r.mapping(item, key, _WINDOW_KEYS)
            window_id = key.removeprefix("policy.")
            if (n := view.get("id")) is not None:
                window_id = self.r.string(n, view.path("id"), pattern=_NAME, what=_NAME_WHAT)
            if window_id in ids:
                self.r.fail(view.get("id"), view.path("id"), f"duplicate id {window_id!r}")
            ids.add(window_id)
            tools = self.one_of_tool_keys(view)
            zone_name, zone = "UTC", cast(_dt.tzinfo, _dt.UTC)
            if (n := view.get("timezone")) is not None:
                zone_name, zone = self.timezone(n, view.path("timezone"))
            slots: list[TimeSlot] = []
            during_node = view.require("during")
            for slot_key, slot_node in self.r.items(during_node, view.path("during")):
                slot = self.r.mapping(slot_node, slot_key, {"days", "hours"})
                if not len(slot):
                    self.r.fail(slot_node, slot_key, "give 'days', 'hours' or both")
                days = tuple(range(7))
                if (n := slot.get("days")) is not None:
                    days = self.days(n, slot.path("days"))
                start, end = 0, 24 * 60
                if (n := slot.get("hours")) is not None:
                    start, end = self.hours(n, slot.path("hours"))
                slots.append(TimeSlot(days=days, start=start, end=end))
            if not slots:
                self.r.fail(during_node, view.path("during"), "expected at least one slot")
            outside: Decision = "deny"
            if (n := view.get("outside")) is not None:
                outside = cast(Decision, self.r.choice(n, view.path("outside"), _OUTSIDE))
            open_text = ", ".join(_slot_text(s) for s in slots)
            reason = f"outside the allowed time ({open_text}, {zone_name})"
            if (n := view.get("reason")) is not None:
                reason = self.r.string(n, view.path("reason"), what="a reason")
            out.append(
                TimeWindow(
                    id=window_id,
                    tools=tools,
                    timezone=zone_name,
                    tzinfo=zone,
                    during=tuple(slots),
                    outside=outside,
                    reason=reason,
                )
            )
        return tuple(out)

    def rules(self, body: MapView) -> tuple[Rule, ...]:
        node = body.get("rules")
        if node is None:
            return ()
        out: list[Rule] = []
        seen: dict[str, int] = {}
        for key, item in self.r.items(node, body.path("rules")):
            view = self.r.mapping(item, key, _RULE_KEYS)
            id_node = view.require("id")
            rule_id = self.r.string(id_node, view.path("id"), pattern=_NAME, what=_NAME_WHAT)
            if rule_id in RESERVED_RULE_IDS:
                self.r.fail(
                    id_node, view.path("id"), f"{rule_id!r} is a built-in rule id; choose another"
                )
            if rule_id in seen:
                self.r.fail(
                    id_node,
                    view.path("id"),
                    f"duplicate rule id {rule_id!r} (first at line {seen[rule_id]})",
                )
            seen[rule_id] = id_node.start_mark.line + 1
            tools = self.one_of_tool_keys(view)
            decision = cast(
                Decision, self.r.choice(view.require("decision"), view.path("decision"), DECISIONS)
            )
            arguments: list[tuple[str, ArgumentCondition]] = []
            roles: tuple[str, ...] = ()
            not_roles: tuple[str, ...] = ()
            tainted: bool | None = None
            effects: tuple[Effect, ...] = ()
            if (when_node := view.get("when")) is not None:
                when = self.r.mapping(when_node, view.path("when"), _WHEN_KEYS)
                if (n := when.get("arguments")) is not None:
                    args = self.r.mapping(n, when.path("arguments"))
                    for arg, arg_key, cond_node in args.entries():
                        self.arg_key(args, arg)
                        arguments.append((arg, self.condition(cond_node, arg_key, in_rule=True)))
                if (n := when.get("roles")) is not None:
                    roles = self.r.strings(n, when.path("roles"), pattern=_LABEL, what=_LABEL_WHAT)
                if (n := when.get("not_roles")) is not None:
                    not_roles = self.r.strings(
                        n, when.path("not_roles"), pattern=_LABEL, what=_LABEL_WHAT
                    )
                if (n := when.get("tainted")) is not None:
                    tainted = self.r.boolean(n, when.path("tainted"))
                if (n := when.get("effect")) is not None:
                    effect_key = when.path("effect")
                    nodes = (
                        [(effect_key, n)]
                        if isinstance(n, yaml.ScalarNode)
                        else list(self.r.items(n, effect_key))
                    )
                    effects = tuple(
                        sorted({cast(Effect, self.r.choice(e, k, EFFECTS)) for k, e in nodes})
                    )
            approving = decision in ("require_approval", "escalate")
            approvers: tuple[str, ...] = ()
            approvals: int | None = None
            escalate_to: str | None = None
            for extra in ("approvers", "approvals_required", "escalate_to"):
                if extra in view and not approving:
                    self.r.fail(
                        view.key_node(extra),
                        view.path(extra),
                        f"only meaningful when decision is require_approval or escalate "
                        f"(this rule's decision is {decision})",
                    )
            if (n := view.get("approvers")) is not None:
                approvers = self.r.strings(
                    n, view.path("approvers"), pattern=_LABEL, what=_LABEL_WHAT
                )
            if (n := view.get("approvals_required")) is not None:
                approvals = self.r.integer(
                    n, view.path("approvals_required"), minimum=1, maximum=10
                )
            if (n := view.get("escalate_to")) is not None:
                escalate_to = self.r.string(
                    n, view.path("escalate_to"), pattern=_LABEL, what=_LABEL_WHAT
                )
            reason = _rule_reason(rule_id, decision, arguments, roles, not_roles, tainted, effects)
            if (n := view.get("reason")) is not None:
                reason = self.r.string(n, view.path("reason"), what="a reason")
            description = ""
            if (n := view.get("description")) is not None:
                description = self.r.string(n, view.path("description"), what="a description")
            out.append(
                Rule(
                    id=rule_id,
                    tools=tools,
                    decision=decision,
                    reason=reason,
                    description=description,
                    arguments=tuple(arguments),
                    roles=roles,
                    not_roles=not_roles,
                    tainted=tainted,
                    effects=effects,
                    approvers=approvers,
                    approvals_required=approvals,
                    escalate_to=escalate_to,
                )
            )
        return tuple(out)

    def caps(self, body: MapView) -> PolicyCaps:
        spending: Decimal | None = None
        if (node := body.get("spending_limit_usd")) is not None:
            spending = self.r.number(node, body.path("spending_limit_usd"))
            if spending < 0:
                self.r.fail(node, body.path("spending_limit_usd"), "must not be negative")
        ints: dict[str, int | None] = {}
        for name in ("max_tokens_per_task", "max_tool_calls_per_task", "reflection_loop_cap"):
            node = body.get(name)
            ints[name] = None if node is None else self.r.integer(node, body.path(name))
        return PolicyCaps(
            spending_limit_usd=spending,
            max_tokens_per_task=ints["max_tokens_per_task"],
            max_tool_calls_per_task=ints["max_tool_calls_per_task"],
            reflection_loop_cap=ints["reflection_loop_cap"],
        )

    # -- the document ---------------------------------------------------------------------------

    def document(self, root: yaml.Node) -> PolicyDocument:
        if not isinstance(root, yaml.MappingNode):
            self.r.fail(
                root,
                "",
                "a policy document must be a mapping of keys such as "
                "'policy', 'scope', 'tools', 'rules'",
            )
        top = self.r.mapping(root, "", _TOP_KEYS)
        nested = top.get("policy")
        if isinstance(nested, yaml.MappingNode):
            if len(top) > 1:
                other = next(n for n in top.names() if n != "policy")
                self.r.fail(
                    top.key_node(other),
                    other,
                    "when 'policy' holds a mapping (the nested form), it must be the "
                    "only top-level key; move this key inside it",
                )
            body = self.r.mapping(nested, "policy", _NESTED_KEYS)
            name_key = "name"
        else:
            body = top
            name_key = "policy"
        if name_key == "name" and "name" not in body and "agent" in body:
            name_key = "agent"  # the seed's nested form is named after its agent
        name = self.r.string(
            body.require(name_key), body.path(name_key), pattern=_NAME, what=_NAME_WHAT
        )
        version = "1"
        if (node := body.get("version")) is not None:
            version = self.r.string(node, body.path("version"), pattern=_TOKEN, what="a version")
        description = ""
        if (node := body.get("description")) is not None:
            description = self.r.string(node, body.path("description"), what="a description")
        autonomy: Autonomy = "L3"
        if (node := body.get("autonomy")) is not None:
            autonomy = cast(Autonomy, self.r.choice(node, body.path("autonomy"), AUTONOMY_LEVELS))
        shadow = False
        if (node := body.get("shadow")) is not None:
            shadow = self.r.boolean(node, body.path("shadow"))
        escalation: str | None = None
        if (node := body.get("escalation")) is not None:
            escalation = self.r.string(
                node, body.path("escalation"), pattern=_LABEL, what=_LABEL_WHAT
            )
        approvers: tuple[str, ...] = ()
        if (node := body.get("approvers")) is not None:
            approvers = self.r.strings(
                node, body.path("approvers"), pattern=_LABEL, what=_LABEL_WHAT
            )
        tools_allow, tools_deny = self.allow_deny(body, "tools")
        if (node := body.get("allowlisted_tools")) is not None:
            tools_node = body.get("tools")
            if tools_node is not None and tools_allow:
                self.r.fail(
                    node,
                    body.path("allowlisted_tools"),
                    "give 'allowlisted_tools' or 'tools.allow', not both",
                )
            tools_allow = self.tools(node, body.path("allowlisted_tools"))
        models_allow, models_deny = self.allow_deny(body, "models")
        approval_required: tuple[str, ...] = ()
        if (node := body.get("approval_required")) is not None:
            approval_required = self.tools(node, body.path("approval_required"))
        two_person: tuple[str, ...] = ()
        if (node := body.get("two_person_rule")) is not None:
            two_person = self.tools(node, body.path("two_person_rule"))
        vendors: tuple[str, ...] | None = None
        if (node := body.get("allowed_vendors")) is not None:
            vendors = self.r.strings(
                node, body.path("allowed_vendors"), pattern=_LABEL, what=_LABEL_WHAT
            )
        return PolicyDocument(
            name=name,
            version=version,
            description=description,
            scope=self.scope(body),
            autonomy=autonomy,
            shadow=shadow,
            escalation=escalation,
            approvers=approvers,
            tools_allow=tools_allow,
            tools_deny=tools_deny,
            models_allow=models_allow,
            models_deny=models_deny,
            approval_required=approval_required,
            two_person_rule=two_person,
            constraints=self.constraints(body),
            allowed_vendors=vendors,
            thresholds=self.thresholds(body),
            email=self.email(body),
            time_windows=self.time_windows(body),
            rules=self.rules(body),
            caps=self.caps(body),
            budget_caps=self.budget_caps(body),
            rate_limits=self.rate_limits(body),
        )


def _slot_text(slot: TimeSlot) -> str:
    days = "every day" if len(slot.days) == 7 else ",".join(DAY_NAMES[d] for d in slot.days)
    hours = slot.to_dict()["hours"]
    return days if hours == "00:00-24:00" else f"{days} {hours}"


def _cond_text(arg: str, cond: ArgumentCondition) -> str:
    parts: list[str] = []
    for op, sym in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<")):
        bound = getattr(cond, op)
        if bound is not None:
            parts.append(f"{arg} {sym} {bound}")
    if cond.in_ is not None:
        parts.append(f"{arg} in {list(cond.in_)}")
    if cond.not_in is not None:
        parts.append(f"{arg} not in {list(cond.not_in)}")
    if cond.pattern is not None:
        parts.append(f"{arg} matches {cond.pattern!r}")
    if cond.email_domains is not None:
        parts.append(f"{arg} within {', '.join(cond.email_domains)}")
    if cond.min_length is not None:
        parts.append(f"len({arg}) >= {cond.min_length}")
    if cond.max_length is not None:
        parts.append(f"len({arg}) <= {cond.max_length}")
    return " and ".join(parts)


def _rule_reason(
    rule_id: str,
    decision: Decision,
    arguments: list[tuple[str, ArgumentCondition]],
    roles: tuple[str, ...],
    not_roles: tuple[str, ...],
    tainted: bool | None,
    effects: tuple[Effect, ...],
) -> str:
    conditions = [_cond_text(arg, cond) for arg, cond in arguments]
    if roles:
        conditions.append("principal has role " + " or ".join(roles))
    if not_roles:
        conditions.append("principal lacks role " + " and ".join(not_roles))
    if tainted is not None:
        conditions.append("untrusted content entered the run" if tainted else "the run is clean")
    if effects:
        conditions.append("effect is " + " or ".join(effects))
    text = f"rule {rule_id!r} ({decision})"
    return f"{text}: {'; '.join(conditions)}" if conditions else text


def parse_document(root: yaml.Node, source: str) -> PolicyDocument:
    """Validate a composed YAML document and build the normalized PolicyDocument."""
    return _Parser(source).document(root)
