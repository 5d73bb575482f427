"""Evaluation semantics: default deny, precedence, constraints, approvals, windows, autonomy."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from keel.canonical import digest
from keel.core import Call, Effect, Principal, Verdict
from keel.errors import UsageError
from keel.policy import CompiledPolicy, PolicySet, combined_hash, load_policy

# Monday 2026-01-05, 10:00 UTC.
NOW = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)
BOT = Principal(agent_id="support-bot", tenant="acme")


def policy(text: str, name: str = "test.yaml") -> CompiledPolicy:
    return load_policy(textwrap.dedent(text), source_name=name)


def call(
    tool: str,
    args: Mapping[str, Any] | None = None,
    *,
    principal: Principal = BOT,
    workflow: str | None = None,
    tainted: bool = False,
    kind: str = "tool",
) -> Call:
    return Call(
        kind=kind,  # type: ignore[arg-type]
        target=tool,
        arguments=dict(args or {}),
        principal=principal,
        workflow=workflow,
        tainted=tainted,
    )


def decide(
    p: CompiledPolicy | PolicySet,
    tool: str,
    args: Mapping[str, Any] | None = None,
    effect: Effect = "irreversible",
    now: dt.datetime = NOW,
    **kw: Any,
) -> Verdict:
    return p.evaluate(call(tool, args, **kw), effect, now)


# -- allowlist, deny list, default deny -------------------------------------------------------


def test_default_deny_names_the_tool() -> None:
    p = policy("policy: p\ntools: {allow: [orders.lookup]}\n")
    verdict = decide(p, "billing.refund")
    assert verdict.decision == "deny"
    assert verdict.rule_id == "default-deny"
    assert "billing.refund" in verdict.reason
    assert verdict.policy_hash == p.hash


def test_allowlist_globs_and_exact_names() -> None:
    p = policy("policy: p\ntools: {allow: ['tickets.*', orders.lookup]}\n")
    assert decide(p, "tickets.read").allowed
    assert decide(p, "tickets.comments.add").allowed  # * spans dots
    assert decide(p, "orders.lookup").allowed
    for name in ("tickets", "xtickets.read", "Tickets.read", "orders.lookup2", "orders.Lookup"):
        assert decide(p, name).rule_id == "default-deny", name


def test_question_mark_and_regex_characters_in_patterns() -> None:
    p = policy("policy: p\ntools: {allow: ['v?.get', 'a+b.c']}\n")
    assert decide(p, "v1.get").allowed
    assert not decide(p, "v10.get").allowed
    assert decide(p, "a+b.c").allowed
    assert not decide(p, "aab.c").allowed


def test_deny_list_beats_allow() -> None:
    p = policy("policy: p\ntools: {allow: ['billing.*'], deny: ['billing.delete_*']}\n")
    verdict = decide(p, "billing.delete_customer")
    assert (verdict.decision, verdict.rule_id) == ("deny", "tools.deny")
    assert decide(p, "billing.refund").allowed


def test_seed_allowlisted_tools_and_approval_required() -> None:
    p = policy(
        """\
        policy: seed
        allowlisted_tools: [salesforce.read, zendesk.update_tags, stripe.refund.create_under_200]
        approval_required: [stripe.refund.create_over_200, github.repo.delete]
        """
    )
    assert decide(p, "salesforce.read").allowed
    # approval_required does not allowlist: the tool must be allowlisted too
    assert decide(p, "github.repo.delete").rule_id == "default-deny"
    q = policy(
        "policy: q\nallowlisted_tools: [github.repo.delete]\n"
        "approval_required: [github.repo.delete]\napprovers: [sre-lead]\n"
    )
    verdict = decide(q, "github.repo.delete")
    assert verdict.decision == "require_approval"
    assert verdict.rule_id == "approval_required"
    assert (verdict.approvals_required, verdict.approvers) == (1, ("sre-lead",))


def test_no_applicable_policy_denies_with_the_set_hash() -> None:
    p = policy("policy: p\nscope: {tenant: other}\ntools: {allow: ['*']}\n")
    policies = PolicySet([p])
    verdict = decide(policies, "orders.lookup")
    assert verdict.rule_id == "default-deny"
    assert "no policy applies" in verdict.reason
    assert verdict.policy_hash == policies.hash == digest([p.hash])


# -- argument constraints ----------------------------------------------------------------------

CONSTRAINED = """\
policy: c
tools: {allow: [billing.refund, email.send, t.x]}
constraints:
  billing.refund:
    amount: {min: 0.1, max: 1000}
    currency: {in: [USD, EUR]}
    destination: {pattern: "original_payment_method|acct_[a-z0-9]{8}"}
    reason: {max_length: 10, min_length: 2, required: false}
  email.send:
    to: {email_domains: [example.com, "*.example.org"]}
  t.x:
    code: {not_in: [200, "blocked"]}
    level: {gt: 1, lt: 5}
    flag: {in: [true]}
