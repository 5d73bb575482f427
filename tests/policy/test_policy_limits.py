"""Policy ``caps:`` and ``rate_limits:`` sections: parsing, errors, selection, ledger mapping."""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from decimal import Decimal
from typing import Any, Literal

import pytest

import keel.policy.document
from keel.core import Call, Principal
from keel.errors import BudgetExceeded, ConfigError, RateLimited
from keel.ledger import (
    Cap,
    Ledger,
    RateLimit,
    RateLimiter,
    ReservationRequest,
    bucket_keys,
)
from keel.policy import CapSpec, Limits, PolicySet, RateLimitSpec, load_policy, parse_policy
from keel.store import open_store
from keel.testing import FrozenClock

D = Decimal
BOT = Principal(agent_id="support-bot", tenant="acme")

SUPPORT = """\
policy: support
tools:
  allow: [billing.refund, orders.lookup]
spending_limit_usd: 5
max_tool_calls_per_task: 20
caps:
  - id: refunds-per-customer-day
    tools: [billing.refund]
    per: [arguments.customer_id]
    window: day
    max_calls: 3
    max_usd: 500
    sum_argument: amount
  - id: model-day
    models: ["gpt-4o*"]
    per: [agent]
    window: day
    max_usd: 50
    max_tokens: 2000000
    alert_at: 0.9
  - id: everything
    per: [tenant, workflow]
    max_usd: "1000.50"
rate_limits:
  - id: agent-calls
    scope: agent
    requests: 60
    per: 1m
    burst: 10
  - id: refund-tool
    scope: tool
    tools: ["billing.*"]
    requests: 5
    per: 10s
  - id: model-tokens
    scope: model
    tokens: 100000
    per: 1h
"""


def _ledger_caps(limits: Limits) -> list[Cap]:
    return [Cap.from_spec(spec) for spec in limits.caps]


def _rate_limits(limits: Limits) -> list[RateLimit]:
    return [RateLimit.from_spec(spec) for spec in limits.rate_limits]


def test_specs_map_to_ledger_types_as_documented() -> None:
    doc = parse_policy(SUPPORT)
    refunds = Cap.from_spec(doc.budget_caps[0])
    assert refunds == Cap(
        "refunds-per-customer-day",
        per=("arguments.customer_id",),
        window="day",
        limit_usd=D(500),
        limit_calls=3,
        sum_argument="amount",
    )
    assert Cap.from_spec(doc.budget_caps[1]).alert_fraction == D("0.9")
    assert RateLimit.from_spec(doc.rate_limits[0]) == RateLimit(
        "agent-calls", "agent", dt.timedelta(minutes=1), requests=60, burst=10
    )


def test_caps_and_rate_limits_parse() -> None:
    doc = parse_policy(SUPPORT)
    refunds, model, everything = doc.budget_caps
    assert refunds == CapSpec(
        id="refunds-per-customer-day",
        tools=("billing.refund",),
        per=("arguments.customer_id",),
        window="day",
        max_usd=D(500),
        max_calls=3,
        sum_argument="amount",
    )
    assert refunds.key_arguments == ("customer_id",)
    assert (model.models, model.alert_at, model.max_tokens) == (("gpt-4o*",), D("0.9"), 2000000)
    assert (everything.per, everything.window, everything.max_usd) == (
        ("tenant", "workflow"),
        "none",
        D("1000.50"),
    )
    agent, tool, tokens = doc.rate_limits
    assert agent == RateLimitSpec(
        id="agent-calls", scope="agent", interval_seconds=60, requests=60, burst=10
    )
    assert (tool.interval_seconds, tool.tools) == (10, ("billing.*",))
    assert (tokens.tokens, tokens.requests, tokens.interval_seconds) == (100000, None, 3600)


def test_new_sections_change_the_hash_only_when_present() -> None:
    plain = parse_policy("policy: p\ntools: {allow: [a.b]}\n")
    assert "budget_caps" not in plain.to_dict()
    assert "rate_limits" not in plain.to_dict()
    capped = parse_policy("policy: p\ntools: {allow: [a.b]}\ncaps: [{id: c, max_calls: 1}]\n")
    assert capped.to_dict()["budget_caps"][0]["max_calls"] == 1
    assert capped.hash != plain.hash


