"""ATTACKS.md #1–#11 against /mcp with raw HTTP: every malformed or hostile message gets the
proper JSON-RPC error, nothing is forwarded, and the session stays usable."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from keel.audit import query

from .conftest import Gate

ACCEPT = "application/json, text/event-stream"
VERSION = "2025-11-25"


def post(gate: Gate, body: bytes | str, *, token: str | None = None, **headers: str) -> Any:
    base = {
        "Authorization": f"Bearer {token or gate.token()}",
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "MCP-Protocol-Version": VERSION,
    }
    base.update(headers)
    content = body.encode() if isinstance(body, str) else body
    return httpx.post(gate.url, content=content, headers=base, timeout=30)


def rpc(method: str, params: dict[str, Any] | None = None, rid: Any = 1) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message)


def initialize(gate: Gate, token: str | None = None) -> str:
    """Open a session (handshake era); its id."""
    response = post(
        gate,
        rpc(
            "initialize",
            {
                "protocolVersion": VERSION,
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        ),
        token=token,
    )
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    done = post(
        gate,
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        token=token,
        **{"Mcp-Session-Id": session},
    )
    assert done.status_code == 202, done.text
    return session


def answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message in a JSON or SSE response."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                message: dict[str, Any] = json.loads(line[5:])
                if "id" in message:
                    return message
        raise AssertionError(f"no answer in {response.text!r}")
    parsed: dict[str, Any] = response.json()
    return parsed


def test_a_session_works_over_raw_http(shared_gate: Gate) -> None:
    session = initialize(shared_gate)
    listed = answer(post(shared_gate, rpc("tools/list", {}, 2), **{"Mcp-Session-Id": session}))
    assert any(t["name"] == "fixture.lookup_order" for t in listed["result"]["tools"])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"jsonrpc": "2.0", "id": 1, "method": "tools/li', -32700),  # 1: truncated
        (b"\xff\xfe{}", -32700),  # not UTF-8
        ("[]", -32600),  # 2: not a request
        ('"x"', -32600),
        ('{"jsonrpc": "1.0", "id": 1, "method": "ping"}', -32600),
        ('{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', -32600),
        ('{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', -32600),
        ('{"jsonrpc": "2.0", "id": true, "method": "ping"}', -32600),
        # 7: duplicate keys — the policy would see one name, a lenient upstream the other
        (
            '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": '
            '{"name": "fixture.lookup_order", "name": "fixture.issue_refund", "arguments": {}}}',
            -32600,
        ),
        # 9: batches (removed in MCP 2025-06-18)
        ('[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', -32600),
    ],
)
def test_malformed_messages_get_jsonrpc_errors_and_the_session_stays_usable(
    shared_gate: Gate, body: str | bytes, code: int
) -> None:
    session = initialize(shared_gate)
    before = len(shared_gate.upstream_calls())
    response = post(shared_gate, body, **{"Mcp-Session-Id": session})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["jsonrpc"] == "2.0" and error["error"]["code"] == code
    assert error["id"] is None or isinstance(error["id"], int)
    assert len(shared_gate.upstream_calls()) == before
    ping = answer(post(shared_gate, rpc("ping", {}, 7), **{"Mcp-Session-Id": session}))
    assert ping == {"jsonrpc": "2.0", "id": 7, "result": {}}


@pytest.mark.parametrize("method", ["tools/destroy", "x-vendor/exec", "sampling/createMessage"])
def test_unknown_methods_are_32601_from_the_gateway(shared_gate: Gate, method: str) -> None:
    session = initialize(shared_gate)
    response = post(shared_gate, rpc(method, {}, 9), **{"Mcp-Session-Id": session})
    message = answer(response)
    assert message["id"] == 9 and message["error"]["code"] == -32601


def test_oversized_and_deep_messages_are_refused_and_the_process_lives(shared_gate: Gate) -> None:
    session = initialize(shared_gate)
    limit = shared_gate.keel.config.max_payload_bytes
    big = rpc("tools/call", {"name": "fixture.echo_text", "arguments": {"text": "x" * limit}})
    response = post(shared_gate, big, **{"Mcp-Session-Id": session})
    assert response.status_code == 413 and response.json()["error"]["code"] == -32600
    deep = '{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"a": ' + "[" * 5000
    deep += "]" * 5000 + "}}"
    response = post(shared_gate, deep, **{"Mcp-Session-Id": session})
    assert response.status_code == 400 and response.json()["error"]["code"] == -32600
    assert "deeper" in response.json()["error"]["message"]
    huge = rpc("tools/list", {"cursor": "c", "pad": list(range(300_000))})
    response = post(shared_gate, huge, **{"Mcp-Session-Id": session})
    assert response.status_code == 413
    ping = answer(post(shared_gate, rpc("ping", {}, 3), **{"Mcp-Session-Id": session}))
    assert ping["result"] == {}


def test_sessions_are_bound_to_the_principal_and_never_authenticate(shared_gate: Gate) -> None:
    mine = initialize(shared_gate, shared_gate.token(agent="alice"))
    # 10: a forged id, and someone else's id, are both unknown here
    forged = post(shared_gate, rpc("tools/list", {}), **{"Mcp-Session-Id": "f" * 32})
    assert forged.status_code == 404
    foreign = post(
        shared_gate,
        rpc("tools/list", {}),
        token=shared_gate.token(agent="mallory"),
        **{"Mcp-Session-Id": mine},
    )
    assert foreign.status_code == 404
    # the session id alone is not a credential
    bare = httpx.post(
        shared_gate.url,
        content=rpc("tools/list", {}),
        headers={"Mcp-Session-Id": mine, "Accept": ACCEPT, "Content-Type": "application/json"},
    )
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"].startswith("Bearer")
    # the owner, with a fresh token, still has it
    again = post(
        shared_gate,
        rpc("ping", {}, 4),
        token=shared_gate.token(agent="alice"),
        **{"Mcp-Session-Id": mine},
    )
    assert answer(again)["result"] == {}


def test_a_forged_token_is_401_and_recorded(shared_gate: Gate) -> None:
    response = post(shared_gate, rpc("tools/list", {}), token="eyJhbGciOiJFZERTQSJ9.e30.c2ln")
    assert response.status_code == 401 and response.json()["error"]["code"] == -32600
    refusals = query(shared_gate.keel.store, kind="decision", decision="deny")
    assert any(r.entry.body.get("route") == "/mcp" for r in refusals)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Host", "attacker.example"),
        ("Host", "127.0.0.1.nip.io:8000"),
        ("Origin", "https://attacker.example"),
        ("Origin", "http://localhost.attacker.example"),
        ("Origin", "null"),
    ],
)
def test_dns_rebinding_host_and_origin_are_refused(
    shared_gate: Gate, header: str, value: str
) -> None:
    response = post(shared_gate, rpc("ping", {}), **{header: value})
    assert response.status_code == 403, response.text


def test_loopback_origins_are_allowed(shared_gate: Gate) -> None:
    response = post(
        shared_gate,
        rpc(
            "initialize",
            {
                "protocolVersion": VERSION,
                "capabilities": {},
                "clientInfo": {"name": "r", "version": "1"},
            },
        ),
        Origin="http://localhost:6274",
    )
    assert response.status_code == 200


def test_unknown_notifications_are_dropped_not_forwarded(shared_gate: Gate) -> None:
    session = initialize(shared_gate)
    response = post(
        shared_gate,
        json.dumps({"jsonrpc": "2.0", "method": "notifications/x-vendor/run", "params": {}}),
        **{"Mcp-Session-Id": session},
    )
    assert response.status_code == 202


def test_lookalike_argument_names_are_refused_even_where_the_schema_is_open(
    shared_gate: Gate,
) -> None:
    """ATTACKS.md #29 for argument names: ``order_іd`` (Cyrillic і), a zero-width joiner or a
    full-width letter never reaches a schema or a policy rule as if it were another name."""
    session = initialize(shared_gate)
    for name in ("order_\u0456d", "order\u200d_id", "ｏrder_id"):
        message = rpc(
            "tools/call", {"name": "fixture.lookup_order", "arguments": {name: "A-1"}}, 11
        )
        response = post(shared_gate, message, **{"Mcp-Session-Id": session})
        error = answer(response)["error"]
        assert error["code"] == -32602 and "argument name" in error["message"], name


def test_a_slow_drip_body_times_out(tmp_path: Any) -> None:
    """ATTACKS.md #5: a body dribbled in forever is cut off (408), without holding memory."""
    import socket

    from .conftest import gate

    with gate(
        tmp_path / "fixture",
        tmp_path / "home",
        f"sqlite:///{tmp_path}/k.db",
        body_timeout_seconds=1.0,
    ) as served:
        host, port = served.base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = (
                f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {served.token()}"
                "\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream"
                "\r\nContent-Length: 100000\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"jsonrpc": "2.0",')
            reply = sock.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 408"), reply


@pytest.mark.parametrize("version", ["1999-01-01", "2025-13-45", "latest"])
def test_unsupported_protocol_versions_are_refused(shared_gate: Gate, version: str) -> None:
    before = len(shared_gate.upstream_calls())
    call = rpc("tools/call", {"name": "fixture.lookup_order", "arguments": {"order_id": "V-1"}})
    response = post(shared_gate, call, **{"MCP-Protocol-Version": version})
    assert response.status_code == 400, response.text
    assert len(shared_gate.upstream_calls()) == before
