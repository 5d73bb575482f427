"""Keel in front of the reference MCP servers from npm (``server-filesystem``,
``server-everything``). ``.ci/run`` installs them into ``.ci/node``; elsewhere these tests skip
unless ``KEEL_MCP_NODE_BIN`` (or PATH) has them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from keel import App, KeelConfig

from .conftest import Gate, connect

ROOT = Path(__file__).resolve().parents[2]


def _bin(name: str) -> str | None:
    folders = [os.environ.get("KEEL_MCP_NODE_BIN"), str(ROOT / ".ci/node/node_modules/.bin")]
    for folder in folders:
        if folder and (Path(folder) / name).exists():
            return str(Path(folder) / name)
    return shutil.which(name)


FILESYSTEM = _bin("mcp-server-filesystem")
EVERYTHING = _bin("mcp-server-everything")
pytestmark = pytest.mark.skipif(
    FILESYSTEM is None or EVERYTHING is None or shutil.which("node") is None,
    reason="the npm MCP reference servers are not installed (.ci/run installs them into "
    ".ci/node: npm install --prefix .ci/node @modelcontextprotocol/server-filesystem "
    "@modelcontextprotocol/server-everything)",
)

POLICY = """
policy: npm-servers
version: 1
scope: {tenant: acme}
tools:
  allow: ["files.*", "every.*"]
  deny: [every.get-env]
"""


@pytest.fixture
def npm_gate(tmp_path: Path, store_url: str) -> Iterator[tuple[Gate, Path]]:
    from server._serving import serving

    share = tmp_path / "share"
    share.mkdir()
    (share / "notes.txt").write_text("quarterly numbers", encoding="utf-8")
    (tmp_path / "outside.txt").write_text("private", encoding="utf-8")
    (share / "escape").symlink_to(tmp_path / "outside.txt")
    config = KeelConfig(
        store_url=store_url,
        home=tmp_path / "home",
        mcp={
            "upstreams": {
                "files": {
                    "command": [FILESYSTEM, str(share)],
                    "effect": "read",
                    "path_roots": [str(share)],
                    "tools": {"write_file": {"effect": "irreversible"}},
                },
                "every": {"command": [EVERYTHING], "effect": "read"},
            }
        },
    )
    with App(config) as keel:
        keel.add_policy(POLICY)
        with serving(keel) as base:
            yield Gate(keel, base, tmp_path), share


def _token(gate: Gate) -> str:
    return gate.keel.mint_token("npm-bot", tenant="acme", scopes=["mcp:files", "mcp:every"])


def test_server_filesystem_behind_keel(npm_gate: tuple[Gate, Path]) -> None:
    gate, share = npm_gate

    async def go() -> tuple[list[str], Any, list[Any]]:
        async with connect(gate.url, _token(gate)) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            read = await client.call_tool(
                "files.read_text_file", {"path": str(share / "notes.txt")}
            )
            refused = [
                await client.call_tool("files.read_text_file", {"path": path})
                for path in (
                    str(share / ".." / "outside.txt"),
                    str(share / "escape"),  # a symlink pointing outside the share
                    "/etc/passwd",
                    str(share) + "/%2e%2e/outside.txt",
                )
            ]
            return names, read, refused

    names, read, refused = anyio.run(go)
    assert "files.read_text_file" in names and "files.list_directory" in names
    assert not read.is_error and "quarterly numbers" in read.content[0].text
    for result in refused:
        assert result.is_error and (result.meta or {})["keel.dev/error"] == "path_refused"


def test_server_everything_behind_keel(npm_gate: tuple[Gate, Path]) -> None:
    gate, _share = npm_gate

    async def go() -> tuple[list[str], Any, Any]:
        async with connect(gate.url, _token(gate)) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            echo = await client.call_tool("every.echo", {"message": "through keel"})
            summed = await client.call_tool("every.get-sum", {"a": 2, "b": 3})
            return names, echo, summed

    names, echo, summed = anyio.run(go)
    assert "every.echo" in names and "every.get-env" not in names  # denied: not listed
    assert not echo.is_error and "through keel" in echo.content[0].text
    assert not summed.is_error and "5" in summed.content[0].text
