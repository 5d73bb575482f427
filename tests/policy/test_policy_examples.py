"""The shipped example policies load and decide the demo's calls as documented."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import keel.policy
from keel.core import Call, Effect, Principal, Verdict
from keel.errors import ConfigError
from keel.policy import PolicySet, load_policies, load_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
MONDAY_NOON_UTC = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
SUPPORT = Principal(agent_id="support-bot", tenant="acme")
BUYER = Principal(agent_id="Procurement-Agent-v2", tenant="acme")


@pytest.fixture(scope="module")
def policies() -> PolicySet:
    return PolicySet(
        [load_policy(EXAMPLES / "support.yaml"), load_policy(EXAMPLES / "procurement.yaml")]
    )


def _decide(
    policies: PolicySet,
    principal: Principal,
    tool: str,
    args: dict[str, Any],
    effect: Effect = "irreversible",
    *,
    tainted: bool = False,
    now: dt.datetime = MONDAY_NOON_UTC,
) -> Verdict:
    call = Call(kind="tool", target=tool, arguments=args, principal=principal, tainted=tainted)
    return policies.evaluate(call, effect, now)


def _refund(amount: Any, destination: str = "original_payment_method") -> dict[str, Any]:
    return {
        "order_id": "o-1",
        "amount": amount,
        "currency": "USD",
        "destination": destination,
        "reason": "damaged on arrival",
    }


def test_good_examples_load() -> None:
    support = load_policy(EXAMPLES / "support.yaml")
    assert support.name == "support-refunds"
    assert support.autonomy == "L3"
    procurement = load_policy(EXAMPLES / "procurement.yaml")
    assert procurement.caps.spending_limit_usd == Decimal(10000)
    assert procurement.caps.reflection_loop_cap == 25
    assert procurement.escalation == "human_review"


def test_broken_example_fails_with_a_line_number() -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(EXAMPLES / "broken.yaml")
    err = info.value
    assert isinstance(err.context["line"], int)
    assert err.context["key"] == "rules[0].decision"
    assert f"broken.yaml:{err.context['line']}: key 'rules[0].decision'" in err.message
    assert "did you mean 'allow'?" in err.message


def test_the_folder_loads_except_the_broken_file() -> None:
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_policies([EXAMPLES])


def test_support_reads_run(policies: PolicySet) -> None:
    assert _decide(policies, SUPPORT, "tickets.read", {"ticket_id": "t-1"}, "read").allowed
    assert _decide(policies, SUPPORT, "orders.lookup", {"order_id": "o-1"}, "read").allowed


@pytest.mark.parametrize(
    ("amount", "decision"),
    [
        (50, "allow"),
        (200, "allow"),
        ("200.00", "allow"),
        (750, "require_approval"),
        (1000, "require_approval"),
        (1000.01, "deny"),
        (0, "deny"),
    ],
)
def test_support_refund_limits(policies: PolicySet, amount: Any, decision: str) -> None:
    verdict = _decide(policies, SUPPORT, "billing.refund", _refund(amount))
    assert verdict.decision == decision
    if decision == "require_approval":
        assert verdict.reason == f"refund amount {amount} is over the approval threshold 200"
        assert verdict.approvers == ("support-lead",)
        assert verdict.escalate_to == "human_review"


def test_support_refund_destination(policies: PolicySet) -> None:
    assert _decide(policies, SUPPORT, "billing.refund", _refund(20, "acct_9f8e7d6c")).allowed
    verdict = _decide(policies, SUPPORT, "billing.refund", _refund(20, "DE89370400440532013000"))
    assert verdict.rule_id == "constraints[billing.refund].destination"


def test_support_tainted_refund_needs_review(policies: PolicySet) -> None:
    verdict = _decide(policies, SUPPORT, "billing.refund", _refund(60), tainted=True)
    assert (verdict.decision, verdict.rule_id) == ("require_approval", "tainted-refund-review")


def test_support_email_stays_internal(policies: PolicySet) -> None:
    mail = {"to": "ops@example.com", "subject": "refund", "body": "done"}
    assert _decide(policies, SUPPORT, "email.send", mail).allowed
    verdict = _decide(policies, SUPPORT, "email.send", {**mail, "to": "attacker@evil.test"})
    assert (verdict.decision, verdict.rule_id) == ("deny", "deny_external_email")


def test_support_cannot_buy(policies: PolicySet) -> None:
    args = {"vendor": "Vendor_A", "amount": 10, "item": "pens"}
    verdict = _decide(policies, SUPPORT, "procurement.purchase", args)
    assert verdict.rule_id == "default-deny"


def test_procurement_seed_policy(policies: PolicySet) -> None:
    buy = {"vendor": "Vendor_A", "amount": 4000, "item": "laptops"}
    assert _decide(policies, BUYER, "procurement.purchase", buy).allowed
    over = _decide(policies, BUYER, "procurement.purchase", {**buy, "amount": 6000})
    assert (over.decision, over.rule_id) == ("require_approval", "require_approval_if_over")
    assert over.reason == "purchase amount 6000 is over the approval threshold 5000"
    capped = _decide(policies, BUYER, "procurement.purchase", {**buy, "amount": 12000})
    assert capped.decision == "deny"
    vendor = _decide(policies, BUYER, "procurement.purchase", {**buy, "vendor": "Vendor_C"})
    assert vendor.decision == "deny"
    tainted = _decide(policies, BUYER, "procurement.purchase", buy, tainted=True)
    assert (tainted.decision, tainted.escalate_to) == ("escalate", "human_review")


def test_procurement_wire_transfer_two_person_rule(policies: PolicySet) -> None:
    wire = {"iban": "DE89370400440532013000", "amount": 2500}
    verdict = _decide(policies, BUYER, "procurement.wire_transfer", wire)
    assert verdict.decision == "require_approval"
    assert verdict.approvals_required == 2
    assert verdict.approvers == ("finance-approver",)
    saturday = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)
    weekend = _decide(policies, BUYER, "procurement.wire_transfer", wire, now=saturday)
    assert (weekend.decision, weekend.rule_id) == ("deny", "wires-in-banking-hours")


def test_public_surface_is_pinned() -> None:
    assert sorted(keel.policy.__all__) == [
        "AUTONOMY_LEVELS",
        "ArgumentCondition",
        "Autonomy",
        "CapSpec",
        "CompiledPolicy",
        "EmailPolicy",
        "Limits",
        "PolicyCaps",
        "PolicyDocument",
        "PolicySet",
        "RateLimitSpec",
        "Rule",
        "Scope",
        "Threshold",
        "TimeSlot",
        "TimeWindow",
        "ToolConstraint",
        "combined_hash",
        "compile_policy",
        "load_policies",
        "load_policy",
        "load_policy_file",
        "parse_policy",
    ]
    for name in keel.policy.__all__:
        assert hasattr(keel.policy, name), name


def test_verdict_field_order_is_what_the_engine_assumes() -> None:
    # the engine builds Verdicts positionally on its hot path
    assert [f.name for f in dataclasses.fields(Verdict)] == [
        "decision",
        "rule_id",
        "reason",
        "policy_hash",
        "approvals_required",
        "approvers",
        "escalate_to",
        "shadow",
    ]
