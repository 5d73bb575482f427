"""Prometheus metrics: /metrics over real HTTP, call counters, state read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keel import App, KeelConfig
from keel.errors import PolicyDenied, ToolError
from keel.telemetry import Metrics, StateSources
from keel.testing import FrozenClock, RecordingTool

from .conftest import MODELS, SCOPES, build, serving, sqlite_config


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels`` (None: none such)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def scrape(app: App) -> str:
    metrics = app.telemetry.metrics
    assert metrics is not None
    return metrics.render().decode()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def app(tmp_path: Path, store_url: str, clock: FrozenClock) -> Iterator[App]:
    config = KeelConfig(store_url=store_url, home=tmp_path / "home", models=MODELS)
    with build(config, clock) as keel_app:
        keel_app.register(RecordingTool("payroll.export", scope="ops:run"))
        yield keel_app


def test_metrics_over_http_count_calls_by_verdict_and_show_approvals_pending(
    app: App, clock: FrozenClock
) -> None:
    token = app.mint_token("remote-bot", tenant="acme", scopes=SCOPES)
    headers = {"Authorization": f"Bearer {token}"}
    with serving(app) as base:

        def post(tool: str, arguments: dict[str, Any]) -> int:
            body = {"tool": tool, "arguments": arguments}
            return httpx.post(f"{base}/v1/calls", json=body, headers=headers).status_code

        assert [post("orders.lookup", {"order_id": f"A-{i}"}) for i in range(3)] == [200] * 3
        assert post("payroll.export", {}) == 403  # not allowed by the policy
        assert post("no.such_tool", {}) == 400  # never resolved
        assert post("billing.refund", {"order_id": "A-1", "amount": 500}) == 403  # approval
        clock.advance(seconds=90)
        response = httpx.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text

    calls = "keel_calls_total"
    assert (
        sample(text, calls, kind="tool", tool="orders.lookup", verdict="allow", outcome="ok") == 3
    )
    assert sample(text, calls, tool="payroll.export", verdict="deny", outcome="refused") == 1
    assert sample(text, calls, tool="unresolved", verdict="deny", outcome="refused") == 1
    assert (
        sample(text, calls, tool="billing.refund", verdict="require_approval", outcome="refused")
        == 1
    )
    assert sample(text, "keel_call_errors_total", tool="payroll.export", code="policy_denied") == 1
    assert sample(text, "keel_call_errors_total", tool="unresolved", code="unknown_tool") == 1
    assert (
        sample(text, "keel_call_duration_seconds_count", tool="orders.lookup", verdict="allow") == 3
    )
    assert sample(text, "keel_call_cost_usd_total", tool="orders.lookup") == pytest.approx(0.75)

    assert sample(text, "keel_approvals_open", status="pending") == 1
    assert sample(text, "keel_approvals_open", status="escalated") == 0
    assert sample(text, "keel_approvals_oldest_open_age_seconds", status="pending") == 90
    assert sample(text, "keel_spend_today_usd") == pytest.approx(0.75)
    assert sample(text, "keel_reservations_held") == 0
    assert sample(text, "keel_breaker_state", target="orders.lookup", state="closed") == 1
    for source in ("approvals", "runs", "ledger", "breakers", "cache"):
        assert sample(text, "keel_scrape_error", source=source) == 0


def test_held_reservations_and_runs_by_status_are_read_at_scrape_time(app: App) -> None:
    seen: dict[str, str] = {}

    def scrape_while_running(arguments: Any, context: Any) -> dict[str, str]:
        seen["text"] = scrape(app)  # the call's budget is held while the tool runs
        return {"status": "ok"}

    app.register(
        RecordingTool("ops.probe", scope="ops:run", result=scrape_while_running, cost_usd="0.40")
    )
    app.add_policy("policy: probe\nscope: {tenant: acme}\ntools: {allow: [ops.probe]}\n")
    app.agent("bot", tenant="acme", scopes=SCOPES).call("ops.probe", {})
    assert sample(seen["text"], "keel_reservations_held") == 1
    assert sample(seen["text"], "keel_reservations_held_usd") == pytest.approx(0.40)
    after = scrape(app)
    assert sample(after, "keel_reservations_held") == 0
    assert sample(after, "keel_spend_today_usd") == pytest.approx(0.40)

    @app.workflow("noop", agent="bot", scopes=SCOPES, tenant="acme")
    async def noop(run: Any, _data: Any) -> None:
        await run.tool("orders.lookup", {})

    for _ in range(3):
        app.runtime.submit("noop")
    assert sample(scrape(app), "keel_runs", status="pending") == 3
    assert app.runtime.worker().drain(max_runs=2) == {"completed": 2}
    text = scrape(app)
    assert sample(text, "keel_runs", status="pending") == 1
    assert sample(text, "keel_runs", status="completed") == 2


def test_model_calls_count_tokens_and_the_cache_hit_ratio(app: App) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    request = {
        "model": "triage",
        "messages": [{"role": "user", "content": "a refund please"}],
        "max_tokens": 40,
        "temperature": 0,
    }
    first = agent.model(request)
    agent.model(request)
    text = scrape(app)
    assert sample(text, "keel_calls_total", kind="model", tool="triage", outcome="ok") == 1
    assert sample(text, "keel_calls_total", kind="model", tool="triage", outcome="cached") == 1
    assert sample(text, "keel_model_cache_requests_total", result="hit") == 1
    assert sample(text, "keel_model_cache_requests_total", result="miss") == 1
    assert sample(text, "keel_model_cache_hit_ratio") == 0.5
    usage = first.response.usage
    assert sample(text, "keel_model_tokens_total", model="triage", type="input") == (
        usage.input_tokens
    )
    assert sample(text, "keel_model_tokens_total", model="triage", type="output") == (
        usage.output_tokens
    )


def test_breaker_states_and_trips(app: App) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    for _ in range(app.breaker.failure_threshold):
        with pytest.raises(ToolError):
            agent.call("ops.fail", {})
    text = scrape(app)
    assert sample(text, "keel_breaker_state", target="ops.fail", state="open") == 1
    assert sample(text, "keel_breaker_state", target="ops.fail", state="closed") == 0
    assert sample(text, "keel_breaker_trips_total", target="ops.fail") == 1
    assert (
        sample(text, "keel_calls_total", tool="ops.fail", verdict="allow", outcome="error")
        == app.breaker.failure_threshold
    )


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    with build(sqlite_config(tmp_path / "a")) as one, build(sqlite_config(tmp_path / "b")) as two:
        one.register(RecordingTool("payroll.export", scope="ops:run"))
        agent = one.agent("bot", tenant="acme", scopes=SCOPES)
        agent.call("orders.lookup", {})
        with pytest.raises(PolicyDenied):
            agent.call("payroll.export", {})
        assert sample(scrape(one), "keel_calls_total", tool="orders.lookup") == 1
        assert sample(scrape(one), "keel_calls_total", tool="payroll.export") == 1
        assert sample(scrape(two), "keel_calls_total", tool="orders.lookup") is None
        assert sample(scrape(two), "keel_calls_total", tool="payroll.export") is None


def test_a_failing_source_is_flagged_and_the_rest_still_served() -> None:
    def broken() -> dict[str, int]:
        raise RuntimeError("store down")

    metrics = Metrics()
    metrics.add_state(StateSources(clock=FrozenClock(), runs=broken, breakers=list))
    text = metrics.render().decode()
    assert sample(text, "keel_scrape_error", source="runs") == 1
    assert sample(text, "keel_scrape_error", source="breakers") == 0


def test_metrics_can_require_an_operator_key_for_every_tenant(tmp_path: Path) -> None:
    with build(sqlite_config(tmp_path, metrics_require_key=True)) as app:
        everywhere, _ = app.operator_keys.create("prometheus", "viewer")
        one_tenant, _ = app.operator_keys.create("acme-viewer", "viewer", tenant="acme")
        with serving(app) as base:

            def get(key: str | None) -> int:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                return httpx.get(f"{base}/metrics", headers=headers).status_code

            assert get(None) == 401
            assert get(one_tenant) == 403
            assert get(everywhere) == 200


def test_no_metrics_route_when_metrics_are_off(tmp_path: Path) -> None:
    with build(sqlite_config(tmp_path, telemetry_metrics=False)) as app, serving(app) as base:
        assert httpx.get(f"{base}/metrics").status_code == 404
        assert httpx.get(f"{base}/healthz").status_code == 200
