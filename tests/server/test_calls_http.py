"""``POST /v1/calls`` over real HTTP on loopback: a uvicorn server in a thread, httpx as the
remote agent. Idempotency-Key semantics, error mapping, limits, health and OpenAPI."""

from __future__ import annotations

import httpx
import pytest

from keel.testing import RecordingTool

from .conftest import Served


def test_a_remote_agent_call_runs_once_and_is_recorded(served: Served) -> None:
    response = served.post({"tool": "orders.lookup", "arguments": {"order_id": "A-1"}})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["value"] == {"status": "paid"}
    assert data["verdict"]["decision"] == "allow"
    assert data["record"]["seq"] >= 1 and data["record"]["chain"]
    assert served.keel.verify_audit().ok


def test_idempotency_key_replays_same_body_and_refuses_a_different_one(served: Served) -> None:
    body = {"tool": "billing.refund", "arguments": {"order_id": "A-1", "amount": 5}}
    first = served.post(body, key="refund-A-1")
    assert first.status_code == 200, first.text
    again = served.post(body, key="refund-A-1")
    assert again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["value"] == first.json()["value"]
    assert served.refund.calls == 1  # the tool ran once
    other = {"tool": "billing.refund", "arguments": {"order_id": "A-1", "amount": 500}}
    conflict = served.post(other, key="refund-A-1")
    assert conflict.status_code == 422
    assert conflict.json()["error"]["code"] == "idempotency_key_reused"
    assert served.refund.calls == 1


@pytest.mark.parametrize(
    ("headers", "code"),
    [({"Authorization": "Bearer not-a-token"}, 401), ({"Authorization": ""}, 401)],
)
def test_missing_or_forged_tokens_are_401_and_nothing_runs(
    served: Served, headers: dict[str, str], code: int
) -> None:
    response = httpx.post(
        f"{served.base}/v1/calls",
        json={"tool": "billing.refund", "arguments": {}},
        headers=headers,
    )
    assert response.status_code == code
    assert set(response.json()["error"]) == {"code", "message", "retryable", "context"}
    assert served.refund.calls == 0


def test_unknown_tools_and_policy_denials_are_refused_and_recorded(served: Served) -> None:
    unknown = served.post({"tool": "admin.wipe", "arguments": {}})
    assert unknown.status_code == 400, unknown.text
    assert unknown.json()["error"]["code"] == "unknown_tool"
    served.keel.register(RecordingTool("admin.wipe", scope="ping:run", effect="irreversible"))
    denied = served.post({"tool": "admin.wipe", "arguments": {}})
    assert denied.status_code == 403, denied.text
    error = denied.json()["error"]
    assert error["code"] == "policy_denied"
    assert error["context"]["record_seq"] >= 1  # the refusal is in the audit log


def test_rate_limit_is_429_with_retry_after(served: Served) -> None:
    for _ in range(2):
        assert served.post({"tool": "ping.once", "arguments": {}}).status_code == 200
    limited = served.post({"tool": "ping.once", "arguments": {}})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"{not json", 400),
        (b'{"tool": "orders.lookup", "tool": "billing.refund"}', 400),  # duplicate keys
        (b'{"tool": "orders.lookup", "surprise": 1}', 400),  # unknown field
        (b'{"tool": 7}', 400),
        (b'["orders.lookup"]', 400),
        (b'{"tool": "orders.lookup", "arguments": ' + b"[" * 200 + b"]" * 200 + b"}", 413),
        (b'{"tool": "orders.lookup", "arguments": {"x": "' + b"a" * 70000 + b'"}}', 413),
    ],
)
def test_bad_bodies_get_a_clear_error_and_execute_nothing(
    served: Served, body: bytes, status: int
) -> None:
    response = served.post(body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert served.refund.calls == 0


def test_health_readiness_and_openapi(served: Served) -> None:
    assert httpx.get(f"{served.base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served.base}/readyz").json()
    assert ready["status"] == "ready"
    spec = httpx.get(f"{served.base}/openapi.json").json()
    operation = spec["paths"]["/v1/calls"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in operation["parameters"]]
    assert {"400", "401", "403", "409", "413", "422", "429"} <= set(operation["responses"])
