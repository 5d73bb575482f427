"""HTTP tools against a real server on 127.0.0.1: mapping, credentials, failures, traversal."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.errors import (
    ConfigError,
    EgressDenied,
    InvalidRequestError,
    ToolError,
    ToolResultInvalid,
    ToolTimeout,
    UsageError,
)
from keel.net import EgressPolicy
from keel.secrets import SecretStore
from keel.tools import HttpEndpoint, HttpTool

from ._helpers import SECRET, context, make_tool
from ._server import Loopback, Reply, gzip_reply, json_reply, self_signed

ARGS_SCHEMA = {
    "type": "object",
    "properties": {
        "contact_id": {"type": "string"},
        "fields": {"type": "string"},
        "limit": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "verbose": {"type": "boolean"},
    },
    "required": ["contact_id"],
}


def contact_spec(server: Loopback, **extra: Any) -> dict[str, Any]:
    return {
        "description": "Look up a CRM contact by id.",
        "method": "GET",
        "url": server.url("/api/v2/contacts/{contact_id}"),
        "scope": "crm:read",
        "arguments": ARGS_SCHEMA,
        "query": {"fields": "fields", "limit": "limit", "tag": "tags", "verbose": "verbose"},
        "headers": {"Authorization": "Bearer {secret:crm_token}", "X-Client": "keel-tests"},
        **extra,
    }


def call(tool: HttpTool, arguments: dict[str, Any], key: str | None = None) -> Any:
    validated = tool.spec.arguments.validate(tool.spec.name, arguments)
    return asyncio.run(tool.ainvoke(validated, context(key)))


def test_get_maps_path_query_headers_and_response(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    server.routes["/api/v2/contacts/c-42"] = lambda seen: json_reply(
        {"data": {"contact": {"id": "c-42", "full_name": "Ana Lima", "email": "ana@example.com"}}}
    )
    tool = make_tool(
        contact_spec(
            server,
            response={
                "select": "data.contact",
                "fields": {"id": "id", "name": "full_name", "email": "email", "phone": "phone"},
            },
        ),
        secrets,
        egress,
    )
    result = call(
        tool,
        {"contact_id": "c-42", "fields": "name,email", "limit": 5, "tags": ["a b", "c&d"]},
    )
    assert result == {"id": "c-42", "name": "Ana Lima", "email": "ana@example.com", "phone": None}
    [seen] = server.requests
    assert seen.method == "GET"
    assert seen.path == "/api/v2/contacts/c-42"
    assert seen.query == "fields=name%2Cemail&limit=5&tag=a%20b&tag=c%26d"
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    assert seen.headers["x-client"] == "keel-tests"
    assert seen.headers["accept"] == "application/json"
    assert "idempotency-key" not in seen.headers
    assert seen.body == b""


def test_post_sends_mapped_json_and_the_idempotency_key(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    spec = {
        "method": "POST",
        "url": server.url("/v1/refunds"),
        "scope": "billing:write",
        "effect": "irreversible",
        "idempotent": True,
        "arguments": {
            "type": "object",
            "properties": {"order": {"type": "string"}, "cents": {"type": "integer"}},
            "required": ["order", "cents"],
        },
        "body": {"order_id": "order", "amount_cents": "cents"},
        "headers": {"X-Api-Key": "{secret:env:CRM_ENV_TOKEN}"},
        "cost_usd": "0.01",
    }
    tool = make_tool(spec, secrets, egress)
    echoed = call(tool, {"order": "o-1", "cents": 250}, key="idem-123")
    assert echoed["method"] == "POST"
    assert json.loads(echoed["body"]) == {"order_id": "o-1", "amount_cents": 250}
    [seen] = server.requests
    assert seen.headers["idempotency-key"] == "idem-123"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-api-key"] == "env-token"
    assert str(tool.spec.cost_usd) == "0.01" and tool.spec.idempotent
    call(tool, {"order": "o-2", "cents": 1})  # no key on the call: no header
    assert "idempotency-key" not in server.requests[1].headers


def test_a_whole_argument_body(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    spec = {
        "method": "PUT",
        "url": server.url("/v1/notes/{note_id}"),
        "scope": "notes:write",
        "effect": "reversible",
        "arguments": {
            "type": "object",
            "properties": {"note_id": {"type": "integer"}, "text": {"type": "string"}},
            "required": ["note_id"],
        },
        "body": "arguments",
    }
    echoed = call(make_tool(spec, secrets, egress), {"note_id": 7, "text": "hi"})
    assert echoed["path"] == "/v1/notes/7"
    assert json.loads(echoed["body"]) == {"note_id": 7, "text": "hi"}


def test_the_secret_never_leaves_through_spec_repr_or_results(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    tool = make_tool(contact_spec(server), secrets, egress)
    for text in (
        repr(tool),
        json.dumps(tool.spec.describe()),
        repr(tool.spec),
        repr(tool.endpoint),
    ):
        assert SECRET not in text
    echoed = call(tool, {"contact_id": "x"})  # the server echoes the Authorization header
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert echoed["headers"]["authorization"] == "Bearer ***"
    assert SECRET not in json.dumps(echoed)


def test_a_4xx_is_not_retryable_and_its_excerpt_is_scrubbed(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    server.routes["/api/v2/contacts/gone"] = lambda seen: Reply(
        404, f"no contact; you sent {seen.headers['authorization']}".encode()
    )
    tool = make_tool(contact_spec(server), secrets, egress)
    with pytest.raises(ToolError) as info:
        call(tool, {"contact_id": "gone"})
    error = info.value
    assert error.retryable is False
    assert error.code == "upstream_client_error"
    assert error.context["status"] == 404 and error.context["tool"] == "crm.test"
    assert "404" in error.message and "Bearer ***" in error.message
    assert SECRET not in error.message and SECRET not in str(error.to_dict())


def test_a_5xx_is_retryable(server: Loopback, secrets: SecretStore, egress: EgressPolicy) -> None:
    server.routes["/api/v2/contacts/boom"] = lambda seen: Reply(503, b"try later")
    with pytest.raises(ToolError) as info:
        call(make_tool(contact_spec(server), secrets, egress), {"contact_id": "boom"})
    assert info.value.retryable is True
    assert info.value.code == "upstream_server_error"
    assert "try later" in info.value.message


def test_a_server_that_does_not_answer_times_out(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    server.routes["/api/v2/contacts/slow"] = lambda seen: Reply(hang=True)
    tool = make_tool(contact_spec(server, timeout_seconds=0.3), secrets, egress)
    with pytest.raises(ToolTimeout) as info:
        call(tool, {"contact_id": "slow"})
    assert info.value.retryable is True
    assert SECRET not in info.value.message


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_answer_is_refused(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy, chunked: bool
) -> None:
    body = json.dumps({"blob": "x" * 50_000}).encode()
    server.routes["/api/v2/contacts/big"] = lambda seen: Reply(
        200, body, {"Content-Type": "application/json"}, chunked=chunked
    )
    tool = make_tool(contact_spec(server, max_response_bytes=4096), secrets, egress)
    with pytest.raises(ToolError) as info:
        call(tool, {"contact_id": "big"})
    assert info.value.code == "response_too_large"
    assert info.value.retryable is False


def test_a_compression_bomb_is_refused(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    server.routes["/api/v2/contacts/bomb"] = lambda seen: gzip_reply(b"\0" * 20_000_000)
    tool = make_tool(contact_spec(server, max_response_bytes=65536), secrets, egress)
    with pytest.raises(ToolError) as info:
        call(tool, {"contact_id": "bomb"})
    assert info.value.code == "response_too_large"


def test_text_answers_become_status_and_text(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    server.routes["/api/v2/contacts/html"] = lambda seen: Reply(
        200, b"<p>hello</p>" * 3000, {"Content-Type": "text/html; charset=utf-8"}
    )
    server.routes["/api/v2/contacts/empty"] = lambda seen: Reply(204)
    tool = make_tool(contact_spec(server), secrets, egress)
    result = call(tool, {"contact_id": "html"})
    assert result["status"] == 200 and result["truncated"] is True
    assert result["text"].startswith("<p>hello</p>") and len(result["text"]) == 16 * 1024
    assert call(tool, {"contact_id": "empty"}) == {"status": 204, "text": ""}


def test_a_missing_selection_or_bad_json_is_an_invalid_result(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    server.routes["/api/v2/contacts/other"] = lambda seen: json_reply({"data": {}})
    server.routes["/api/v2/contacts/dup"] = lambda seen: Reply(
        200, b'{"data": 1, "data": 2}', {"Content-Type": "application/json"}
    )
    tool = make_tool(contact_spec(server, response={"select": "data.contact"}), secrets, egress)
    with pytest.raises(ToolResultInvalid, match=r"no data\.contact"):
        call(tool, {"contact_id": "other"})
    with pytest.raises(ToolResultInvalid, match="duplicate"):
        call(tool, {"contact_id": "dup"})


def test_loopback_is_refused_unless_allowed(server: Loopback, secrets: SecretStore) -> None:
    with pytest.raises(ConfigError) as loading:  # a literal address is checked at load
        make_tool(contact_spec(server), secrets, EgressPolicy())
    assert "loopback" in loading.value.message
    assert loading.value.context["key"] == "http_tools.crm.test.url"
    spec = contact_spec(server)
    spec["url"] = f"http://localhost:{server.port}/api/v2/contacts/{{contact_id}}"
    tool = make_tool(spec, secrets, EgressPolicy())  # a name: checked at call time
    with pytest.raises(EgressDenied) as info:
        call(tool, {"contact_id": "x"})
    assert "loopback" in info.value.message and info.value.context["tool"] == "crm.test"
    assert server.requests == []


def test_a_missing_secret_stops_the_call_before_sending(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    spec = contact_spec(server)
    spec["headers"] = {"Authorization": "Bearer {secret:not_set_yet}"}
    tool = make_tool(spec, secrets, egress)  # loads: secrets are read at call time
    with pytest.raises(ToolError) as info:
        call(tool, {"contact_id": "x"})
    assert info.value.code == "secret_not_found"
    assert "store:not_set_yet" in info.value.message
    assert server.requests == []


def test_a_secret_with_a_line_break_cannot_inject_headers(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    secrets.put("evil", "abc\r\nX-Injected: 1", actor="test")
    spec = contact_spec(server)
    spec["headers"] = {"Authorization": "Bearer {secret:evil}"}
    with pytest.raises(ToolError) as info:
        call(make_tool(spec, secrets, egress), {"contact_id": "x"})
    assert info.value.code == "secret_invalid"
    assert "X-Injected" not in info.value.message
    assert server.requests == []


TRAVERSALS = [
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2f",
    "%2e%2e",
    "/etc/passwd",
    "a/../../b",
    "x\x00y",
    "\\\\?\\C:\\Windows",
    "..\\..\\boot.ini",
    "?admin=1#frag",
    "ünïcødé",
    "...",
]


@pytest.mark.parametrize("value", TRAVERSALS)
def test_path_values_are_one_encoded_segment(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy, value: str
) -> None:
    echoed = call(make_tool(contact_spec(server), secrets, egress), {"contact_id": value})
    [seen] = server.requests
    prefix = "/api/v2/contacts/"
    assert seen.path == echoed["path"] and seen.path.startswith(prefix)
    segment = seen.path[len(prefix) :]
    assert "/" not in segment and "?" not in segment and "#" not in segment
    assert seen.query == ""
    assert unquote(segment) == value


@pytest.mark.parametrize("value", ["..", ".", ""])
def test_dot_segments_are_refused_before_sending(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy, value: str
) -> None:
    tool = make_tool(contact_spec(server), secrets, egress)
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(tool.ainvoke({"contact_id": value}, context()))
    assert info.value.context["argument"] == "contact_id"
    assert server.requests == []


_TOOLS: dict[int, HttpTool] = {}


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(min_size=0, max_size=40))
def test_any_argument_stays_one_segment_under_the_prefix(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy, value: str
) -> None:
    if server.port not in _TOOLS:  # loading checks a JSON schema: once per test, not per example
        _TOOLS[server.port] = make_tool(contact_spec(server), secrets, egress)
    tool = _TOOLS[server.port]
    before = len(server.requests)
    try:
        call(tool, {"contact_id": value})
    except InvalidRequestError:  # ".", "..", "" or text that is not Unicode: never sent
        assert len(server.requests) == before
        assert value in ("", ".", "..") or not _is_utf8(value)
        return
    seen = server.requests[-1]
    prefix = "/api/v2/contacts/"
    assert seen.path.startswith(prefix)
    segment = seen.path[len(prefix) :]
    assert "/" not in segment and seen.query == ""
    assert unquote(segment) == value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_the_sync_api_runs_the_call(
    server: Loopback, secrets: SecretStore, egress: EgressPolicy
) -> None:
    tool = make_tool(contact_spec(server), secrets, egress)
    assert tool.is_async
    assert tool.invoke({"contact_id": "sync"}, context())["path"] == "/api/v2/contacts/sync"

    async def inside_a_loop() -> None:
        with pytest.raises(UsageError, match="async API"):
            tool.invoke({"contact_id": "x"}, context())

    asyncio.run(inside_a_loop())


def test_an_https_endpoint_by_name(secrets: SecretStore, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "crm.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    policy = EgressPolicy(["crm.test"], resolver=lambda host, port: ["127.0.0.1"])
    with Loopback(tls=server_tls) as server:
        spec = contact_spec(server)
        spec["url"] = f"https://crm.test:{server.port}/api/v2/contacts/{{contact_id}}"
        endpoint = HttpEndpoint.parse("crm.test", spec, egress=policy)
        tool = HttpTool(
            endpoint,
            secrets=secrets,
            egress=policy,
            tls=ssl.create_default_context(cafile=str(cert)),
        )
        echoed = call(tool, {"contact_id": "c-9"})
        assert echoed["path"] == "/api/v2/contacts/c-9"
        assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
        assert server.requests[0].headers["host"] == f"crm.test:{server.port}"
