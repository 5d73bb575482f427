"""Workflows and runs over HTTP with operator keys: submit, list, show, cancel."""

from __future__ import annotations

import httpx

from .conftest import Served


def _key(served: Served, role: str, **options: object) -> dict[str, str]:
    text, _ = served.keel.operator_keys.create(f"{role}-person", role, **options)  # type: ignore[arg-type]
    return {"X-API-Key": text}


def test_submit_run_show_and_list(served: Served) -> None:
    operator, viewer = _key(served, "operator"), _key(served, "viewer")
    listed = httpx.get(f"{served.base}/v1/workflows", headers=viewer).json()
    assert {"name": "small-refund", "tenant": "acme"} in listed["workflows"]
    url = f"{served.base}/v1/workflows/small-refund/runs"
    assert httpx.post(url, headers=viewer, json={"input": {}}).status_code == 403
    created = httpx.post(url, headers=operator, json={"input": {"order_id": "A-7"}})
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    assert created.json()["status"] == "pending"
    served.keel.runtime.worker().drain()  # a worker (here, in-process) executes it
    shown = httpx.get(f"{served.base}/v1/runs/{run_id}", headers=viewer).json()
    assert shown["status"] == "completed"
    assert [s["target"] for s in shown["steps"]] == ["orders.lookup", "billing.refund"]
    assert all(s["status"] == "succeeded" for s in shown["steps"])
    runs = httpx.get(f"{served.base}/v1/runs?status=completed", headers=viewer).json()["runs"]
    assert [r["run_id"] for r in runs] == [run_id]
    assert served.refund.calls == 1


def test_cancel_a_pending_run_and_refuse_a_second_cancel(served: Served) -> None:
    operator = _key(served, "operator")
    created = httpx.post(
        f"{served.base}/v1/workflows/small-refund/runs",
        headers=operator,
        json={"input": {"order_id": "A-8"}},
    ).json()
    url = f"{served.base}/v1/runs/{created['run_id']}/cancel"
    assert httpx.post(url, headers=operator, json={}).status_code == 400  # a reason is required
    cancelled = httpx.post(url, headers=operator, json={"reason": "customer withdrew"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = httpx.post(url, headers=operator, json={"reason": "twice"})
    assert again.status_code == 400
    served.keel.runtime.worker().drain()
    assert served.refund.calls == 0


def test_a_key_for_another_tenant_cannot_see_or_touch_runs(served: Served) -> None:
    operator = _key(served, "operator")
    run_id = httpx.post(
        f"{served.base}/v1/workflows/small-refund/runs",
        headers=operator,
        json={"input": {"order_id": "A-9"}},
    ).json()["run_id"]
    outsider = _key(served, "operator", tenant="globex")
    assert httpx.get(f"{served.base}/v1/runs/{run_id}", headers=outsider).status_code == 404
    assert httpx.get(f"{served.base}/v1/runs", headers=outsider).json()["runs"] == []
    cancel = httpx.post(
        f"{served.base}/v1/runs/{run_id}/cancel", headers=outsider, json={"reason": "no"}
    )
    assert cancel.status_code == 404
    submit = httpx.post(
        f"{served.base}/v1/workflows/small-refund/runs", headers=outsider, json={"input": {}}
    )
    assert submit.status_code == 404
    assert submit.json()["error"]["code"] == "unknown_workflow"
