"""``rule_id`` on ``/v1/audit/records`` and ``/v1/audit/export``: the records a rule decided,
paged and streamed like any other filter, limited to a tenant key's tenant, validated, and
documented in the OpenAPI schema."""

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


def _decided(served: Served) -> tuple[str, str]:
    """Calls decided by three rules; returns the rule ids of a hold and of a guard's refusal."""
    for i in range(3):
        assert served.post({"tool": "orders.lookup", "arguments": {"n": i}}).status_code == 200
    for order in ("A-1", "A-2"):
        big = {"tool": "billing.refund", "arguments": {"order_id": order, "amount": 500}}
        assert served.post(big).status_code == 403
    stranger = served.keel.mint_token("stranger", tenant="globex", scopes=["orders:read"])
    refused = served.post({"tool": "orders.lookup"}, token=stranger)
    assert refused.status_code == 403
    held = query(served.keel.store, decision="require_approval", limit=1)[0].entry.rule_id
    denied = refused.json()["error"]["context"]["rule_id"]
    assert held and denied and held != denied
    return held, denied


def _json(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(r.to_dict())) for r in records]


def test_records_by_rule(served: Served) -> None:
    held, denied = _decided(served)
    viewer = _key(served, "viewer")
    url = f"{served.base}/v1/audit/records"
    answer = httpx.get(url, params={"rule_id": held}, headers=viewer)
    assert answer.status_code == 200, answer.text
    records = answer.json()["records"]
    assert records == _json(query(served.keel.store, rule_id=held, limit=1000))
    assert {r["rule_id"] for r in records} == {held}
    assert [r["decision"] for r in records if r["kind"] == "decision"] == ["require_approval"] * 2
    refusals = httpx.get(url, params={"rule_id": denied}, headers=viewer).json()["records"]
    assert [(r["tenant"], r["decision"]) for r in refusals] == [("globex", "deny")]
    both = {"rule_id": held, "decision": "require_approval", "limit": 1}
    first = httpx.get(url, params=both, headers=viewer).json()
    assert len(first["records"]) == 1 and first["next_cursor"]
    rest = httpx.get(url, params={**both, "cursor": first["next_cursor"]}, headers=viewer).json()
    assert [r["seq"] for r in first["records"] + rest["records"]] == [
        r.seq for r in query(served.keel.store, rule_id=held, decision="require_approval")
    ]
    none = httpx.get(url, params={"rule_id": "no-such-rule"}, headers=viewer).json()
    assert none == {"records": [], "next_cursor": None}


def test_export_by_rule(served: Served) -> None:
    held, _denied = _decided(served)
    answer = httpx.get(
        f"{served.base}/v1/audit/export",
        params={"rule_id": held},
        headers=_key(served, "viewer"),
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert lines == _json(query(served.keel.store, rule_id=held, limit=1000))
    assert len(lines) >= 2


def test_a_tenant_key_searches_its_tenants_rules_only(served: Served) -> None:
    _held, denied = _decided(served)
    url = f"{served.base}/v1/audit/records"
    acme = httpx.get(url, params={"rule_id": denied}, headers=_key(served, "viewer", tenant="acme"))
    assert acme.json()["records"] == []  # the refusal was globex's
    globex = _key(served, "viewer", tenant="globex")
    seen = httpx.get(url, params={"rule_id": denied}, headers=globex).json()["records"]
    assert [r["tenant"] for r in seen] == ["globex"]
    exported = httpx.get(
        f"{served.base}/v1/audit/export", params={"rule_id": denied}, headers=globex
    )
    assert [json.loads(line)["tenant"] for line in exported.text.splitlines()] == ["globex"]


@pytest.mark.parametrize("value", ["", "r" * 201, "rule\x01one"])
def test_a_bad_rule_id_is_refused(served: Served, value: str) -> None:
    viewer = _key(served, "viewer")
    for path in ("records", "export"):
        answer = httpx.get(
            f"{served.base}/v1/audit/{path}", params={"rule_id": value}, headers=viewer
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_request"


def test_the_rule_filter_is_documented(served: Served) -> None:
    schema = httpx.get(f"{served.base}/openapi.json").json()
    for path in ("/v1/audit/records", "/v1/audit/export"):
        parameters = {p["name"]: p for p in schema["paths"][path]["get"]["parameters"]}
        rule = parameters["rule_id"]
        assert rule["in"] == "query" and not rule.get("required", False)
        assert "rule" in rule["description"]