"""

GOOD_REFUND = {"amount": 100, "currency": "USD", "destination": "original_payment_method"}


@pytest.mark.parametrize(
    ("changes", "allowed", "fragment"),
    [
        ({}, True, ""),
        ({"amount": 1000}, True, ""),
        ({"amount": 0.1}, True, ""),  # float read through its repr: exactly 0.1
        ({"amount": Decimal("999.99")}, True, ""),
        ({"amount": "250.50"}, True, ""),
        ({"amount": 1000.01}, False, "refund amount 1000.01 is over the maximum 1000"),
        ({"amount": 0.09}, False, "is under the minimum 0.1"),
        ({"amount": True}, False, "refund amount true is not a number"),
        ({"amount": "NaN"}, False, "is not a number"),
        ({"amount": float("inf")}, False, "is not a number"),
        ({"amount": None}, False, "is not a number"),
        ({"currency": "GBP"}, False, "refund currency 'GBP' is not one of EUR, USD"),
        ({"currency": "usd"}, False, "is not one of"),
        ({"destination": "acct_12345678"}, True, ""),
        ({"destination": "acct_12345678x"}, False, "does not match the pattern"),
        ({"destination": "xoriginal_payment_method"}, False, "does not match"),
        ({"destination": 12345678}, False, "is not a string"),
        ({"reason": "ok"}, True, ""),
        ({"reason": "far too long"}, False, "the maximum length is 10"),
        ({"reason": "x"}, False, "the minimum length is 2"),
    ],
)
def test_constraints(changes: dict[str, Any], allowed: bool, fragment: str) -> None:
    p = policy(CONSTRAINED)
    verdict = decide(p, "billing.refund", {**GOOD_REFUND, **changes})
    assert verdict.allowed is allowed, verdict
    if not allowed:
        assert verdict.rule_id.startswith("constraints[billing.refund].")
        assert fragment in verdict.reason


def test_constraint_on_a_missing_argument_denies_unless_optional() -> None:
    p = policy(CONSTRAINED)
    verdict = decide(p, "billing.refund", {"amount": 5, "currency": "USD"})
    assert verdict.rule_id == "constraints[billing.refund].destination"
    assert verdict.reason == "refund destination is missing"
    assert decide(p, "billing.refund", GOOD_REFUND).allowed  # reason is optional


@pytest.mark.parametrize(
    ("to", "allowed"),
    [
        ("a@example.com", True),
        ("A@EXAMPLE.COM", True),
        ("Ann <a@example.com>, b@sales.example.org", True),
        (["a@example.com", "b@example.com"], True),
        ("a@evil.com", False),
        ("a@example.org", False),  # only subdomains of example.org
        ("a@example.com.evil.com", False),
        ("a@evil.com@example.com", False),  # ambiguous: refused
        ('"Doe, Jo" <j@example.com>', False),  # quoted display names are refused (fail closed)
        ("Ann <a@example.com> b@evil.com", False),
        ("a@example.com <b@evil.com>", False),
        ("nobody", False),
        (42, False),
        ([{"email": "a@example.com"}], False),
    ],
)
def test_email_domains_operator(to: Any, allowed: bool) -> None:
    assert decide(policy(CONSTRAINED), "email.send", {"to": to}).allowed is allowed


def test_typed_membership() -> None:
    p = policy(CONSTRAINED)
    ok = {"code": 201, "level": 2, "flag": True}
    assert decide(p, "t.x", ok).allowed
    assert not decide(p, "t.x", {**ok, "code": 200}).allowed
    assert not decide(p, "t.x", {**ok, "code": 200.0}).allowed
    assert decide(p, "t.x", {**ok, "code": "200"}).allowed  # "200" is not 200
    assert not decide(p, "t.x", {**ok, "code": "blocked"}).allowed
    assert not decide(p, "t.x", {**ok, "flag": 1}).allowed  # 1 is not true
    assert not decide(p, "t.x", {**ok, "level": 1}).allowed  # gt is strict
    assert not decide(p, "t.x", {**ok, "level": 5}).allowed  # lt is strict
    assert not decide(p, "t.x", {**ok, "code": ["x"]}).allowed  # not a plain value


def test_allowed_vendors_checks_any_tool_with_a_vendor() -> None:
    p = policy(
        "policy: v\ntools: {allow: ['procurement.*']}\nallowed_vendors: [Vendor_A, Vendor_B]\n"
    )
    assert decide(p, "procurement.purchase", {"vendor": "Vendor_A"}).allowed
    verdict = decide(p, "procurement.purchase", {"vendor": "Vendor_C"})
    assert (verdict.decision, verdict.rule_id) == ("deny", "allowed_vendors")
    assert "'Vendor_C' is not one of Vendor_A, Vendor_B" in verdict.reason
    assert decide(p, "procurement.wire_transfer", {"iban": "x"}).allowed  # no vendor argument


# -- thresholds, approvals, two-person rule ----------------------------------------------------


def test_threshold_per_tool() -> None:
    p = policy(
        "policy: t\ntools: {allow: [billing.refund]}\napprovers: [lead]\n"
        "escalation: human_review\nrequire_approval_if_over:\n  billing.refund: 200\n"
    )
    assert decide(p, "billing.refund", {"amount": 200}).allowed
    assert decide(p, "billing.refund", {"amount": "200.00"}).allowed
    assert decide(p, "billing.refund", {}).allowed  # nothing to compare
    verdict = decide(p, "billing.refund", {"amount": 750})
    assert verdict.decision == "require_approval"
    assert verdict.rule_id == "require_approval_if_over[billing.refund]"
    assert verdict.reason == "refund amount 750 is over the approval threshold 200"
    assert verdict.approvals_required == 1
    assert verdict.approvers == ("lead",)
    assert verdict.escalate_to == "human_review"
    broken = decide(p, "billing.refund", {"amount": "lots"})
    assert broken.decision == "deny"
    assert "is not a number" in broken.reason


def test_threshold_forms() -> None:
    flat = policy("policy: f\ntools: {allow: ['*']}\nrequire_approval_if_over: 5000\n")
    assert decide(flat, "procurement.purchase", {"amount": 5001}).rule_id == (
        "require_approval_if_over"
    )
    assert decide(flat, "other.tool", {"amount": Decimal("5000.01")}).decision == (
        "require_approval"
    )
    assert decide(flat, "other.tool", {"total": 99999}).allowed
    by_arg = policy(
        "policy: a\ntools: {allow: ['*']}\nrequire_approval_if_over:\n"
        "  shop.order: {quantity: 10, total: 100}\n"
    )
    verdict = decide(by_arg, "shop.order", {"quantity": 11, "total": 5})
    assert verdict.rule_id == "require_approval_if_over[shop.order].quantity"
    assert verdict.reason == "order quantity 11 is over the approval threshold 10"


def test_two_person_rule_needs_two_approvers() -> None:
    p = policy(
        """\
        policy: w
        tools: {allow: ['procurement.*']}
        approvers: [finance]
        require_approval_if_over: 5000
        two_person_rule: [procurement.wire_transfer]
        """
    )
    verdict = decide(p, "procurement.wire_transfer", {"amount": 10})
    assert verdict.decision == "require_approval"
    assert verdict.rule_id == "two_person_rule"
    assert verdict.approvals_required == 2
    assert verdict.approvers == ("finance",)
    # the stronger approval wins over a one-person threshold
    both = decide(p, "procurement.wire_transfer", {"amount": 9000})
    assert (both.rule_id, both.approvals_required) == ("two_person_rule", 2)
    assert decide(p, "procurement.purchase", {"amount": 9000}).approvals_required == 1


# -- external e-mail ---------------------------------------------------------------------------


def test_deny_external_email_defaults() -> None:
    p = policy(
        "policy: e\ntools: {allow: ['*']}\ndeny_external_email: true\n"
        "internal_domains: [example.com]\n"
    )
    assert decide(p, "email.send", {"to": "a@example.com", "cc": ["b@example.com"]}).allowed
    verdict = decide(p, "email.send", {"to": "a@example.com", "bcc": "spy@evil.com"})
    assert (verdict.decision, verdict.rule_id) == ("deny", "deny_external_email")
    assert "'evil.com'" in verdict.reason
    assert decide(p, "chat.post", {"to": "#general"}).allowed  # not an address
    assert decide(p, "crm.note", {"to": "x@evil.com"}).decision == "deny"  # any tool by default
    assert decide(p, "email.send", {"to": {"addr": "x"}}).decision == "deny"  # fail closed
    assert decide(p, "email.send", {"subject": "x@evil.com"}).allowed  # not a recipient field


def test_deny_external_email_configured() -> None:
    p = policy(
        """\
        policy: e
        tools: {allow: ['*']}
        deny_external_email: true
        internal_domains: ["*.corp.example"]
        email_tools: ["mail.*"]
        email_arguments: [recipients]
        """
    )
    assert decide(p, "mail.send", {"recipients": ["a@eu.corp.example"]}).allowed
    assert not decide(p, "mail.send", {"recipients": ["a@corp.example"]}).allowed
    assert decide(p, "mail.send", {"to": "a@evil.com"}).allowed  # argument not checked
    assert decide(p, "crm.note", {"recipients": "a@evil.com"}).allowed  # tool not checked


def test_deny_external_email_without_domains_denies_every_address() -> None:
    p = policy("policy: e\ntools: {allow: ['*']}\ndeny_external_email: true\n")
    assert not decide(p, "email.send", {"to": "a@example.com"}).allowed


# -- custom rules -------------------------------------------------------------------------------

RULES = """\
policy: r
tools: {allow: ['billing.*']}
escalation: human_review
approvers: [lead]
rules:
  - id: tainted-big-refund
    tool: billing.refund
    when:
      tainted: true
      arguments: {amount: {gt: 50}}
    decision: escalate
    reason: big refund after untrusted input
  - id: trainees-need-approval
    tools: ["billing.*"]
    when: {roles: [trainee], not_roles: [supervisor]}
    decision: require_approval
    approvers: [mentor]
    approvals_required: 2
  - id: no-irreversible-closures
    tool: billing.close_account
    when: {effect: irreversible}
    decision: deny
    reason: accounts are closed by people
  - id: fraud-desk
    tool: billing.chargeback
    decision: escalate
    escalate_to: fraud_desk
