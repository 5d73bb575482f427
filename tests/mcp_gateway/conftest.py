"""Keel's MCP gateway served on loopback, in front of the fixture upstream (stdio and streamable
HTTP) and ``mcp-server-time``, with the official SDK client on the other side."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel import App, KeelConfig
from server._serving import serving

FIXTURE = Path(__file__).with_name("fixture_server.py")

POLICY = """
policy: mcp-gateway
version: 1
scope: {tenant: acme}
tools:
  allow: ["fixture.*", "web.*", "time.*", "local.*"]
  deny: [fixture.echo_text]
approvers: [finance]
rules:
  - id: refunds-need-approval
    tool: fixture.issue_refund
    decision: require_approval
    reason: refunds need a person's approval
  - id: no-money-after-untrusted-input
    tool: fixture.issue_refund
    when: {tainted: true}
    decision: deny
    reason: no refunds after the agent read untrusted content
"""

ALL_SCOPES = ("mcp:fixture", "mcp:web", "time:read", "local:read")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def http_fixture(state: Path) -> Iterator[str]:
    """The fixture server over streamable HTTP in a subprocess; yields its /mcp URL."""
    port = free_port()
    env = {**os.environ, "FIXTURE_STATE": str(state)}
    proc = subprocess.Popen(
        [sys.executable, str(FIXTURE), "--http", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the fixture MCP server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


def gateway_config(
    state: Path, home: Path, store_url: str, *, web_url: str | None = None, **mcp: Any
) -> KeelConfig:
    upstreams: dict[str, Any] = {
        "fixture": {
            "command": ["python", str(FIXTURE)],
            "env": {"FIXTURE_STATE": str(state)},
            "effect": "read",
            "protocol": "legacy",  # the handshake era; "web" below negotiates 2026-07-28
            "tools": {"issue_refund": {"effect": "irreversible"}},
        },
    }
    if web_url is not None:
        upstreams["web"] = {
            "url": web_url,
            "headers": {"Authorization": "Bearer {secret:env:WEB_MCP_TOKEN}"},
            "effect": "read",
        }
    if (
        shutil.which("mcp-server-time")
        or Path(sys.executable).with_name("mcp-server-time").exists()
    ):
        upstreams["time"] = {
            "command": ["mcp-server-time", "--local-timezone", "UTC"],
            "scope": "time:read",
            "effect": "read",
        }
    return KeelConfig(
        store_url=store_url,
        home=home,
        egress_allow=("127.0.0.1",),
        mcp={"upstreams": upstreams, **mcp},
    )


@dataclass
class Gate:
    """A served Keel with the MCP gateway; ``state`` is the fixture's folder."""

    keel: App
    base: str
    state: Path

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def token(self, *scopes: str, agent: str = "mcp-bot", roles: tuple[str, ...] = ()) -> str:
        return self.keel.mint_token(agent, tenant="acme", scopes=scopes or ALL_SCOPES, roles=roles)

    def upstream_calls(self) -> list[str]:
        log = self.state / "calls.log"
        return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


@contextlib.contextmanager
def gate(state: Path, home: Path, store_url: str, **options: Any) -> Iterator[Gate]:
    state.mkdir(parents=True, exist_ok=True)
    os.environ["WEB_MCP_TOKEN"] = "keel-own-upstream-credential"
    with http_fixture(state) as web_url:
        config = gateway_config(state, home, store_url, web_url=web_url, **options)
        with App(config) as keel:
            keel.add_policy(POLICY)

            @keel.tool("local.greet", scope="local:read")
            def greet(name: str) -> dict[str, str]:
                """Greet someone (a tool registered in Keel itself)."""
                return {"greeting": f"hello {name}"}

            with serving(keel) as base:
                yield Gate(keel, base, state)


@pytest.fixture
def mcp_gate(tmp_path: Path, store_url: str) -> Iterator[Gate]:
    """A gateway on a fresh store (SQLite and PostgreSQL) that re-reads upstream tool lists
    at most 0.2 s old."""
    with gate(tmp_path / "fixture", tmp_path / "home", store_url, refresh_seconds=0.2) as served:
        yield served


@pytest.fixture(scope="module")
def shared_gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    """One gateway on SQLite for the protocol tests of a module (they change no shared state
    that another test reads)."""
    root = tmp_path_factory.mktemp("mcp")
    with gate(root / "fixture", root / "home", f"sqlite:///{root}/keel.db") as served:
        yield served


@contextlib.asynccontextmanager
async def connect(
    url: str, token: str | None, *, mode: str = "auto", **headers: str
) -> AsyncIterator[Any]:
    """The official SDK client, over streamable HTTP, with an agent token. ``mode``: the
    SDK's protocol negotiation ("auto" prefers 2026-07-28, "legacy" is the initialize
    handshake most deployed clients speak)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    transport = streamable_http_client(url, http_client=http)
    async with http, Client(transport, mode=mode) as client:
        yield client
