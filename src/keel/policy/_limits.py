"""Parsing the ``caps:`` and ``rate_limits:`` sections of a policy (see "Caps" and "Rate
limits" in :mod:`keel.policy.document`), with the same located errors as the rest of the file.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import cast

import yaml

from keel.policy._names import ARG, ARG_WHAT, NAME, NAME_WHAT, TOOL_PATTERN, TOOL_WHAT
from keel.policy._yaml import MapView, Reader, suggest
from keel.policy.document import (
    CAP_WINDOWS,
    RATE_SCOPES,
    CapSpec,
    CapWindow,
    RateLimitSpec,
    RateScope,
)

__all__ = ["LimitsParser"]

_CAP_KEYS = frozenset(
    {
        "id",
        "tools",
        "models",
        "per",
        "window",
        "max_usd",
        "max_tokens",
        "max_calls",
        "sum_argument",
        "alert_at",
    }
)
_RATE_KEYS = frozenset({"id", "scope", "tools", "models", "requests", "tokens", "per", "burst"})
_CAP_DIMENSIONS = ("tenant", "agent", "workflow", "run")
_PER_ARGUMENT = re.compile(r"arguments\.([A-Za-z0-9_$@-]+)")
_DURATION = re.compile(r"(\d{1,9})\s*(s|m|h|d)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_INTERVAL_SECONDS = 7 * 86400
_MAX_CAP_USD = Decimal(1_000_000_000)
_MAX_CAP_UNITS = 10**15
_MAX_RATE = 10**9


class LimitsParser:
    """Mixin of the document parser: reads the ledger's sections. Needs ``self.r``."""

    r: Reader

    def tools(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        return self.r.strings(node, key, pattern=TOOL_PATTERN, what=TOOL_WHAT)

    def budget_caps(self, body: MapView) -> tuple[CapSpec, ...]:
        node = body.get("caps")
        if node is None:
            return ()
        out: list[CapSpec] = []
        seen: dict[str, int] = {}
        for key, item in self.r.items(node, body.path("caps")):
            view = self.r.mapping(item, key, _CAP_KEYS)
            id_node = view.require("id")
            cap_id = self.r.string(id_node, view.path("id"), pattern=NAME, what=NAME_WHAT)
            if cap_id in seen:
                self.r.fail(
                    id_node,
                    view.path("id"),
                    f"duplicate cap id {cap_id!r} (first at line {seen[cap_id]})",
                )
            seen[cap_id] = id_node.start_mark.line + 1
            tools: tuple[str, ...] = ()
            if (n := view.get("tools")) is not None:
                tools = self.tools(n, view.path("tools"))
            models: tuple[str, ...] = ()
            if (n := view.get("models")) is not None:
                models = self.tools(n, view.path("models"))
            window: CapWindow = "none"
            if (n := view.get("window")) is not None:
                window = cast(CapWindow, self.r.choice(n, view.path("window"), CAP_WINDOWS))
            per: tuple[str, ...] = ()
            if (n := view.get("per")) is not None:
                if window == "call":
                    self.r.fail(
                        view.key_node("per"),
                        view.path("per"),
                        "not used with 'window: call' (each call is checked alone)",
                    )
                per = self.per(n, view.path("per"))
            max_usd: Decimal | None = None
            if (n := view.get("max_usd")) is not None:
                max_usd = self.r.number(n, view.path("max_usd"))
                if max_usd < 0 or max_usd > _MAX_CAP_USD:
                    self.r.fail(n, view.path("max_usd"), f"must be from 0 to {_MAX_CAP_USD}")
            ints: dict[str, int | None] = {}
            for name in ("max_tokens", "max_calls"):
                n = view.get(name)
                ints[name] = (
                    None
                    if n is None
                    else self.r.integer(n, view.path(name), maximum=_MAX_CAP_UNITS)
                )
            if max_usd is None and ints["max_tokens"] is None and ints["max_calls"] is None:
                self.r.fail(item, key, "give at least one of max_usd, max_tokens, max_calls")
            sum_argument: str | None = None
            if (n := view.get("sum_argument")) is not None:
                sum_argument = self.r.string(
                    n, view.path("sum_argument"), pattern=ARG, what=ARG_WHAT
                )
                if max_usd is None:
                    self.r.fail(
                        view.key_node("sum_argument"),
                        view.path("sum_argument"),
                        "only meaningful with max_usd (the summed argument is counted as money)",
                    )
            alert_at: Decimal | None = None
            if (n := view.get("alert_at")) is not None:
                alert_at = self.r.number(n, view.path("alert_at"))
                if not 0 < alert_at <= 1:
                    self.r.fail(n, view.path("alert_at"), f"{alert_at} is not a fraction in (0, 1]")
            out.append(
                CapSpec(
                    id=cap_id,
                    tools=tools,
                    models=models,
                    per=per,
                    window=window,
                    max_usd=max_usd,
                    max_tokens=ints["max_tokens"],
                    max_calls=ints["max_calls"],
                    sum_argument=sum_argument,
                    alert_at=alert_at,
                )
            )
        return tuple(out)

    def per(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        accepted = [*_CAP_DIMENSIONS, "arguments.<name>"]
        out: list[str] = []
        items = [(key, node)] if isinstance(node, yaml.ScalarNode) else self.r.items(node, key)
        for item_key, item in items:
            text = self.r.string(item, item_key, what="a dimension")
            match = _PER_ARGUMENT.fullmatch(text)
            if text not in _CAP_DIMENSIONS and match is None:
                hint = " (for per-call limits use 'window: call')" if text == "call" else ""
                if text.startswith("arguments."):
                    hint = f" ({text[len('arguments.') :]!r} is not {ARG_WHAT})"
                self.r.fail(
                    item,
                    item_key,
                    f"{text!r} is not a dimension{suggest(text, _CAP_DIMENSIONS)}{hint}; "
                    f"accepted: {', '.join(accepted)}",
                    accepted=accepted,
                )
            if text not in out:
                out.append(text)
        return tuple(out)

    def duration(self, node: yaml.Node, key: str) -> int:
        what = "an interval such as 10s, 1m, 1h or 1d"
        text = self.r.string(node, key, what=what) if isinstance(node, yaml.ScalarNode) else ""
        match = _DURATION.fullmatch(text.strip())
        if match is None:
            self.r.fail(node, key, f"{text!r} is not {what}" if text else f"expected {what}")
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if not 1 <= seconds <= _MAX_INTERVAL_SECONDS:
            self.r.fail(node, key, f"{text!r} is out of range; intervals run from 1s to 7d")
        return seconds

    def rate_limits(self, body: MapView) -> tuple[RateLimitSpec, ...]:
        node = body.get("rate_limits")
        if node is None:
            return ()
        out: list[RateLimitSpec] = []
        seen: dict[str, int] = {}
        for key, item in self.r.items(node, body.path("rate_limits")):
            view = self.r.mapping(item, key, _RATE_KEYS)
            id_node = view.require("id")
            limit_id = self.r.string(id_node, view.path("id"), pattern=NAME, what=NAME_WHAT)
            if limit_id in seen:
                self.r.fail(
                    id_node,
                    view.path("id"),
                    f"duplicate rate limit id {limit_id!r} (first at line {seen[limit_id]})",
                )
            seen[limit_id] = id_node.start_mark.line + 1
            scope = cast(
                RateScope, self.r.choice(view.require("scope"), view.path("scope"), RATE_SCOPES)
            )
            tools: tuple[str, ...] = ()
            if (n := view.get("tools")) is not None:
                tools = self.tools(n, view.path("tools"))
            models: tuple[str, ...] = ()
            if (n := view.get("models")) is not None:
                models = self.tools(n, view.path("models"))
            for name, wrong in (("models", "tool"), ("tools", "model")):
                if name in view and scope == wrong:
                    self.r.fail(
                        view.key_node(name),
                        view.path(name),
                        f"a rate limit with scope {wrong} applies only to {wrong} calls; "
                        f"give {wrong}s instead of {name}",
                    )
            interval = self.duration(view.require("per"), view.path("per"))
            counts: dict[str, int | None] = {}
            for name in ("requests", "tokens", "burst"):
                n = view.get(name)
                counts[name] = (
                    None
                    if n is None
                    else self.r.integer(n, view.path(name), minimum=1, maximum=_MAX_RATE)
                )
            if counts["requests"] is None and counts["tokens"] is None:
                self.r.fail(item, key, "give requests, tokens or both")
            if counts["burst"] is not None and counts["requests"] is None:
                self.r.fail(
                    view.key_node("burst"),
                    view.path("burst"),
                    "only meaningful with requests (burst is the most calls at once)",
                )
            out.append(
                RateLimitSpec(
                    id=limit_id,
                    scope=scope,
                    interval_seconds=interval,
                    requests=counts["requests"],
                    tokens=counts["tokens"],
                    burst=counts["burst"],
                    tools=tools,
                    models=models,
                )
            )
        return tuple(out)
