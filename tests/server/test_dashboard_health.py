"""The dashboard's health screen over real HTTP: approvals waiting by age (escalated apart),
refusals and failures over the last hour and day from the audit log, circuit breakers, the
model response cache and runs by state; a tenant key sees its tenant's figures, and the page
says which figures are global."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel import App, KeelConfig
from keel.audit.summary import tally
from keel.models import Message, ModelRequest, ModelResponse, Usage
from keel.testing import FrozenClock, RecordingTool

from ._serving import serving

POLICY = """
policy: health
scope: {tenant: acme}
tools: {allow: [orders.lookup, billing.refund, flaky.op]}
approvers: [finance]
require_approval_if_over: {billing.refund: 100}
rules:
  - id: huge-refund
    tool: billing.refund
    when: {arguments: {amount: {gt: 10000}}}
    decision: escalate
    reason: huge refunds go to fraud review
"""
SCOPES = ["orders:read", "billing:write"]


class Site:
    def __init__(self, keel: App, base: str, clock: FrozenClock) -> None:
        self.keel, self.base, self.clock = keel, base, clock
        self.clients: list[httpx.Client] = []

    def call(self, tool: str, arguments: dict[str, Any], tenant: str = "acme") -> int:
        """A governed call by an agent of ``tenant`` (a fresh token: the clock moves)."""
        token = self.keel.mint_token("health-bot", tenant=tenant, scopes=SCOPES)
        answer = httpx.post(
            f"{self.base}/v1/calls",
            json={"tool": tool, "arguments": arguments},
            headers={"Authorization": f"Bearer {token}"},
        )
        return answer.status_code

    def login(self, role: str, **options: Any) -> httpx.Client:
        text, _record = self.keel.operator_keys.create(f"{role}-person", role, **options)
        client = httpx.Client(base_url=self.base, follow_redirects=False)
        self.clients.append(client)
        assert client.post("/login", data={"key": text, "next": "/health"}).status_code == 303
        return client

    def page(self, role: str = "viewer", **options: Any) -> str:
        answer = self.login(role, **options).get("/health")
        assert answer.status_code == 200, answer.text
        assert " style=" not in answer.text
        assert re.search(r"<script(?![^>]*\ssrc=)", answer.text) is None
        return answer.text


@pytest.fixture
def site(tmp_path: Path, store_url: str) -> Iterator[Site]:
    clock = FrozenClock()
    config = KeelConfig(store_url=store_url, home=tmp_path / "home")
    with App(config, clock=clock) as keel:
        keel.add_policy(POLICY)
        keel.register(RecordingTool("orders.lookup", scope="orders:read", result={"ok": True}))
        keel.register(RecordingTool("billing.refund", scope="billing:write", effect="irreversible"))
        keel.register(RecordingTool("flaky.op", scope="orders:read", fail_times=10**6))

        @keel.workflow("lookup-once", agent="wf-bot", scopes=SCOPES, tenant="acme")
        async def lookup_once(run: Any, data: Any) -> Any:
            return await run.tool("orders.lookup", {"id": data["id"]})

        with serving(keel) as base:
            made = Site(keel, base, clock)
            yield made
            for client in made.clients:
                client.close()


def _row(page: str, header: str) -> list[str]:
    """The cells of the table row headed ``header`` (tags stripped)."""
    match = re.search(
        rf"<th scope=\"row\">(?:<a [^>]*>)?{header}(?:</a>)?</th>(.*?)</tr>", page, re.S
    )
    assert match is not None, header
    cells = re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)
    return [re.sub(r"<[^>]+>", "", c).strip() for c in cells]


def _section(page: str, heading_id: str) -> str:
    return page.split(f'id="{heading_id}"', 1)[1].split("</section>", 1)[0]


def test_approvals_waiting_by_age(site: Site) -> None:
    assert site.call("billing.refund", {"order_id": "A-1", "amount": 500}) == 403
    site.clock.advance(hours=30)
    assert site.call("billing.refund", {"order_id": "A-2", "amount": 500}) == 403
    site.clock.advance(hours=2)
    assert site.call("billing.refund", {"order_id": "A-3", "amount": 500}) == 403
    assert site.call("billing.refund", {"order_id": "A-4", "amount": 50000}) == 403
    site.clock.advance(minutes=10)
    waiting = {a.status for a in site.keel.approvals.list(None, "acme")}
    assert waiting == {"pending", "escalated"}
    page = site.page()
    assert _row(page, "Pending") == ["1", "1", "1", "3", "32.2 h"]
    assert _row(page, "Escalated") == ["1", "0", "0", "1", "10 min"]
    assert 'href="/approvals"' in _section(page, "h-approvals")
    other = site.page(tenant="globex")
    assert _row(other, "Pending") == ["0", "0", "0", "0", "—"]
    assert _row(other, "Escalated") == ["0", "0", "0", "0", "—"]
    assert "your tenant" in _section(other, "h-approvals")


def test_refusals_and_failures_over_the_last_hour_and_day(site: Site) -> None:
    assert site.call("orders.lookup", {"id": 1}) == 200
    assert site.call("orders.lookup", {"id": 2}, tenant="globex") == 403  # outside the policy
    site.clock.advance(hours=2)
    for i in range(3):
        assert site.call("orders.lookup", {"id": i}) == 200
    for _ in range(5):
        assert site.call("flaky.op", {}) == 502  # the tool fails: the breaker counts it
    assert site.call("flaky.op", {}) == 502  # the circuit is open: refused without running
    assert site.keel.breaker.state("flaky.op").status == "open"
    assert site.call("billing.refund", {"order_id": "B-1", "amount": 500}) == 403  # held
    site.clock.advance(seconds=10)
    hour = tally(site.keel.store, site.keel.clock.now() - dt.timedelta(hours=1))
    assert (hour.executed, hour.refused, hour.held) == (8, 1, 1)
    page = site.page()
    # Calls, executed, refused, deny rate, held, answered, failed, error rate (other records).
    assert _row(page, "Last hour")[:8] == ["10", "8", "1", "10.0 %", "1", "0", "5", "62.5 %"]
    assert _row(page, "Last day")[:8] == ["12", "9", "2", "16.7 %", "1", "0", "5", "55.6 %"]
    assert re.search(r"Failures by code: <code>\w+</code> × 5", _section(page, "h-calls"))
    assert "/audit?decision=deny&amp;since=" in page
    breakers = _section(page, "h-breakers")
    assert "<code>flaky.op</code>" in breakers and ">open</span>" in breakers
    assert "probe at 02:00:30 UTC (in 20 s)" in breakers and "<code>tool_error</code>" in breakers
    assert "global · this server process" in breakers
    site.clock.advance(seconds=30)
    later = _section(site.page(), "h-breakers")
    assert ">half-open</span>" in later and "the next call is a probe" in later
    globex = site.page(tenant="globex")
    assert _row(globex, "Last day")[:3] == ["1", "0", "1"]
    assert _row(globex, "Last hour")[:3] == ["0", "0", "0"]
    assert "<code>flaky.op</code>" in _section(globex, "h-breakers")  # global: shown as such


def test_model_cache_hit_rate(site: Site) -> None:
    assert "—" in _section(site.page(), "h-cache")
    cache = site.keel.model_cache
    request = ModelRequest(
        model="m", messages=(Message("user", "hi"),), max_tokens=10, temperature=0
    )
    assert cache.get("acme", request) is None  # a miss
    answer = ModelResponse(model="m", provider="p", text="hello", usage=Usage(1, 1))
    assert cache.put("acme", request, answer)
    for _ in range(3):
        assert cache.get("acme", request) is not None  # hits
    section = _section(site.page(tenant="globex"), "h-cache")
    assert "<strong>75.0 %</strong> (3 hits, 1 misses)" in section
    assert "global · this server process" in section


def test_runs_by_state_for_every_tenant_or_one(site: Site) -> None:
    done = site.keel.runtime.submit("lookup-once", {"id": 1})
    site.keel.runtime.worker().drain()
    assert site.keel.runtime.get(done.run_id).status == "completed"
    site.keel.runtime.submit("lookup-once", {"id": 2})
    site.keel.runtime.submit("lookup-once", {"id": 3})

    def states(page: str) -> dict[str, str]:
        found = re.findall(
            r'<span class="badge (\w+)">\w+</span></a> <strong>(\d+\+?)</strong>',
            _section(page, "h-runs"),
        )
        return dict(found)

    everyone = states(site.page())
    assert (everyone["completed"], everyone["pending"], everyone["failed"]) == ("1", "2", "0")
    mine = states(site.page(tenant="acme"))
    assert (mine["completed"], mine["pending"]) == ("1", "2")
    assert set(states(site.page(tenant="globex")).values()) == {"0"}
    assert 'href="/runs?status=pending"' in site.page()


def test_the_screen_needs_a_login(site: Site) -> None:
    answer = httpx.get(f"{site.base}/health")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