"""


def test_rule_on_tainted_and_arguments() -> None:
    p = policy(RULES)
    assert decide(p, "billing.refund", {"amount": 60}).allowed
    assert decide(p, "billing.refund", {"amount": 50}, tainted=True).allowed
    assert decide(p, "billing.refund", {}, tainted=True).allowed  # missing: condition false
    verdict = decide(p, "billing.refund", {"amount": 60}, tainted=True)
    assert (verdict.decision, verdict.rule_id) == ("escalate", "tainted-big-refund")
    assert verdict.reason == "big refund after untrusted input"
    assert verdict.escalate_to == "human_review"
    assert verdict.approvers == ("lead",)
    # a value of the wrong type cannot be decided: a restrictive rule fires (fail closed)
    assert decide(p, "billing.refund", {"amount": "?"}, tainted=True).decision == "escalate"


def test_rule_on_roles() -> None:
    p = policy(RULES)
    trainee = Principal(agent_id="a", tenant="t", roles=frozenset({"trainee"}))
    supervised = Principal(agent_id="a", tenant="t", roles=frozenset({"trainee", "supervisor"}))
    verdict = decide(p, "billing.refund", {"amount": 1}, principal=trainee)
    assert verdict.rule_id == "trainees-need-approval"
    assert (verdict.approvals_required, verdict.approvers) == (2, ("mentor",))
    assert "principal has role trainee" in verdict.reason  # generated reason
    assert decide(p, "billing.refund", {"amount": 1}, principal=supervised).allowed


def test_rule_on_effect_and_escalate_to() -> None:
    p = policy(RULES)
    assert decide(p, "billing.close_account", effect="reversible").allowed
    assert decide(p, "billing.close_account", effect="irreversible").rule_id == (
        "no-irreversible-closures"
    )
    verdict = decide(p, "billing.chargeback")
    assert (verdict.decision, verdict.escalate_to) == ("escalate", "fraud_desk")


def test_allow_rule_grants_a_tool_conditionally() -> None:
    p = policy(
        """\
        policy: g
        tools: {deny: [admin.drop_table]}
        rules:
          - id: supervisors-export
            tool: reports.export
            when: {roles: [supervisor]}
            decision: allow
          - id: never-drop
            tool: "admin.*"
            when: {roles: [supervisor]}
            decision: allow
          - id: big-exports
            tool: reports.export
            when: {arguments: {rows: {gt: 1000}}}
            decision: require_approval
        """
    )
    boss = Principal(agent_id="a", tenant="t", roles=frozenset({"supervisor"}))
    verdict = decide(p, "reports.export", {"rows": 10}, principal=boss)
    assert (verdict.decision, verdict.rule_id) == ("allow", "supervisors-export")
    assert decide(p, "reports.export", {"rows": 5000}, principal=boss).decision == (
        "require_approval"
    )
    assert decide(p, "reports.export", {"rows": 10}).rule_id == "default-deny"
    # an allow rule never lifts a deny
    assert decide(p, "admin.drop_table", principal=boss).rule_id == "tools.deny"
    # an allow rule with an undecidable condition does not grant (fail closed)
    q = policy(
        "policy: q\nrules:\n  - id: small\n    tool: a.b\n"
        "    when: {arguments: {n: {max: 5}}}\n    decision: allow\n"
    )
    assert decide(q, "a.b", {"n": 3}).allowed
    assert not decide(q, "a.b", {"n": "three"}).allowed
    assert not decide(q, "a.b", {}).allowed


# -- time windows --------------------------------------------------------------------------------

WINDOWS = """\
policy: w
tools: {allow: ['*']}
time_windows:
  - id: business-hours
    tools: [billing.refund]
    timezone: America/New_York
    during:
      - {days: mon-fri, hours: "09:00-17:00"}
      - {days: sat, hours: "10:00-14:00"}
    outside: require_approval
  - tool: night.job
    timezone: "+02:00"
    during: [{hours: "22:00-06:00"}]
