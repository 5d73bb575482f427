"""A Keel server on loopback for the HTTP tests: uvicorn in a thread, a real socket."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel import App, KeelConfig
from keel.testing import FrozenClock, RecordingTool

from ._serving import serving

POLICY = """
policy: http
scope: {tenant: acme}
tools: {allow: [orders.lookup, billing.refund, ping.once]}
approvers: [finance]
require_approval_if_over: {billing.refund: 100}
rate_limits:
  - {id: pings, scope: agent, tools: [ping.once], requests: 2, per: 1m}
"""


class Served:
    def __init__(self, keel: App, base: str, refund: RecordingTool) -> None:
        self.keel = keel
        self.base = base
        self.refund = refund
        self.token = keel.mint_token(
            "remote-bot", tenant="acme", scopes=["orders:read", "billing:write", "ping:run"]
        )
        self.clients: list[httpx.Client] = []

    def login(
        self, role: str, *, next: str = "/approvals", **options: Any
    ) -> tuple[httpx.Client, str]:
        """A new operator key of ``role`` logged in to the dashboard: an HTTP client with the
        session cookie (closed with the server) and the key's id."""
        text, record = self.keel.operator_keys.create(f"{role}-person", role, **options)
        client = httpx.Client(base_url=self.base, follow_redirects=False)
        self.clients.append(client)
        response = client.post("/login", data={"key": text, "next": next})
        assert response.status_code == 303 and response.headers["location"] == next
        return client, record.key_id

    def post(
        self, body: Any, *, key: str | None = None, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        headers.update(kw.pop("headers", {}))
        if isinstance(body, bytes):
            return httpx.post(f"{self.base}/v1/calls", content=body, headers=headers, **kw)
        return httpx.post(f"{self.base}/v1/calls", json=body, headers=headers, **kw)


@pytest.fixture
def served(tmp_path: Path, store_url: str) -> Iterator[Served]:
    """A server over an App with three tools, on a free loopback port."""
    config = KeelConfig(store_url=store_url, home=tmp_path / "home", max_payload_bytes=65536)
    with App(config, clock=FrozenClock()) as keel:
        keel.add_policy(POLICY)
        keel.register(
            RecordingTool("orders.lookup", scope="orders:read", result={"status": "paid"})
        )
        refund = RecordingTool("billing.refund", scope="billing:write", effect="irreversible")
        keel.register(refund)
        keel.register(RecordingTool("ping.once", scope="ping:run"))

        @keel.workflow(
            "small-refund",
            agent="refund-bot",
            scopes=["orders:read", "billing:write"],
            tenant="acme",
        )
        async def small_refund(run: Any, data: Any) -> dict[str, Any]:
            order = await run.tool("orders.lookup", {"order_id": data["order_id"]})
            await run.tool("billing.refund", {"order_id": data["order_id"], "amount": 5})
            return {"order": order, "refunded": 5}

        with serving(keel) as base:
            served = Served(keel, base, refund)
            yield served
            for client in served.clients:
                client.close()


def csrf_of(page: str) -> str:
    """The CSRF token of a dashboard page's forms."""
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match is not None
    return match.group(1)
