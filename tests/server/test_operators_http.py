"""Operator API keys over HTTP: roles, tenants, approvals decided remotely, kill switches."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import Served

BIG_REFUND = {"tool": "billing.refund", "arguments": {"order_id": "A-9", "amount": 500}}


def _key(served: Served, role: str, **options: Any) -> dict[str, str]:
    text, _record = served.keel.operator_keys.create(f"{role}-person", role, **options)
    return {"Authorization": f"Bearer {text}"}


def _pending(served: Served) -> str:
    response = served.post(BIG_REFUND)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "approval_required"
    return str(error["context"]["approval_id"])


def test_an_approver_key_approves_and_the_agent_retries_with_the_approval(served: Served) -> None:
    approval_id = _pending(served)
    viewer = _key(served, "viewer")
    listed = httpx.get(f"{served.base}/v1/approvals?status=pending", headers=viewer).json()
    assert [a["approval_id"] for a in listed["approvals"]] == [approval_id]
    shown = httpx.get(f"{served.base}/v1/approvals/{approval_id}", headers=viewer).json()
    assert shown["arguments"] == BIG_REFUND["arguments"]
    # A viewer may not decide.
    refused = httpx.post(f"{served.base}/v1/approvals/{approval_id}/approve", headers=viewer)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "role_required"
    approver = _key(served, "approver", labels=("finance",))
    approved = httpx.post(
        f"{served.base}/v1/approvals/{approval_id}/approve", headers=approver, json={"note": "ok"}
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    done = served.post({**BIG_REFUND, "approval_id": approval_id})
    assert done.status_code == 200, done.text
    assert served.refund.calls == 1
    again = served.post({**BIG_REFUND, "approval_id": approval_id})  # single use
    assert again.status_code == 403
    assert again.json()["error"]["code"] == "approval_used"
    assert served.refund.calls == 1


def test_an_approver_outside_the_policys_approvers_cannot_approve(served: Served) -> None:
    approval_id = _pending(served)
    stranger = _key(served, "approver", labels=("marketing",))
    response = httpx.post(f"{served.base}/v1/approvals/{approval_id}/approve", headers=stranger)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "approval_not_allowed"


def test_deny_needs_a_reason_and_is_final(served: Served) -> None:
    approval_id = _pending(served)
    approver = _key(served, "approver", labels=("finance",))
    url = f"{served.base}/v1/approvals/{approval_id}/deny"
    assert httpx.post(url, headers=approver, json={}).status_code == 400
    denied = httpx.post(url, headers=approver, json={"reason": "not this customer"})
    assert denied.status_code == 200, denied.text
    assert denied.json()["status"] == "denied"
    retry = served.post({**BIG_REFUND, "approval_id": approval_id})
    assert retry.status_code == 403
    assert served.refund.calls == 0


def test_a_tenant_key_sees_only_its_tenant(served: Served) -> None:
    _pending(served)
    other = _key(served, "viewer", tenant="globex")
    listed = httpx.get(f"{served.base}/v1/approvals", headers=other).json()
    assert listed["approvals"] == []


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"Authorization": "Bearer keel_op_0000000000000000_" + "A" * 43},
        {"Authorization": "Bearer not-a-key"},
        {"X-API-Key": "keel_op_zz"},
    ],
)
def test_missing_forged_or_malformed_keys_are_401(served: Served, header: dict[str, str]) -> None:
    response = httpx.get(f"{served.base}/v1/approvals", headers=header)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "operator_key_invalid"


def test_a_revoked_key_is_refused_at_once(served: Served) -> None:
    text, record = served.keel.operator_keys.create("temp", "viewer")
    headers = {"X-API-Key": text}
    assert httpx.get(f"{served.base}/v1/kill-switches", headers=headers).status_code == 200
    served.keel.operator_keys.revoke(record.key_id)
    assert httpx.get(f"{served.base}/v1/kill-switches", headers=headers).status_code == 401


def test_kill_switch_from_an_operator_key_stops_calls_and_is_released(served: Served) -> None:
    approver = _key(served, "approver")
    body = {"scope": "tool", "target": "orders.lookup", "reason": "incident 42"}
    url = f"{served.base}/v1/kill-switches"
    assert httpx.post(f"{url}/engage", headers=approver, json=body).status_code == 403
    operator = _key(served, "operator")
    engaged = httpx.post(f"{url}/engage", headers=operator, json=body)
    assert engaged.status_code == 200, engaged.text
    assert "operator key" in engaged.json()["actor"]
    stopped = served.post({"tool": "orders.lookup", "arguments": {}})
    assert stopped.status_code == 403
    assert stopped.json()["error"]["code"] == "kill_switch"
    assert httpx.post(f"{url}/release", headers=operator, json=body).status_code == 200
    assert served.post({"tool": "orders.lookup", "arguments": {}}).status_code == 200


def test_a_tenant_operator_may_only_switch_its_own_tenant(served: Served) -> None:
    operator = _key(served, "operator", tenant="acme")
    url = f"{served.base}/v1/kill-switches/engage"
    wide = httpx.post(url, headers=operator, json={"scope": "global", "reason": "x"})
    assert wide.status_code == 403
    assert wide.json()["error"]["code"] == "tenant_mismatch"
    own = httpx.post(
        url, headers=operator, json={"scope": "tenant", "target": "acme", "reason": "x"}
    )
    assert own.status_code == 200, own.text


def test_an_operator_revokes_an_agent_over_http(served: Served) -> None:
    lookup = {"tool": "orders.lookup", "arguments": {"order_id": "A-1"}}
    assert served.post(lookup).status_code == 200
    url = f"{served.base}/v1/revocations"
    body = {"agent": "remote-bot", "reason": "leaked token"}
    viewer = httpx.post(url, headers=_key(served, "viewer"), json=body)
    assert viewer.status_code == 403
    outsider = httpx.post(
        url, headers=_key(served, "operator", tenant="globex"), json={**body, "tenant": "acme"}
    )
    assert outsider.status_code == 403
    both = httpx.post(url, headers=_key(served, "operator"), json={**body, "jti": "x"})
    assert both.status_code == 400
    revoked = httpx.post(url, headers=_key(served, "operator"), json=body)
    assert revoked.status_code == 200, revoked.text
    refused = served.post(lookup)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_revoked"
