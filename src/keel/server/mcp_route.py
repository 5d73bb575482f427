"""``/mcp`` on the HTTP server: Keel's MCP gateway over streamable HTTP (``keel.mcp.http``).

Requests for ``/mcp`` are handed to the gateway before FastAPI's routing and exception layers
(it answers in JSON-RPC, not in Keel's REST error shape); every other path goes on as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from keel.app import App
from keel.mcp import McpGateway, McpHttpApp, refusal_recorder

__all__ = ["mount_mcp"]


class _McpDispatch:
    """ASGI middleware: ``/mcp`` (exactly; no redirect to ``/mcp/``) goes to the gateway."""

    def __init__(self, app: ASGIApp, mcp: McpHttpApp) -> None:
        self._app = app
        self._mcp = mcp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/mcp":
            await self._mcp(scope, receive, send)
            return
        await self._app(scope, receive, send)


def mount_mcp(api: FastAPI, keel: App, *, stateless: bool | None = None) -> McpHttpApp:
    """Serve the MCP gateway at ``/mcp`` for the lifetime of ``api``; upstream tool lists are
    read in the background at start. ``stateless`` overrides ``mcp.stateless_http``."""
    gateway = McpGateway.from_app(keel)
    app = McpHttpApp(keel, gateway, on_refusal=refusal_recorder(keel), stateless=stateless)
    api.add_middleware(_McpDispatch, mcp=app)
    previous = api.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(instance: Any) -> AsyncIterator[Any]:
        async with previous(instance) as state, app.lifespan():
            if gateway.connections:
                refresh = gateway.loop.submit(gateway.refresh(force=True))  # not awaited
                del refresh
            yield state

    api.router.lifespan_context = lifespan
    return app