def test_limits_for_selects_by_kind_and_target() -> None:
    policies = PolicySet([load_policy(SUPPORT)])
    refund = policies.limits_for(BOT, "refunds", "tool", "billing.refund")
    assert [c.id for c in refund.caps] == [
        "task",
        "task-tool-calls",
        "support#refunds-per-customer-day",
        "support#everything",
    ]
    task, tool_calls = refund.caps[:2]
    assert (task.window, task.max_usd, task.max_tokens, task.per) == ("run", D(5), None, ())
    assert (tool_calls.max_calls, tool_calls.tools) == (20, ("*",))
    assert [r.id for r in refund.rate_limits] == ["support#agent-calls", "support#refund-tool"]
    lookup = policies.limits_for(BOT, "refunds", "tool", "orders.lookup")
    assert [c.id for c in lookup.caps] == ["task", "task-tool-calls", "support#everything"]
    assert [r.id for r in lookup.rate_limits] == ["support#agent-calls"]
    model = policies.limits_for(BOT, None, "model", "gpt-4o-mini")
    assert [c.id for c in model.caps] == ["task", "support#model-day", "support#everything"]
    assert [r.id for r in model.rate_limits] == ["support#agent-calls", "support#model-tokens"]
    other = policies.limits_for(BOT, None, "model", "claude-3")
    assert [c.id for c in other.caps] == ["task", "support#everything"]
    assert policies.limits_for(BOT, "refunds", "tool", "billing.refund") is refund  # cached


def test_limits_for_combines_documents() -> None:
    tight = load_policy("policy: tight\nscope: {workflows: [refunds]}\nspending_limit_usd: 2\n")
    tokens = load_policy(
        "policy: tokens\nmax_tokens_per_task: 900\n"
        "caps: [{id: c, window: call, max_usd: 1}]\n"
        "rate_limits: [{id: r, scope: tenant, requests: 1, per: 1d}]\n"
    )
    policies = PolicySet([load_policy(SUPPORT), tight, tokens])
    limits = policies.limits_for(BOT, "refunds", "tool", "orders.lookup")
    task = limits.caps[0]
    assert (task.id, task.max_usd, task.max_tokens) == ("task", D(2), 900)
    assert "tokens#c" in [c.id for c in limits.caps]
    assert [r.id for r in limits.rate_limits] == ["support#agent-calls", "tokens#r"]
    outside = policies.limits_for(BOT, None, "tool", "orders.lookup")
    assert outside.caps[0].max_usd == D(5)
    nobody = PolicySet([]).limits_for(BOT, None, "tool", "x")
    assert nobody == Limits()
    assert policies.caps_for(BOT, "refunds").spending_limit_usd == D(2)


def test_the_seed_refund_cap_is_enforced_through_the_ledger(store_url: str) -> None:
    policies = PolicySet([load_policy(SUPPORT)])
    limits = policies.limits_for(BOT, "refunds", "tool", "billing.refund")
    caps = _ledger_caps(limits)
    with open_store(store_url) as store:
        clock = FrozenClock()
        ledger = Ledger(store, clock)
        limiter = RateLimiter(store, clock)

        def refund(customer: str, amount: Any) -> None:
            call = Call(
                kind="tool",
                target="billing.refund",
                arguments={"customer_id": customer, "amount": amount},
                principal=BOT,
                run_id=f"run-{customer}-{amount}",
                workflow="refunds",
            )
            keys = bucket_keys(_rate_limits(limits), BOT, "tool", "billing.refund")
            limiter.acquire(keys)
            request = ReservationRequest.for_call(call, amount_usd=D("0.01"), caps=caps)
            ledger.settle(ledger.reserve(request).id, D("0.01"))

        refund("C1", 100)
        refund("C1", "200")
        refund("C1", 1)
        with pytest.raises(BudgetExceeded) as info:
            refund("C1", 2)
        assert info.value.context["cap"] == "support#refunds-per-customer-day"
        refund("C2", 500)
        with pytest.raises(RateLimited) as limited:
            refund("C3", 1)  # the sixth refund in ten seconds
        assert limited.value.context["limit"] == "support#refund-tool"
        assert limited.value.retry_after == 2.0


def test_the_documented_example_parses() -> None:
    doc = keel.policy.document.__doc__ or ""
    block = re.search(r"\n( {4}caps:.*?)\n\nThe seed's nested form", doc, re.DOTALL)
    assert block is not None
    text = "policy: example\n" + textwrap.dedent(block.group(1))
    parsed = parse_policy(text)
    assert [c.id for c in parsed.budget_caps] == [
        "refunds-per-customer-day",
        "model-spend-per-agent-day",
    ]
    assert [r.id for r in parsed.rate_limits] == ["agent-calls", "model-tokens"]
    caps = _ledger_caps(Limits(caps=parsed.budget_caps, rate_limits=parsed.rate_limits))
    assert caps[0].key_arguments == ("customer_id",)


def _err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_policy(textwrap.dedent(text), source_name="limits.yaml")
    return info.value


