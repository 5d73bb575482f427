"""Helpers shared by the HTTP tool tests."""

from __future__ import annotations

from typing import Any

from keel.net import EgressPolicy
from keel.secrets import SecretStore
from keel.tools import HttpTool, ToolContext, load_http_tools

SECRET = "s3cr3t-Token_value"


def context(key: str | None = None) -> ToolContext:
    return ToolContext(
        call_id="call-1", tool="crm.test", tenant="acme", agent_id="agent-1", idempotency_key=key
    )


def make_tool(
    spec: dict[str, Any], secrets: SecretStore, egress: EgressPolicy, name: str = "crm.test"
) -> HttpTool:
    [tool] = load_http_tools({name: spec}, secrets=secrets, egress=egress)
    return tool
