"""``keel mcp`` over stdio: the SDK client launches it like Claude Desktop would; raw lines get
the same checks as HTTP bodies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import yaml

from .conftest import FIXTURE, POLICY


def _setup(tmp_path: Path) -> Path:
    state = tmp_path / "fixture"
    state.mkdir()
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    config = {
        "store_url": f"sqlite:///{tmp_path / 'keel.db'}",
        "home": str(tmp_path / "home"),
        "policy_paths": [str(tmp_path / "policy.yaml")],
        "mcp": {
            "upstreams": {
                "fixture": {
                    "command": [sys.executable, str(FIXTURE)],
                    "env": {"FIXTURE_STATE": str(state)},
                    "effect": "read",
                }
            }
        },
    }
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _keel() -> str:
    return shutil.which("keel") or str(Path(sys.executable).with_name("keel"))


def test_an_sdk_client_uses_keel_mcp_over_stdio(tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters

    config = _setup(tmp_path)
    params = StdioServerParameters(
        command=_keel(),
        args=[
            "mcp",
            "--agent",
            "desk",
            "--tenant",
            "acme",
            "--scope",
            "mcp:fixture",
            "--config",
            str(config),
        ],
        cwd=str(tmp_path),
    )

    async def go() -> tuple[list[str], Any, Any]:
        async with Client(params) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            ok = await client.call_tool("fixture.lookup_order", {"order_id": "S-1"})
            denied = await client.call_tool("fixture.echo_text", {"text": "x"})
            return names, ok, denied

    names, ok, denied = anyio.run(go)
    assert "fixture.lookup_order" in names and "fixture.echo_text" not in names
    assert ok.structured_content["order_id"] == "S-1"
    assert denied.is_error and (denied.meta or {})["keel.dev/error"] == "policy_denied"


def test_raw_stdio_lines_are_checked_before_the_sdk(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    lines = [
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/li',
        '[{"jsonrpc": "2.0", "id": 2, "method": "ping"}]',
        '{"jsonrpc": "2.0", "id": 3, "method": "ping", "id": 4}',
        '{"jsonrpc": "2.0", "id": 5, "method": "tools/destroy"}',
        '{"jsonrpc": "2.0", "id": 6, "method": "ping", "params": ' + "[" * 3000 + "]" * 3000 + "}",
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"},
                },
            }
        ),
    ]
    proc = subprocess.run(
        [_keel(), "mcp", "--agent", "desk", "--tenant", "acme", "--config", str(config)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    answers = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    codes = {a.get("id"): a.get("error", {}).get("code") for a in answers}
    assert codes[None] in (-32700, -32600)
    assert [a["error"]["code"] for a in answers if a.get("id") is None] == [
        -32700,
        -32600,
        -32600,
        -32600,
    ]
    assert codes[5] == -32601
    assert any(a.get("id") == 7 and "result" in a for a in answers), proc.stderr[-2000:]


def test_keel_mcp_refuses_a_bad_token_before_speaking(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    proc = subprocess.run(
        [_keel(), "mcp", "--token", "not-a-token", "--config", str(config)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 3 and proc.stdout == ""
    assert "token" in proc.stderr.lower()


def test_keel_mcp_tools_review_approves_a_quarantined_tool(tmp_path: Path) -> None:
    config = _setup(tmp_path)

    def keel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_keel(), "mcp", "tools", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            input="",
        )

    listed = keel("list", "--refresh")
    assert listed.returncode == 0, listed.stderr
    pins = {row["tool"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert pins["lookup_order"]["status"] == "approved" and pins["lookup_order"]["usable"]
    helper = pins["helper"]
    assert helper["status"] == "pending" and not helper["usable"]
    assert any("<IMPORTANT>" in f for f in helper["findings"])
    stale = keel("review", "--approve", "fixture.helper", "--digest", "sha256:" + "0" * 64)
    assert stale.returncode == 2 and "changed since it was reviewed" in stale.stderr
    approved = keel(
        "review",
        "--approve",
        "fixture.helper",
        "--digest",
        helper["offered_digest"],
        "--actor",
        "sec-lead",
    )
    assert approved.returncode == 0, approved.stderr
    row = json.loads(approved.stdout)
    assert row["status"] == "approved" and row["decided_by"] == "sec-lead" and row["usable"]
    missing = keel("review", "--reject", "fixture.nope")
    assert missing.returncode == 2 and "no upstream tool" in missing.stderr
