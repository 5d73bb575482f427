"""Policies over HTTP with operator keys: list, show, validate without loading, explain a call."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import Served

BAD_DECISION = """\
policy: broken
tools: {allow: [orders.lookup]}
rules:
  - id: r1
    tool: orders.lookup
    decision: alow
    reason: typo on line 6
"""


def _key(served: Served, role: str, **options: Any) -> dict[str, str]:
    text, _record = served.keel.operator_keys.create(f"{role}-person", role, **options)
    return {"X-API-Key": text}


def test_a_viewer_lists_and_shows_the_loaded_policies(served: Served) -> None:
    viewer = _key(served, "viewer")
    (loaded,) = served.keel.policies
    listed = httpx.get(f"{served.base}/v1/policies", headers=viewer)
    assert listed.status_code == 200, listed.text
    (summary,) = listed.json()["policies"]
    assert summary["name"] == "http"
    assert summary["hash"] == loaded.hash
    assert summary["scope"]["tenants"] == ["acme"]
    shown = httpx.get(f"{served.base}/v1/policies/http", headers=viewer).json()
    assert shown["document"] == loaded.to_dict()
    assert shown["rule_ids"] == list(loaded.document.rule_ids())
    assert shown["rule_ids"] == ["tools.allow", "require_approval_if_over[billing.refund]"]
    assert shown["rule_count"] == summary["rule_count"] == len(shown["rule_ids"])
    assert httpx.get(f"{served.base}/v1/policies").status_code == 401


def test_another_tenants_policy_is_not_found(served: Served) -> None:
    outsider = _key(served, "admin", tenant="globex")
    assert httpx.get(f"{served.base}/v1/policies", headers=outsider).json()["policies"] == []
    hidden = httpx.get(f"{served.base}/v1/policies/http", headers=outsider)
    missing = httpx.get(f"{served.base}/v1/policies/nothing", headers=outsider)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == missing.json()["error"]["code"] == "policy_not_found"
    own = _key(served, "viewer", tenant="acme")
    assert httpx.get(f"{served.base}/v1/policies/http", headers=own).status_code == 200


def test_validate_answers_ok_without_loading(served: Served) -> None:
    viewer = _key(served, "viewer")
    text = "policy: fresh\nscope: {tenant: acme}\ntools: {allow: [orders.lookup]}\n"
    answer = httpx.post(
        f"{served.base}/v1/policies/validate",
        content=text,
        headers={**viewer, "Content-Type": "application/yaml"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] is True and body["errors"] == []
    assert body["policy"]["name"] == "fresh"
    assert [p.name for p in served.keel.policies] == ["http"]  # validated, never loaded


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (BAD_DECISION, 6, "rules[0].decision"),
        ("policy: x\ntools: {allow: [a.b]\n", 3, ""),  # YAML syntax: the flow mapping never ends
        ("policy: x\nautonomy: L9\n", 2, "autonomy"),
    ],
)
def test_validate_reports_line_numbered_errors(
    served: Served, text: str, line: int, key: str
) -> None:
    answer = httpx.post(
        f"{served.base}/v1/policies/validate?filename=refunds.yaml",
        content=text,
        headers=_key(served, "viewer"),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] is False and body["policy"] is None
    (error,) = body["errors"]
    assert error["line"] == line
    assert error["key"] == key
    assert error["file"] == "refunds.yaml"
    assert error["message"].startswith(f"refunds.yaml:{line}")


def test_validate_never_reads_a_file_named_in_the_body(served: Served) -> None:
    answer = httpx.post(
        f"{served.base}/v1/policies/validate",
        content="examples/policies/support.yaml",
        headers=_key(served, "viewer"),
    )
    body = answer.json()
    assert body["ok"] is False
    assert "must be a mapping" in body["errors"][0]["message"]  # the text, not the file


def _explain(served: Served, call: dict[str, Any], **options: Any) -> httpx.Response:
    headers = options.pop("headers", None) or _key(served, "viewer")
    return httpx.post(f"{served.base}/v1/policies/explain", json=call, headers=headers)


def test_explain_gives_the_verdict_a_real_call_gets(served: Served) -> None:
    lookup = {"tool": "orders.lookup", "arguments": {"order_id": "A-1"}}
    explained = _explain(served, {**lookup, "token": served.token})
    assert explained.status_code == 200, explained.text
    real = served.post(lookup)
    assert real.status_code == 200, real.text
    verdict = real.json()["verdict"]
    body = explained.json()
    assert (body["verdict"], body["rule_id"], body["policy_hash"]) == (
        verdict["decision"],
        verdict["rule_id"],
        verdict["policy_hash"],
    )
    assert body["registered"] is True

    refund = {"tool": "billing.refund", "arguments": {"order_id": "A-1", "amount": 500}}
    explained = _explain(served, {**refund, "token": served.token}).json()
    real = served.post(refund)
    assert real.status_code == 403
    error = real.json()["error"]
    assert error["code"] == "approval_required"
    assert explained["verdict"] == "require_approval"
    assert explained["rule_id"] == error["context"]["rule_id"]
    assert explained["call"]["effect"] == "irreversible"  # the tool's declared effect
    assert any(m["rule_id"] == explained["rule_id"] for m in explained["matched"])


def test_explain_with_agent_and_tenant_instead_of_a_token(served: Served) -> None:
    who = {"agent": "someone", "tenant": "acme", "scopes": ["x:y"]}
    denied = _explain(served, {**who, "tool": "files.delete", "effect": "read"}).json()
    assert denied["verdict"] == "deny"
    assert denied["rule_id"] == "default-deny"
    assert denied["registered"] is False
    assert denied["call"]["effect"] == "read"
    allowed = _explain(served, {**who, "tool": "ping.once"}).json()
    assert allowed["verdict"] == "allow"
    assert allowed["call"]["effect"] == "read"  # registered: its own effect wins


@pytest.mark.parametrize(
    "call",
    [
        {"tool": "orders.lookup"},  # nobody
        {"tool": "orders.lookup", "agent": "a"},  # no tenant
        {"tool": "orders.lookup", "agent": "a", "tenant": "acme", "token": "t"},  # both
        {"tool": "orders.lookup", "agent": "a", "tenant": "acme", "colour": "red"},
        {"tool": "", "agent": "a", "tenant": "acme"},
    ],
)
def test_explain_refuses_a_malformed_call(served: Served, call: dict[str, Any]) -> None:
    answer = _explain(served, call)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"


def test_explain_stays_in_the_keys_tenant(served: Served) -> None:
    outsider = _key(served, "viewer", tenant="globex")
    call = {"tool": "orders.lookup", "token": served.token}
    refused = _explain(served, call, headers=outsider)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "tenant_mismatch"
    own = _key(served, "viewer", tenant="acme")
    assert _explain(served, call, headers=own).status_code == 200
    forged = _explain(served, {"tool": "orders.lookup", "token": served.token + "x"})
    assert forged.status_code == 401
