"""Budgets, spend and forecasts over HTTP with operator keys."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from keel.ledger import MIN_OBSERVATIONS
from keel.testing import RecordingTool

from .conftest import Served

CAPS = """
policy: spend
scope: {tenant: acme}
tools: {allow: [search.web]}
caps:
  - {id: acme-day, per: [tenant], window: day, max_usd: 10}
"""


def _key(served: Served, role: str, **options: Any) -> dict[str, str]:
    text, _record = served.keel.operator_keys.create(f"{role}-person", role, **options)
    return {"X-API-Key": text}


def _spend_some(served: Served, calls: int = 2) -> None:
    """A priced tool under a day cap, called ``calls`` times through the HTTP call endpoint."""
    served.keel.add_policy(CAPS)
    served.keel.register(RecordingTool("search.web", scope="search:run", cost_usd="0.25"))
    token = served.keel.mint_token("searcher", tenant="acme", scopes=["search:run"])
    for i in range(calls):
        answer = served.post({"tool": "search.web", "arguments": {"q": str(i)}}, token=token)
        assert answer.status_code == 200, answer.text


def test_budgets_show_spend_after_a_governed_call(served: Served) -> None:
    viewer = _key(served, "viewer")
    assert httpx.get(f"{served.base}/v1/budgets", headers=viewer).json() == {"budgets": []}
    _spend_some(served)
    answer = httpx.get(f"{served.base}/v1/budgets", headers=viewer)
    assert answer.status_code == 200, answer.text
    (line,) = answer.json()["budgets"]
    assert line["cap"] == "spend#acme-day"
    assert (line["tenant"], line["scope"], line["key"]) == ("acme", "tenant", "acme")
    assert line["period"] == "2026-01-01"  # the frozen clock's day
    assert (line["limit_usd"], line["spent_usd"], line["reserved_usd"]) == ("10", "0.5", "0")
    assert line["remaining_usd"] == "9.5"
    assert line["spent_calls"] == 2
    report = [x.to_dict() for x in served.keel.ledger.report()]
    assert answer.json()["budgets"] == report  # what `keel budget show` reads


def test_a_tenant_key_sees_its_tenants_budgets_only(served: Served) -> None:
    _spend_some(served, calls=1)
    own = _key(served, "viewer", tenant="acme")
    outsider = _key(served, "viewer", tenant="globex")
    assert len(httpx.get(f"{served.base}/v1/budgets", headers=own).json()["budgets"]) == 1
    assert httpx.get(f"{served.base}/v1/budgets", headers=outsider).json()["budgets"] == []
    for path in ("budgets", "spend"):
        asked = httpx.get(f"{served.base}/v1/{path}?tenant=acme", headers=outsider)
        assert asked.status_code == 404
        assert asked.json()["error"]["code"] == "tenant_not_found"
    mine = httpx.get(f"{served.base}/v1/spend?by=tenant", headers=outsider).json()
    assert mine["groups"] == [] and mine["total"]["reservations"] == 0


def test_spend_grouped_by_target_and_agent(served: Served) -> None:
    _spend_some(served)
    assert served.post({"tool": "orders.lookup", "arguments": {}}).status_code == 200
    viewer = _key(served, "viewer")
    by_target = httpx.get(f"{served.base}/v1/spend?by=target", headers=viewer)
    assert by_target.status_code == 200, by_target.text
    body = by_target.json()
    assert body["by"] == "target"
    assert [(g["key"], g["spent_usd"], g["spent_calls"]) for g in body["groups"]] == [
        ("search.web", "0.5", 2),
        ("orders.lookup", "0", 1),
    ]
    assert body["total"]["spent_usd"] == "0.5" and body["total"]["reservations"] == 3
    by_agent = httpx.get(f"{served.base}/v1/spend?by=agent&tenant=acme", headers=viewer).json()
    assert {g["key"]: g["spent_usd"] for g in by_agent["groups"]} == {
        "searcher": "0.5",
        "remote-bot": "0",
    }
    only = httpx.get(f"{served.base}/v1/spend?agent=searcher", headers=viewer).json()
    assert only["groups"] == [] and only["total"]["spent_calls"] == 2


def test_spend_between_from_and_to(served: Served) -> None:
    _spend_some(served, calls=1)
    viewer = _key(served, "viewer")
    url = f"{served.base}/v1/spend"
    inside = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00+01:00"}
    assert httpx.get(url, params=inside, headers=viewer).json()["total"]["spent_usd"] == "0.25"
    later = {"from": "2026-01-01T00:00:00.000001Z"}
    assert httpx.get(url, params=later, headers=viewer).json()["total"]["reservations"] == 0


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("by=colour", 400),
        ("from=2026-01-01T00:00:00", 400),  # no UTC offset
        ("from=0001-01-01T00:00:00%2B01:00", 400),  # before year 1 in UTC
        ("limit=0", 400),
        ("tenant=", 400),
        ("agent=a%00b", 400),
    ],
)
def test_spend_refuses_bad_parameters(served: Served, query: str, status: int) -> None:
    answer = httpx.get(f"{served.base}/v1/spend?{query}", headers=_key(served, "viewer"))
    assert answer.status_code == status, answer.text


def _runs(served: Served, count: int) -> None:
    operator = _key(served, "operator")
    for i in range(count):
        created = httpx.post(
            f"{served.base}/v1/workflows/small-refund/runs",
            headers=operator,
            json={"input": {"order_id": f"A-{i}"}},
        )
        assert created.status_code == 201, created.text
    served.keel.runtime.worker().drain()


def test_forecast_needs_history_and_says_so(served: Served) -> None:
    viewer = _key(served, "viewer")
    _runs(served, 2)
    answer = httpx.get(f"{served.base}/v1/forecasts?workflow=small-refund", headers=viewer)
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "forecast_insufficient_history"
    assert error["context"]["observations"] == 2
    assert error["context"]["minimum"] == MIN_OBSERVATIONS
    missing = httpx.get(f"{served.base}/v1/forecasts?workflow=nothing", headers=viewer)
    assert missing.status_code == 409


@pytest.mark.slow
def test_forecast_from_recorded_runs(served: Served) -> None:
    _runs(served, MIN_OBSERVATIONS)
    viewer = _key(served, "viewer", tenant="acme")
    url = f"{served.base}/v1/forecasts?workflow=small-refund&runs=50&seed=7"
    answer = httpx.get(url, headers=viewer)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["workflow"] == "small-refund"
    assert body["runs"] == 50 and body["seed"] == 7
    assert body["observations_used"] == MIN_OBSERVATIONS
    assert body["total"]["expected"] == "0.000000"  # the fake tools cost nothing
    assert httpx.get(url, headers=viewer).json() == body  # the same seed, the same answer


def test_forecast_of_another_tenants_workflow_is_not_found(served: Served) -> None:
    _runs(served, 1)
    outsider = _key(served, "viewer", tenant="globex")
    url = f"{served.base}/v1/forecasts"
    answer = httpx.get(url, params={"workflow": "small-refund"}, headers=outsider)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "workflow_not_found"
    asked = {"workflow": "elsewhere", "tenant": "acme"}
    assert httpx.get(url, params=asked, headers=outsider).status_code == 404
    # A workflow this server does not register: the key's own tenant's runs (there are none).
    own = httpx.get(url, params={"workflow": "elsewhere"}, headers=outsider)
    assert own.status_code == 409
    assert own.json()["error"]["context"]["observations"] == 0
    bad = httpx.get(f"{url}?workflow=x&runs=0", headers=outsider)
    assert bad.status_code == 400


def test_forecast_counts_only_the_workflows_own_tenant(served: Served) -> None:
    """Calls naming a workflow from another tenant's agent do not enter its history."""
    stranger = served.keel.mint_token("stranger", tenant="globex", scopes=["orders:read"])
    served.keel.add_policy("policy: globex\nscope: {tenant: globex}\ntools: {allow: ['*']}\n")
    for number in range(MIN_OBSERVATIONS):
        body = {
            "tool": "orders.lookup",
            "workflow": "small-refund",
            "run_id": f"fake-{number}",
            "step_id": "s1",
        }
        refused = served.post(body, token=stranger)  # not a run of that workflow: refused
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "workflow_not_bound"
    url = f"{served.base}/v1/forecasts?workflow=small-refund"
    answer = httpx.get(url, headers=_key(served, "viewer"))
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["context"]["observations"] == 0
