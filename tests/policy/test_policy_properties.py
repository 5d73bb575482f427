"""Properties: evaluation is deterministic, and a tool nobody allowlisted is never allowed."""

from __future__ import annotations

import datetime as dt
import textwrap
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.core import Call, Effect, Principal
from keel.policy import PolicySet, load_policy

POLICY_TEXT = textwrap.dedent(
    """\
    policy: props
    autonomy: L2
    escalation: human_review
    approvers: [lead]
    tools:
      allow: [orders.lookup, "tickets.*", billing.refund, email.send]
      deny: ["billing.delete_*"]
    two_person_rule: [billing.refund]
    require_approval_if_over:
      billing.refund: 200
    constraints:
      billing.refund:
        amount: {gt: 0, max: 1000}
        currency: {in: [USD, EUR]}
        destination: {pattern: "original_payment_method|acct_[a-z0-9]{8}", required: false}
    deny_external_email: true
    internal_domains: [example.com]
    allowed_vendors: [Vendor_A]
    time_windows:
      - tool: billing.refund
        timezone: Europe/Paris
        during: [{days: mon-fri, hours: "08:00-20:00"}]
        outside: require_approval
    rules:
      - id: tainted-refunds
        tool: billing.refund
        when: {tainted: true, arguments: {amount: {min: 50}}}
        decision: escalate
      - id: interns
        tools: ["tickets.*"]
        when: {roles: [intern]}
        decision: require_approval
      - id: reports-for-analysts
        tool: reports.export
        when: {roles: [analyst], arguments: {rows: {max: 100}}}
        decision: allow
    """
)

ALLOW_PATTERNS = ("orders.lookup", "tickets.", "billing.refund", "email.send", "reports.export")

TOOLS = st.sampled_from(
    [
        "orders.lookup",
        "tickets.read",
        "tickets.update",
        "billing.refund",
        "billing.delete_customer",
        "email.send",
        "reports.export",
        "shell.exec",
        "Billing.refund",
    ]
)
NUMBERS = st.one_of(
    st.integers(min_value=-10, max_value=5000),
    st.decimals(min_value=-10, max_value=5000, places=2, allow_nan=False),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=0, max_value=2000, places=2).map(str),
    st.booleans(),
    st.none(),
)
VALUES = st.one_of(
    NUMBERS,
    st.sampled_from(["USD", "EUR", "GBP", "original_payment_method", "acct_12345678", "Vendor_A"]),
    st.sampled_from(["a@example.com", "b@evil.com", "X <c@example.com>", "nobody"]),
    st.lists(st.sampled_from(["a@example.com", "b@evil.com"]), max_size=3),
    st.text(max_size=12),
)
ARGUMENTS = st.dictionaries(
    st.sampled_from(
        ["amount", "currency", "destination", "to", "cc", "vendor", "rows", "order_id"]
    ),
    VALUES,
    max_size=6,
)
PRINCIPALS = st.builds(
    Principal,
    agent_id=st.sampled_from(["support-bot", "other"]),
    tenant=st.sampled_from(["acme", "globex"]),
    roles=st.frozensets(st.sampled_from(["intern", "analyst", "lead"]), max_size=2),
)
EFFECTS: st.SearchStrategy[Effect] = st.sampled_from(["read", "reversible", "irreversible"])
MOMENTS = st.datetimes(
    min_value=dt.datetime(2020, 1, 1),
    max_value=dt.datetime(2030, 1, 1),
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5))]),
)


def _call(tool: str, args: dict[str, Any], principal: Principal, tainted: bool) -> Call:
    return Call(kind="tool", target=tool, arguments=args, principal=principal, tainted=tainted)


POLICIES = PolicySet([load_policy(POLICY_TEXT, source_name="props.yaml")])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TOOLS, ARGUMENTS, PRINCIPALS, st.booleans(), EFFECTS, MOMENTS)
def test_evaluation_is_deterministic(
    tool: str,
    args: dict[str, Any],
    principal: Principal,
    tainted: bool,
    effect: Effect,
    now: dt.datetime,
) -> None:
    call = _call(tool, args, principal, tainted)
    first = POLICIES.evaluate(call, effect, now)
    assert POLICIES.evaluate(call, effect, now) == first
    # a second, independent compilation of the same text decides identically
    again = PolicySet([load_policy(POLICY_TEXT, source_name="props.yaml")])
    assert again.evaluate(call, effect, now) == first
    explained = POLICIES.explain(call, effect, now)
    assert (explained["verdict"], explained["rule_id"], explained["reason"]) == (
        first.decision,
        first.rule_id,
        first.reason,
    )
    assert any(m["rule_id"] == first.rule_id for m in explained["matched"])
    if first.decision in ("require_approval", "escalate"):
        assert first.approvals_required >= 1
    else:
        assert first.approvals_required == 0


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABC._-:/"), min_size=1, max_size=24
    ),
    ARGUMENTS,
    PRINCIPALS,
    st.booleans(),
    EFFECTS,
)
def test_a_tool_not_allowlisted_is_never_allowed(
    tool: str, args: dict[str, Any], principal: Principal, tainted: bool, effect: Effect
) -> None:
    allowlisted = tool.startswith("tickets.") or tool in ALLOW_PATTERNS
    call = _call(tool, args, principal, tainted)
    verdict = POLICIES.evaluate(call, effect, dt.datetime(2026, 1, 5, 10, tzinfo=dt.UTC))
    if not allowlisted:
        assert verdict.decision == "deny"
        assert verdict.rule_id == "default-deny"


@settings(max_examples=200, deadline=None)
@given(
    st.decimals(min_value=0, max_value=10**6, places=2),
    st.decimals(min_value=0, max_value=10**6, places=2),
    st.sampled_from([str, Decimal, float]),
)
def test_thresholds_compare_exactly(threshold: Decimal, amount: Decimal, kind: type) -> None:
    p = load_policy(
        f"policy: t\ntools: {{allow: [pay.out]}}\nrequire_approval_if_over: {threshold}\n"
    )
    value: Any = kind(amount) if kind is not float else float(str(amount))
    verdict = p.evaluate(
        _call("pay.out", {"amount": value}, Principal("a", "t"), False),
        "irreversible",
        dt.datetime(2026, 1, 5, tzinfo=dt.UTC),
    )
    expected = "require_approval" if amount > threshold else "allow"
    assert verdict.decision == expected


@settings(max_examples=100, deadline=None)
@given(TOOLS, ARGUMENTS, PRINCIPALS, st.booleans(), EFFECTS)
def test_a_deny_listed_tool_is_always_denied(
    tool: str, args: dict[str, Any], principal: Principal, tainted: bool, effect: Effect
) -> None:
    denying = load_policy(f"policy: deny-all\ntools: {{deny: ['{tool}']}}\n")
    policies = PolicySet([*POLICIES, denying])
    verdict = policies.evaluate(
        _call(tool, args, principal, tainted), effect, dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    )
    assert verdict.decision == "deny"
