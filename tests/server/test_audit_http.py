"""The audit log over HTTP with operator keys: search with cursors, one record, a streamed JSON
lines export, and verification that finds a record tampered with in the database."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from keel.audit import query

from .conftest import Served


def _key(served: Served, role: str, **options: Any) -> dict[str, str]:
    text, _record = served.keel.operator_keys.create(f"{role}-person", role, **options)
    return {"X-API-Key": text}


def _activity(served: Served) -> None:
    """Calls that leave records of every kind: executed, held for approval, denied, control."""
    for i in range(3):
        assert served.post({"tool": "orders.lookup", "arguments": {"n": i}}).status_code == 200
    big = {"tool": "billing.refund", "arguments": {"order_id": "A-1", "amount": 500}}
    assert served.post(big).status_code == 403
    stranger = served.keel.mint_token("stranger", tenant="globex", scopes=["orders:read"])
    assert served.post({"tool": "orders.lookup"}, token=stranger).status_code == 403
    switch = {"scope": "tool", "target": "ping.once", "reason": "drill"}
    engaged = httpx.post(
        f"{served.base}/v1/kill-switches/engage", headers=_key(served, "operator"), json=switch
    )
    assert engaged.status_code == 200, engaged.text


def _everything(served: Served, **filters: Any) -> list[dict[str, Any]]:
    """What the Python API answers, in the JSON form the server sends."""
    found = query(served.keel.store, limit=1000, **filters)
    return [json.loads(json.dumps(r.to_dict())) for r in found]


def test_records_newest_first_and_paged_with_a_cursor(served: Served) -> None:
    _activity(served)
    viewer = _key(served, "viewer")
    url = f"{served.base}/v1/audit/records"
    expected = _everything(served)
    assert len(expected) >= 6
    whole = httpx.get(url, params={"limit": 1000}, headers=viewer)
    assert whole.status_code == 200, whole.text
    assert whole.json() == {"records": expected, "next_cursor": None}
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(len(expected)):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = httpx.get(url, params=params, headers=viewer).json()
        pages += page["records"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == expected


def test_record_filters(served: Served) -> None:
    _activity(served)
    viewer = _key(served, "viewer")
    url = f"{served.base}/v1/audit/records"
    held = httpx.get(url, params={"decision": "require_approval"}, headers=viewer).json()
    assert [r["tool"] for r in held["records"]] == ["billing.refund"]
    calls = httpx.get(url, params={"kind": "call", "tenant": "acme"}, headers=viewer).json()
    assert calls["records"] == _everything(served, kind="call", tenant="acme")
    assert len(calls["records"]) == 3
    assert all(r["body"]["args_digest"].startswith("hmac-sha256:") for r in calls["records"])
    future = {"since": "2030-01-01T00:00:00Z"}
    assert httpx.get(url, params=future, headers=viewer).json()["records"] == []


def test_one_record_by_chain_and_seq(served: Served) -> None:
    _activity(served)
    viewer = _key(served, "viewer")
    for expected in _everything(served)[:3]:
        url = f"{served.base}/v1/audit/records/{expected['chain']}/{expected['seq']}"
        answer = httpx.get(url, headers=viewer)
        assert answer.status_code == 200, answer.text
        assert answer.json() == expected
    missing = httpx.get(f"{served.base}/v1/audit/records/main/999999", headers=viewer)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "record_not_found"


def test_export_streams_the_query_as_json_lines(served: Served) -> None:
    _activity(served)
    viewer = _key(served, "viewer")
    with httpx.stream("GET", f"{served.base}/v1/audit/export", headers=viewer) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert lines == _everything(served)
    only = httpx.get(
        f"{served.base}/v1/audit/export", params={"tool": "billing.refund"}, headers=viewer
    )
    assert [json.loads(line) for line in only.text.splitlines()] == _everything(
        served, tool="billing.refund"
    )


def test_export_pages_through_more_than_one_read(served: Served) -> None:
    for i in range(12):
        assert served.post({"tool": "orders.lookup", "arguments": {"n": i}}).status_code == 200
    from keel.audit import iter_query

    assert [r.to_dict() for r in iter_query(served.keel.store, page=5)] == [
        r.to_dict() for r in query(served.keel.store, limit=1000)
    ]
    answer = httpx.get(f"{served.base}/v1/audit/export", headers=_key(served, "viewer"))
    assert len(answer.text.splitlines()) == 12


def test_a_tenant_key_reads_its_tenants_records_only(served: Served) -> None:
    _activity(served)
    own = _key(served, "viewer", tenant="acme")
    outsider = _key(served, "viewer", tenant="nowhere")
    url = f"{served.base}/v1/audit/records"
    mine = httpx.get(url, headers=own).json()["records"]
    assert mine == _everything(served, tenant="acme")
    assert {r["tenant"] for r in mine} == {"acme"}  # no globex calls, no kill switch controls
    assert httpx.get(url, headers=outsider).json()["records"] == []
    acme_record = mine[0]
    one = f"{url}/{acme_record['chain']}/{acme_record['seq']}"
    hidden = httpx.get(one, headers=outsider)
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "record_not_found"
    (control,) = [r for r in _everything(served, kind="control") if r["decision"] == "engage"]
    assert control["tenant"] is None
    assert httpx.get(f"{url}/{control['chain']}/{control['seq']}", headers=own).status_code == 404
    for path in ("records", "export"):
        asked = httpx.get(f"{served.base}/v1/audit/{path}?tenant=acme", headers=outsider)
        assert asked.status_code == 404
        assert asked.json()["error"]["code"] == "tenant_not_found"
    exported = httpx.get(f"{served.base}/v1/audit/export", headers=own).text.splitlines()
    assert [json.loads(line) for line in exported] == mine


def test_verify_needs_an_operator_for_every_tenant(served: Served) -> None:
    _activity(served)
    url = f"{served.base}/v1/audit/verify"
    refused = httpx.post(url, headers=_key(served, "viewer"))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "role_required"
    tenant_only = httpx.post(url, headers=_key(served, "admin", tenant="acme"))
    assert tenant_only.status_code == 403
    assert tenant_only.json()["error"]["code"] == "all_tenants_required"
    answer = httpx.post(url, headers=_key(served, "operator"))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["ok"] is True
    assert report["records_checked"] == len(_everything(served))
    assert sum(c["records"] for c in report["chains"]) == report["records_checked"]
    assert all(c["ok"] and c["first_bad_seq"] is None for c in report["chains"])


def test_verify_reports_a_record_tampered_with_in_the_database(served: Served) -> None:
    _activity(served)
    victim = _everything(served, tool="billing.refund")[0]
    with served.keel.store.write() as tx:
        changed = tx.execute(
            "UPDATE audit_records SET tool = 'wire.money' WHERE chain = ? AND seq = ?",
            (victim["chain"], victim["seq"]),
        )
    assert changed == 1
    answer = httpx.post(f"{served.base}/v1/audit/verify", headers=_key(served, "admin"))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["ok"] is False
    assert (report["first_bad_chain"], report["first_bad_seq"]) == (victim["chain"], victim["seq"])
    assert "hash does not match" in report["problem"]
    (bad,) = [c for c in report["chains"] if not c["ok"]]
    assert (bad["chain"], bad["first_bad_seq"]) == (victim["chain"], victim["seq"])
    assert report["problems"][0]["seq"] == victim["seq"]


@pytest.mark.parametrize(
    ("query_string", "status", "code"),
    [
        ("cursor=not-a-cursor", 400, "invalid_cursor"),
        ("cursor=WyJ4IiwxLCJtYWluIl0", 400, "invalid_cursor"),  # ["x",1,"main"]: not a time
        ("cursor=", 400, "invalid_request"),
        ("limit=1001", 400, "invalid_request"),
        ("kind=vote", 400, "invalid_request"),
        ("until=2026-01-01T00:00:00", 400, "invalid_request"),
    ],
)
def test_records_refuse_bad_parameters(
    served: Served, query_string: str, status: int, code: str | None
) -> None:
    answer = httpx.get(
        f"{served.base}/v1/audit/records?{query_string}", headers=_key(served, "viewer")
    )
    assert answer.status_code == status, answer.text
    if code is not None:
        assert answer.json()["error"]["code"] == code
