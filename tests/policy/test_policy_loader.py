"""Loading policy files: every mistake names the file, the line and the dotted key."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from keel.errors import ConfigError
from keel.policy import PolicySet, load_policies, load_policy, load_policy_file, parse_policy


def _err(text: str, source: str = "refunds.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_policy(textwrap.dedent(text), source_name=source)
    return info.value


# (yaml, line, key, a fragment of the message)
MALFORMED = [
    pytest.param(
        """\
        policy: refunds
        tools:
          allow: [billing.refund]
        rules:
          - id: a
            tool: billing.refund
            decision: deny
          - id: b
            tool: billing.refund
            decision: allow
          - id: c
            tool: billing.refund
            decision: alow
        """,
        13,
        "rules[2].decision",
        "'alow' is not one of allow, deny, require_approval, escalate (did you mean 'allow'?)",
        id="bad-decision",
    ),
    pytest.param(
        "policy: x\nallowlisted_tool: [a.b]\n",
        2,
        "allowlisted_tool",
        "unknown key 'allowlisted_tool' (did you mean 'allowlisted_tools'?)",
        id="unknown-top-key",
    ),
    pytest.param(
        "policy: x\ntools:\n  allow: [a.b]\ntools:\n  deny: [c.d]\n",
        4,
        "tools",
        "duplicate key: 'tools' is already given at line 2",
        id="duplicate-key",
    ),
    pytest.param(
        "policy: x\nconstraints:\n  billing.refund:\n    amount: {max: lots}\n",
        4,
        "constraints[billing.refund].amount.max",
        "expected a number, got the string 'lots'",
        id="bad-number",
    ),
    pytest.param(
        "policy: x\nconstraints:\n  billing.refund:\n    amount: {maximum: 5}\n",
        4,
        "constraints[billing.refund].amount.maximum",
        "did you mean 'max'?",
        id="unknown-operator",
    ),
    pytest.param(
        "policy: x\nconstraints:\n  t.x:\n    dest: {pattern: 'acct_[0-9'}\n",
        4,
        "constraints[t.x].dest.pattern",
        "invalid regular expression",
        id="bad-regex",
    ),
    pytest.param(
        "policy: x\nconstraints:\n  t.x:\n    amount:\n      min: 10\n      max: 5\n",
        6,
        "constraints[t.x].amount.max",
        "no value can satisfy min 10 and max 5",
        id="min-over-max",
    ),
    pytest.param(
        "policy: x\nautonomy: L5\n",
        2,
        "autonomy",
        "'L5' is not one of L0, L1, L2, L3, L4",
        id="bad-autonomy",
    ),
    pytest.param(
        "policy: x\nshadow: yes\n",
        2,
        "shadow",
        "expected true or false, got the string 'yes'",
        id="yes-is-not-a-boolean",
    ),
    pytest.param(
        """\
        policy: x
        time_windows:
          - tools: [a.b]
            timezone: Mars/Olympus_Mons
            during: [{hours: "09:00-17:00"}]
        """,
        4,
        "time_windows[0].timezone",
        "is not a time zone",
        id="bad-timezone",
    ),
    pytest.param(
        """\
        policy: x
        time_windows:
          - tools: [a.b]
            during:
              - {days: mon-fri, hours: 9am-5pm}
        """,
        5,
        "time_windows[0].during[0].hours",
        "is not an hour range such as 09:00-17:00",
        id="bad-hours",
    ),
    pytest.param(
        """\
        policy: x
        time_windows:
          - tools: [a.b]
            during:
              - days: [mon, funday]
        """,
        5,
        "time_windows[0].during[0].days",
        "'funday' is not a day (did you mean 'sunday'?)",
        id="bad-day",
    ),
    pytest.param(
        """\
        policy: x
        rules:
          - id: r
            tool: a.b
            decision: deny
            approvals_required: 2
        """,
        6,
        "rules[0].approvals_required",
        "only meaningful when decision is require_approval or escalate",
        id="approvals-on-deny",
    ),
    pytest.param(
        """\
        policy: x
        rules:
          - {id: r, tool: a.b, decision: deny}
          - {id: r, tool: a.c, decision: deny}
        """,
        4,
        "rules[1].id",
        "duplicate rule id 'r' (first at line 3)",
        id="duplicate-rule-id",
    ),
    pytest.param(
        "policy: x\nrules:\n  - {id: default-deny, tool: a.b, decision: allow}\n",
        3,
        "rules[0].id",
        "built-in rule id",
        id="reserved-rule-id",
    ),
    pytest.param(
        "policy: x\nrules:\n  - {id: r, decision: deny}\n",
        3,
        "rules[0].tools",
        "missing required key 'tools' (or 'tool')",
        id="rule-without-tool",
    ),
    pytest.param(
        "policy: x\ninternal_domains: [example.com]\n",
        2,
        "internal_domains",
        "only meaningful with 'deny_external_email: true'",
        id="domains-without-deny-external",
    ),
    pytest.param(
        "policy: x\ntools:\n  allow: ['billing refund']\n",
        3,
        "tools.allow[0]",
        "is not a tool name or glob pattern",
        id="tool-with-space",
    ),
    pytest.param(
        "policy: x\ntools: {allow: [a.b]}\nallowlisted_tools: [c.d]\n",
        3,
        "allowlisted_tools",
        "give 'allowlisted_tools' or 'tools.allow', not both",
        id="both-allow-spellings",
    ),
    pytest.param(
        "policy: x\nspending_limit_usd: !!python/object:os.system ls\n",
        2,
        "spending_limit_usd",
        "unsupported YAML tag",
        id="python-tag",
    ),
    pytest.param(
        "tools:\n  allow: [a.b]\n",
        1,
        "policy",
        "missing required key 'policy'",
        id="missing-name",
    ),
    pytest.param(
        "policy:\n  agent: a\nversion: 2\n",
        3,
        "version",
        "must be the only top-level key",
        id="nested-form-with-extra-key",
    ),
    pytest.param(
        "policy: x\nconstraints:\n  t.x:\n    vendor: {in: []}\n",
        4,
        "constraints[t.x].vendor.in",
        "expected at least one value",
        id="empty-in",
    ),
    pytest.param(
        "policy: x\nscope:\n  agent: bot\n",
        3,
        "scope.agent",
        "did you mean 'agents'?",
        id="scope-typo",
    ),
    pytest.param(
        "policy: x\nmax_tool_calls_per_task: 2.5\n",
        2,
        "max_tool_calls_per_task",
        "expected a whole number",
        id="fractional-cap",
    ),
    pytest.param(
        "policy: x\nrules:\n  - id: r\n    tool: a.b\n    decision: deny\n    when: {tainted: 1}\n",
        6,
        "rules[0].when.tainted",
        "expected true or false",
        id="tainted-not-bool",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), MALFORMED)
def test_malformed_policy_names_file_line_and_key(
    text: str, line: int, key: str, fragment: str
) -> None:
    err = _err(text)
    assert err.context["file"] == "refunds.yaml"
    assert err.context["line"] == line
    assert err.context["key"] == key
    assert err.message.startswith(f"refunds.yaml:{line}: key {key!r}: ")
    assert fragment in err.message
    assert err.code == "config_error"


def test_error_message_matches_the_documented_example() -> None:
    err = _err(
        """\
        policy: refunds
        rules:
          - {id: a, tool: x.y, decision: deny}
          - {id: b, tool: x.y, decision: deny}
          - id: c
            tool: x.y
            decision: alow
        """
    )
    assert err.message == (
        "refunds.yaml:7: key 'rules[2].decision': 'alow' is not one of allow, deny, "
        "require_approval, escalate (did you mean 'allow'?)"
    )
    assert err.context["accepted"] == ["allow", "deny", "require_approval", "escalate"]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        pytest.param("", None, "the file is empty", id="empty"),
        pytest.param("# only a comment\n", None, "the file is empty", id="comment-only"),
        pytest.param("policy: [unclosed\nversion: 2\n", 2, "not valid YAML", id="syntax"),
        pytest.param("policy: x\n---\npolicy: y\n", 2, "not valid YAML", id="two-documents"),
        pytest.param("- a\n- b\n", 1, "must be a mapping", id="root-list"),
        pytest.param("just text\n", 1, "must be a mapping", id="root-scalar"),
        pytest.param("policy: x\n\ttools: {}\n", 2, "not valid YAML", id="tab"),
    ],
)
def test_non_policy_input_is_refused(text: str, line: int | None, fragment: str) -> None:
    err = _err(text)
    assert fragment in err.message
    assert err.context["line"] == line
    assert err.message.startswith("refunds.yaml")


def test_non_utf8_bytes_are_refused() -> None:
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_policy(b"policy: \xff\xfe\n", source_name="bin.yaml")


def test_oversized_file_is_refused() -> None:
    with pytest.raises(ConfigError, match="the limit is"):
        parse_policy("policy: x\n" + "#" * (1024 * 1024), source_name="big.yaml")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    text = "policy: x\ndescription: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(ConfigError):
        parse_policy(text, source_name="deep.yaml")


def test_alias_bombs_are_bounded_by_the_schema() -> None:
    text = "policy: x\napprovers: &a [p, p, p, p, p, p, p, p, p]\ntools:\n  allow: [*a, *a, *a]\n"
    with pytest.raises(ConfigError, match=r"tools\.allow\[0\]"):
        parse_policy(text, source_name="alias.yaml")


def test_scalars_follow_a_strict_schema() -> None:
    doc = parse_policy(
        textwrap.dedent(
            """\
            policy: x
            version: 1.10
            constraints:
              t.x:
                country: {in: [NO, SE, yes, on, 200, "200"]}
            time_windows:
              - tool: t.x
                during: [{hours: 09:00-17:00}]
            """
        )
    )
    assert doc.version == "1.10"
    assert doc.constraints[0].condition.in_ == (Decimal(200), "200", "NO", "SE", "on", "yes")
    assert doc.time_windows[0].during[0].start == 9 * 60
    assert doc.time_windows[0].during[0].end == 17 * 60


def test_numbers_are_exact_decimals() -> None:
    doc = parse_policy("policy: x\nrequire_approval_if_over: 0.1\nspending_limit_usd: '19.99'\n")
    assert doc.thresholds[0].over == Decimal("0.1")
    assert doc.caps.spending_limit_usd == Decimal("19.99")


def test_load_policy_accepts_paths_and_text(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("policy: from-file\ntools: {allow: [a.b]}\n", encoding="utf-8")
    by_path = load_policy(path)
    by_str = load_policy(str(path))
    by_file = load_policy_file(path)
    by_text = load_policy(path.read_text(encoding="utf-8"), source_name="inline")
    assert by_path.name == by_str.name == by_file.name == by_text.name == "from-file"
    assert by_path.hash == by_text.hash
    assert by_path.source == str(path)
    assert by_text.source == "inline"


def test_error_in_a_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "refunds.yaml"
    path.write_text("policy: r\nautonomy: L9\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.message.startswith(f"{path}:2: key 'autonomy'")
    with pytest.raises(ConfigError) as info:
        load_policy(path, source_name="refunds.yaml")
    assert info.value.message.startswith("refunds.yaml:2:")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy file"):
        load_policy(tmp_path / "absent.yaml")


def test_load_policies_reads_folders_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("policy: b\n", encoding="utf-8")
    (tmp_path / "a.yml").write_text("policy: a\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a policy", encoding="utf-8")
    extra = tmp_path / "extra.yaml"
    policies = load_policies([tmp_path])
    assert [p.name for p in policies] == ["a", "b"]
    assert isinstance(policies, PolicySet)
    extra.write_text("policy: a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="policy name 'a' is already used"):
        load_policies([tmp_path / "a.yml", extra])


def test_nested_seed_form_is_accepted() -> None:
    doc = parse_policy(
        textwrap.dedent(
            """\
            policy:
              agent: Procurement-Agent-v2
              spending_limit_usd: 10000
              require_approval_if_over: 5000
              allowed_vendors:
                - Vendor_A
                - Vendor_B
              reflection_loop_cap: 25
              escalation: human_review
            """
        )
    )
    assert doc.name == "Procurement-Agent-v2"
    assert doc.scope.agents == ("Procurement-Agent-v2",)
    assert doc.caps.spending_limit_usd == Decimal(10000)
    assert doc.caps.reflection_loop_cap == 25
    assert doc.allowed_vendors == ("Vendor_A", "Vendor_B")
    assert doc.escalation == "human_review"
    err = _err("policy:\n  agent: a\n  spending_limit: 5\n")
    assert err.context["key"] == "policy.spending_limit"
    assert err.context["line"] == 3
    assert "did you mean 'spending_limit_usd'?" in err.message
