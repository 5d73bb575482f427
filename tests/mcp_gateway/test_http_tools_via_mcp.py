"""An HTTP tool declared in config, called by an MCP client through ``keel serve``: Keel injects
the credential from its secret store, maps the response, and the secret appears nowhere else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from keel import App, KeelConfig
from keel.audit import query
from server._serving import serving
from tools._server import Loopback, json_reply

from .conftest import connect

SECRET = "crm-token-7f3a9c-never-shown"
POLICY = """
policy: crm
version: 1
scope: {tenant: acme}
tools: {allow: ["crm.*"]}
"""


def test_an_http_tool_over_mcp_with_an_injected_secret(tmp_path: Path, store_url: str) -> None:
    with Loopback() as api:
        api.routes["/api/orders/A-1"] = lambda seen: json_reply(
            {"data": {"order": {"id": "A-1", "total": 42, "internal_note": "vip"}}}
        )
        config = KeelConfig(
            store_url=store_url,
            home=tmp_path / "home",
            egress_allow=("127.0.0.1",),
            http_tools={
                "crm.orders.get": {
                    "description": "Look up an order.",
                    "method": "GET",
                    "url": api.url("/api/orders/{order_id}"),
                    "scope": "crm:read",
                    "arguments": {
                        "type": "object",
                        "properties": {"order_id": {"type": "string", "maxLength": 40}},
                        "required": ["order_id"],
                    },
                    "headers": {"Authorization": "Bearer {secret:crm_token}"},
                    "response": {"select": "data.order", "fields": {"id": "id", "total": "total"}},
                }
            },
        )
        with App(config) as keel:
            keel.add_policy(POLICY)
            keel.secrets.put("crm_token", SECRET, actor="test")
            token = keel.mint_token("crm-bot", tenant="acme", scopes=["crm:read"])
            with serving(keel) as base:

                async def go() -> tuple[Any, Any]:
                    async with connect(f"{base}/mcp", token) as client:
                        listed = await client.list_tools()
                        result = await client.call_tool("crm.orders.get", {"order_id": "A-1"})
                        return listed, result

                listed, result = anyio.run(go)
            records = query(keel.store, tool="crm.orders.get")
        seen = api.seen("/api/orders/A-1")
    tool = next(t for t in listed.tools if t.name == "crm.orders.get")
    assert SECRET not in json.dumps(tool.model_dump(mode="json"))
    assert not result.is_error and result.structured_content == {"id": "A-1", "total": 42}
    assert len(seen) == 1 and seen[0].headers.get("authorization") == f"Bearer {SECRET}"
    assert records and all(SECRET not in json.dumps(r.entry.body) for r in records)