"""


@pytest.mark.parametrize(
    ("when", "decision"),
    [
        (dt.datetime(2026, 1, 5, 14, 0, tzinfo=dt.UTC), "allow"),  # Mon 09:00 New York
        (dt.datetime(2026, 1, 5, 13, 59, tzinfo=dt.UTC), "require_approval"),  # Mon 08:59
        (dt.datetime(2026, 1, 5, 22, 0, tzinfo=dt.UTC), "require_approval"),  # Mon 17:00
        (dt.datetime(2026, 1, 10, 16, 0, tzinfo=dt.UTC), "allow"),  # Sat 11:00
        (dt.datetime(2026, 1, 10, 20, 0, tzinfo=dt.UTC), "require_approval"),  # Sat 15:00
        (dt.datetime(2026, 1, 11, 16, 0, tzinfo=dt.UTC), "require_approval"),  # Sun 11:00
        (dt.datetime(2026, 7, 6, 13, 0, tzinfo=dt.UTC), "allow"),  # Mon 09:00 EDT (summer)
        (dt.datetime(2026, 7, 6, 12, 59, tzinfo=dt.UTC), "require_approval"),
    ],
)
def test_time_window_with_iana_zone(when: dt.datetime, decision: str) -> None:
    verdict = decide(policy(WINDOWS), "billing.refund", now=when)
    assert verdict.decision == decision
    if decision != "allow":
        assert verdict.rule_id == "business-hours"
        assert "America/New_York" in verdict.reason


def test_time_window_wrapping_midnight_with_offset() -> None:
    p = policy(WINDOWS)
    assert decide(p, "night.job", now=dt.datetime(2026, 1, 5, 21, 0, tzinfo=dt.UTC)).allowed
    assert decide(p, "night.job", now=dt.datetime(2026, 1, 5, 3, 59, tzinfo=dt.UTC)).allowed
    late = decide(p, "night.job", now=dt.datetime(2026, 1, 5, 4, 0, tzinfo=dt.UTC))
    assert (late.decision, late.rule_id) == ("deny", "time_windows[1]")
    # the same moment expressed in another zone decides the same way
    paris = dt.datetime(2026, 1, 5, 22, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert decide(p, "night.job", now=paris).allowed
    assert decide(p, "other.tool", now=dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)).allowed


def test_naive_now_and_bad_effect_are_usage_errors() -> None:
    p = policy(WINDOWS)
    with pytest.raises(UsageError, match="timezone-aware"):
        decide(p, "billing.refund", now=dt.datetime(2026, 1, 5, 10, 0))
    with pytest.raises(UsageError, match="effect"):
        decide(p, "billing.refund", effect="dangerous")  # type: ignore[arg-type]


# -- autonomy and shadow -------------------------------------------------------------------------


def _level(level: str, extra: str = "") -> CompiledPolicy:
    return policy(f"policy: l\nautonomy: {level}\ntools: {{allow: ['*']}}\n{extra}")


def test_autonomy_l0_shadows_everything_but_reads() -> None:
    p = _level("L0")
    read = decide(p, "orders.lookup", effect="read")
    assert read.allowed and not read.shadow
    for effect in ("reversible", "irreversible"):
        verdict = decide(p, "billing.refund", effect=effect)
        assert verdict.shadow, effect
        assert verdict.decision == "allow"  # recorded as decided; the gateway executes nothing
        assert "autonomy L0" in verdict.reason


def test_autonomy_l1_every_action_needs_approval() -> None:
    p = _level("L1", "approvers: [lead]\n")
    assert decide(p, "orders.lookup", effect="read").allowed
    for effect in ("reversible", "irreversible"):
        verdict = decide(p, "tickets.tag", effect=effect)
        assert (verdict.decision, verdict.rule_id) == ("require_approval", "autonomy.L1")
        assert verdict.approvers == ("lead",)


def test_autonomy_l2_irreversible_needs_approval() -> None:
    p = _level("L2")
    assert decide(p, "tickets.tag", effect="reversible").allowed
    verdict = decide(p, "billing.refund", effect="irreversible")
    assert (verdict.decision, verdict.rule_id) == ("require_approval", "autonomy.L2")


@pytest.mark.parametrize("level", ["L3", "L4"])
def test_autonomy_l3_l4_run_within_policy(level: str) -> None:
    p = _level(level)
    for effect in ("read", "reversible", "irreversible"):
        assert decide(p, "billing.refund", effect=effect).allowed


def test_autonomy_does_not_lift_a_deny() -> None:
    p = _level("L1", "constraints:\n  billing.refund:\n    amount: {max: 10}\n")
    assert decide(p, "billing.refund", {"amount": 11}).decision == "deny"


def test_shadow_mode_records_everything_executes_nothing() -> None:
    p = _level("L3", "shadow: true\nmodels: {allow: ['*']}\n")
    for effect in ("read", "reversible", "irreversible"):
        verdict = decide(p, "billing.refund", effect=effect)
        assert verdict.shadow and verdict.allowed
        assert "shadow mode" in verdict.reason
    assert not decide(p, "gpt-4o", kind="model").shadow  # model calls are not actions
    assert decide(p, "billing.refund").to_record()["shadow"] is True


# -- models ---------------------------------------------------------------------------------------


def test_model_calls_use_models_lists() -> None:
    p = policy("policy: m\ntools: {allow: ['*']}\nmodels: {allow: ['gpt-4o*'], deny: [gpt-4o-x]}\n")
    assert decide(p, "gpt-4o-mini", kind="model").rule_id == "models.allow"
    assert decide(p, "gpt-4o-x", kind="model").rule_id == "models.deny"
    verdict = decide(p, "claude", kind="model")
    assert verdict.rule_id == "default-deny"
    assert "model 'claude'" in verdict.reason


# -- scope and several documents -----------------------------------------------------------------


def test_scope_selects_by_tenant_agent_and_workflow() -> None:
    p = policy(
        "policy: s\nscope: {tenant: acme, agents: ['support-*'], workflows: [refunds]}\n"
        "tools: {allow: ['*']}\n"
    )
    assert decide(p, "x.y", workflow="refunds").allowed
    assert not decide(p, "x.y").allowed  # a workflow-scoped policy needs a workflow
    assert not decide(p, "x.y", workflow="billing").allowed
    other_agent = Principal(agent_id="sales-bot", tenant="acme")
    assert not decide(p, "x.y", workflow="refunds", principal=other_agent).allowed
    other_tenant = Principal(agent_id="support-bot", tenant="globex")
    assert not decide(p, "x.y", workflow="refunds", principal=other_tenant).allowed
    policies = PolicySet([p])
    assert policies.applicable(BOT, "refunds") == (p,)
    assert policies.applicable(BOT, None) == ()


def test_documents_combine_allow_union_and_strongest_decision() -> None:
    base = policy(
        """\
        policy: tenant-base
        scope: {tenant: acme}
        tools: {allow: ['tickets.*'], deny: [billing.delete]}
        constraints:
          billing.refund:
            amount: {max: 500}
        """,
        "base.yaml",
    )
    agent = policy(
        """\
        policy: refund-agent
        scope: {agents: [support-bot]}
        tools: {allow: ['billing.*']}
        escalation: fraud
        require_approval_if_over: {billing.refund: 100}
        rules:
          - {id: tainted, tool: billing.refund, when: {tainted: true}, decision: escalate}
        """,
        "agent.yaml",
    )
    policies = PolicySet([base, agent])
    assert decide(policies, "tickets.read").allowed  # from base
    assert decide(policies, "billing.refund", {"amount": 50}).allowed  # from agent
    assert decide(policies, "billing.delete").rule_id == "tools.deny"  # base's deny wins
    assert decide(policies, "billing.refund", {"amount": 600}).rule_id == (
        "constraints[billing.refund].amount"
    )
    assert decide(policies, "billing.refund", {"amount": 200}).decision == "require_approval"
    escalated = decide(policies, "billing.refund", {"amount": 200}, tainted=True)
    assert (escalated.decision, escalated.escalate_to) == ("escalate", "fraud")
    denied = decide(policies, "billing.refund", {"amount": 600}, tainted=True)
    assert denied.decision == "deny"  # deny > escalate > require_approval
    verdict = decide(policies, "tickets.read")
    assert verdict.policy_hash == combined_hash([base.hash, agent.hash])
    assert verdict.policy_hash == digest([base.hash, agent.hash])
    # only the base applies to another agent of the tenant
    sales = Principal(agent_id="sales-bot", tenant="acme")
    assert decide(policies, "billing.refund", {"amount": 1}, principal=sales).rule_id == (
        "default-deny"
    )
    assert decide(policies, "tickets.read", principal=sales).policy_hash == base.hash


def test_lowest_autonomy_and_any_shadow_apply_across_documents() -> None:
    strict = policy("policy: strict\nautonomy: L1\ntools: {allow: ['*']}\n")
    loose = policy("policy: loose\nautonomy: L4\n")
    assert decide(PolicySet([loose, strict]), "a.b", effect="reversible").rule_id == "autonomy.L1"
    shadow = policy("policy: shadow\nshadow: true\n")
    assert decide(PolicySet([loose, strict, shadow]), "a.b", effect="read").shadow


def test_caps_are_exposed_not_enforced() -> None:
    p = policy(
        """\
        policy: caps
        tools: {allow: ['*']}
        spending_limit_usd: 10000.50
        max_tokens_per_task: 12000
        max_tool_calls_per_task: 25
        reflection_loop_cap: 25
        """
    )
    assert p.caps.spending_limit_usd == Decimal("10000.50")
    assert (p.caps.max_tokens_per_task, p.caps.max_tool_calls_per_task) == (12000, 25)
    assert p.caps.reflection_loop_cap == 25
    assert decide(p, "shop.buy", {"amount": 999999}).allowed
    q = policy("policy: q\nspending_limit_usd: 500\nmax_tokens_per_task: 20000\n")
    caps = PolicySet([p, q]).caps_for(BOT)
    assert caps.spending_limit_usd == Decimal(500)
    assert caps.max_tokens_per_task == 12000
    assert caps.reflection_loop_cap == 25


# -- hashes and explain ---------------------------------------------------------------------------


def test_hash_is_the_digest_of_the_normalized_document() -> None:
    text = "policy: h\nagent: bot\nallowlisted_tools: [b.b, a.a]\n"
    p = policy(text)
    assert p.hash == digest(p.to_dict())
    assert p.hash.startswith("sha256:") and len(p.hash) == 7 + 64
    same = policy("policy: h\nscope:\n  agents: [bot]\ntools:\n  allow: [a.a, b.b]\n")
    assert same.hash == p.hash  # spelling does not matter, content does
    assert policy(text + "version: 2\n").hash != p.hash
    assert policy("policy: h\nagent: bot\nallowlisted_tools: [a.a]\n").hash != p.hash


def test_in_values_hash_by_type() -> None:
    a = policy("policy: h\nconstraints: {t.x: {c: {in: [200]}}}\n")
    b = policy("policy: h\nconstraints: {t.x: {c: {in: ['200']}}}\n")
    assert a.hash != b.hash


def test_explain_lists_every_match_and_agrees_with_evaluate() -> None:
    p = policy(RULES + "approval_required: [billing.refund]\n")
    c = call("billing.refund", {"amount": 60}, tainted=True)
    explained = p.explain(c, "irreversible", NOW)
    json.dumps(explained)  # JSON-able
    verdict = p.evaluate(c, "irreversible", NOW)
    assert explained["verdict"] == verdict.decision == "escalate"
    assert explained["rule_id"] == verdict.rule_id
    assert explained["reason"] == verdict.reason
    assert explained["policy_hash"] == verdict.policy_hash == p.hash
    assert [(m["rule_id"], m["decision"]) for m in explained["matched"]] == [
        ("tools.allow", "allow"),
        ("approval_required", "require_approval"),
        ("tainted-big-refund", "escalate"),
    ]
    assert explained["policies"] == [
        {"name": "r", "version": "1", "hash": p.hash, "source": "test.yaml"}
    ]
    denied = p.explain(call("shell.exec"), "irreversible", NOW)
    assert denied["verdict"] == "deny"
    assert denied["matched"][0]["rule_id"] == "default-deny"
    assert denied["matched"][0]["policy"] is None


def test_evaluation_has_no_side_effects_on_the_call() -> None:
    p = policy(CONSTRAINED)
    args = {**GOOD_REFUND, "amount": 5000}
    c = call("billing.refund", args)
    first = p.evaluate(c, "irreversible", NOW)
    assert p.evaluate(c, "irreversible", NOW) == first
    assert c.arguments == args