MALFORMED = [
    ("caps: [{id: c}]", 2, "caps[0]", "give at least one of max_usd, max_tokens, max_calls"),
    ("caps: [{max_calls: 1}]", 2, "caps[0].id", "missing required key 'id'"),
    ("caps: [{id: c, max_calls: 1, window: week}]", 2, "caps[0].window", "is not one of"),
    (
        "caps: [{id: c, max_calls: 1, per: [customer]}]",
        2,
        "caps[0].per[0]",
        "'customer' is not a dimension",
    ),
    (
        "caps: [{id: c, max_calls: 1, per: [call]}]",
        2,
        "caps[0].per[0]",
        "use 'window: call'",
    ),
    (
        "caps: [{id: c, max_calls: 1, per: ['arguments.a b']}]",
        2,
        "caps[0].per[0]",
        "is not an argument name",
    ),
    (
        "caps: [{id: c, max_calls: 1, window: call, per: [agent]}]",
        2,
        "caps[0].per",
        "not used with 'window: call'",
    ),
    ("caps: [{id: c, max_usd: -1}]", 2, "caps[0].max_usd", "must be from 0"),
    ("caps: [{id: c, max_usd: 0.1.2}]", 2, "caps[0].max_usd", "expected a number"),
    ("caps: [{id: c, max_calls: 1.5}]", 2, "caps[0].max_calls", "expected a whole number"),
    ("caps: [{id: c, max_tokens: -1}]", 2, "caps[0].max_tokens", "out of range"),
    (
        "caps: [{id: c, max_calls: 1, sum_argument: amount}]",
        2,
        "caps[0].sum_argument",
        "only meaningful with max_usd",
    ),
    ("caps: [{id: c, max_calls: 1, alert_at: 1.5}]", 2, "caps[0].alert_at", "not a fraction"),
    ("caps: [{id: c, max_calls: 1, windw: day}]", 2, "caps[0].windw", "did you mean 'window'?"),
    (
        "caps:\n  - {id: c, max_calls: 1}\n  - {id: c, max_calls: 2}",
        4,
        "caps[1].id",
        "duplicate cap id 'c' (first at line 3)",
    ),
    ("rate_limits: [{id: r, scope: agent, per: 1m}]", 2, "rate_limits[0]", "requests, tokens"),
    (
        "rate_limits: [{id: r, scope: session, requests: 1, per: 1m}]",
        2,
        "rate_limits[0].scope",
        "'session' is not one of agent, tenant, tool, model",
    ),
    (
        "rate_limits: [{id: r, scope: agent, requests: 1, per: 1 minute}]",
        2,
        "rate_limits[0].per",
        "is not an interval such as 10s, 1m, 1h or 1d",
    ),
    (
        "rate_limits: [{id: r, scope: agent, requests: 1, per: 60}]",
        2,
        "rate_limits[0].per",
        "is not an interval",
    ),
    (
        "rate_limits: [{id: r, scope: agent, requests: 1, per: 8d}]",
        2,
        "rate_limits[0].per",
        "out of range",
    ),
    (
        "rate_limits: [{id: r, scope: agent, requests: 1, per: 0s}]",
        2,
        "rate_limits[0].per",
        "out of range",
    ),
    (
        "rate_limits: [{id: r, scope: agent, requests: 0, per: 1m}]",
        2,
        "rate_limits[0].requests",
        "out of range",
    ),
    (
        "rate_limits: [{id: r, scope: agent, tokens: 5, burst: 2, per: 1m}]",
        2,
        "rate_limits[0].burst",
        "only meaningful with requests",
    ),
    (
        "rate_limits: [{id: r, scope: tool, models: [x], requests: 1, per: 1m}]",
        2,
        "rate_limits[0].models",
        "applies only to tool calls",
    ),
    (
        "rate_limits: [{id: r, scope: model, tools: [x], requests: 1, per: 1m}]",
        2,
        "rate_limits[0].tools",
        "applies only to model calls",
    ),
    (
        "rate_limits:\n  - {id: r, scope: agent, requests: 1, per: 1m}\n"
        "  - {id: r, scope: agent, requests: 1, per: 1m}",
        4,
        "rate_limits[1].id",
        "duplicate rate limit id 'r'",
    ),
    ("rate_limits: {id: r}", 2, "rate_limits", "expected a list"),
]


@pytest.mark.parametrize(("body", "line", "key", "fragment"), MALFORMED)
def test_malformed_sections_name_file_line_and_key(
    body: str, line: int, key: str, fragment: str
) -> None:
    err = _err("policy: x\n" + body + "\n")
    assert (err.context["file"], err.context["line"], err.context["key"]) == (
        "limits.yaml",
        line,
        key,
    )
    assert err.message.startswith(f"limits.yaml:{line}: key {key!r}: ")
    assert fragment in err.message


def test_nested_form_accepts_the_new_sections() -> None:
    doc = parse_policy(
        "policy:\n  name: nested\n  caps: [{id: c, max_calls: 1}]\n"
        "  rate_limits: [{id: r, scope: tenant, requests: 1, per: 1s}]\n"
    )
    assert (len(doc.budget_caps), len(doc.rate_limits)) == (1, 1)


@pytest.mark.parametrize("kind", ["tool", "model"])
def test_limits_for_without_policies_is_empty(kind: Literal["tool", "model"]) -> None:
    assert PolicySet([]).limits_for(BOT, None, kind, "x") == Limits()
