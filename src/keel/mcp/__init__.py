"""The MCP gateway: one governed front door for upstream MCP servers and Keel's own tools.

- ``keel.mcp.config`` — the ``mcp:`` settings (upstreams, allowed hosts/origins, limits).
- ``keel.mcp.upstream`` — a connection to one upstream (the official SDK client), lazy, with
  backoff; error shapes normalized.
- ``keel.mcp.catalog`` — upstream tools as Keel tools under their pinned definitions.
- ``keel.mcp.pins`` / ``keel.mcp.screen`` / ``keel.mcp.names`` — rug-pull pinning, poisoning
  screen, canonical namespaced names.
- ``keel.mcp.server`` — the SDK server's handlers: list filtered per principal, every call
  governed.
- ``keel.mcp.http`` — ``/mcp`` over streamable HTTP, hardened; ``keel.mcp.stdio`` — ``keel mcp``.
"""

from __future__ import annotations

from keel.mcp.catalog import McpGateway, UpstreamTool
from keel.mcp.config import McpConfig, UpstreamConfig, parse_mcp_config
from keel.mcp.http import McpHttpApp, check_message, refusal_recorder
from keel.mcp.pins import Pins, PinState, definition_digest
from keel.mcp.screen import screen_definition
from keel.mcp.server import Caller, build_server

__all__ = [
    "Caller",
    "McpConfig",
    "McpGateway",
    "McpHttpApp",
    "PinState",
    "Pins",
    "UpstreamConfig",
    "UpstreamTool",
    "build_server",
    "check_message",
    "definition_digest",
    "parse_mcp_config",
    "refusal_recorder",
    "screen_definition",
]
