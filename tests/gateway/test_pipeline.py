from __future__ import annotations

import asyncio
import datetime as _dt

import pytest

from keel import App
from keel.audit import query
from keel.errors import (
    ApprovalRequired,
    AuthenticationError,
    AuthorizationError,
    InternalError,
    InvalidRequestError,
    PayloadTooLargeError,
    PolicyDenied,
    ToolError,
)
from keel.gateway import CallContext, CallRequest, Guard
from keel.testing import FrozenClock, RecordingTool

from .conftest import SCOPES, Tools


def last_record(app: App):  # type: ignore[no-untyped-def]
    return query(app.store, limit=1)[0]


def test_allowed_call_executes_and_is_recorded_redacted(app: App, tools: Tools) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES, on_behalf_of="ana@example.com")
    result = agent.call("files.read", {"path": "notes.txt"})
    assert tools.files.calls == 1
    assert result.value["text"].startswith("contact ana@mail.example")  # the caller gets the data
    record = last_record(app)
    assert record.seq == result.record_seq
    assert record.entry.kind == "call"
    assert record.entry.decision == "allow"
    stored = str(record.entry.body["outcome"])
    assert "ana@mail.example" not in stored
    assert "AKIAIOSFODNN7EXAMPLE" not in stored
    assert "REDACTED" in stored
    assert record.entry.body["principal"]["on_behalf_of"] == "ana@example.com"
    assert app.verify_audit().ok


@pytest.mark.parametrize(
    ("tool", "args", "error", "rule"),
    [
        (
            "billing.refund",
            {"order_id": "A", "amount": 5000, "destination": "original_payment_method"},
            PolicyDenied,
            "constraints",
        ),
        (
            "billing.refund",
            {"order_id": "A", "amount": 50, "destination": "ACCT-EVIL"},
            PolicyDenied,
            "constraints",
        ),
        (
            "billing.refund",
            {"order_id": "A", "amount": 450, "destination": "original_payment_method"},
            ApprovalRequired,
            "require_approval_if_over",
        ),
        ("email.send", {"to": "x@evil.example"}, PolicyDenied, "deny_external_email"),
        ("admin.wipe", {}, PolicyDenied, "tools.deny"),
    ],
)
def test_policy_stops_calls_before_the_tool(
    app: App, tools: Tools, tool: str, args: dict[str, object], error: type[Exception], rule: str
) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    with pytest.raises(error) as info:
        agent.call(tool, args)
    assert tools.total_calls() == 0
    record = last_record(app)
    assert record.entry.kind == "decision"
    assert record.entry.rule_id is not None and record.entry.rule_id.startswith(rule)
    assert info.value.context["record_seq"] == record.seq  # type: ignore[attr-defined]
    assert record.entry.body["verdict"]["policy_hash"].startswith("sha256:")


def test_default_deny_for_a_tool_no_policy_allows(app: App, tools: Tools) -> None:
    extra = RecordingTool("crm.delete", scope="crm:write", effect="irreversible")
    app.register(extra)
    with pytest.raises(PolicyDenied) as info:
        app.agent("bot", tenant="acme", scopes=["crm:write"]).call("crm.delete", {})
    assert info.value.context["rule_id"] == "default-deny"
    assert extra.calls == 0


def test_other_tenant_gets_no_policy_and_is_denied(app: App, tools: Tools) -> None:
    with pytest.raises(PolicyDenied):
        app.agent("bot", tenant="globex", scopes=SCOPES).call("orders.lookup", {"id": "1"})
    assert tools.lookup.calls == 0


@pytest.mark.parametrize(
    ("tool", "args", "code"),
    [
        ("orders.nope", {}, "unknown_tool"),
        ("orders.look\u0443p", {}, "invalid_tool_name"),  # Cyrillic у
        ("orders.lookup\u200b", {}, "invalid_tool_name"),
        ("billing.refund", {"order_id": "A"}, "invalid_arguments"),
        ("billing.refund", {"order_id": "A", "amount": "ten"}, "invalid_arguments"),
        ("billing.refund", {"order_id": "A", "amount": 1, "sneaky": True}, "invalid_arguments"),
    ],
)
def test_bad_requests_are_refused_and_recorded(
    app: App, tools: Tools, tool: str, args: dict[str, object], code: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        app.agent("bot", tenant="acme", scopes=SCOPES).call(tool, args)
    assert info.value.code == code
    assert tools.total_calls() == 0
    record = last_record(app)
    assert record.entry.decision == "deny"
    assert record.entry.rule_id == f"resolve:{code}"


def test_oversized_and_deep_arguments_are_refused(app: App, tools: Tools) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    with pytest.raises(PayloadTooLargeError):
        agent.call("orders.lookup", {"blob": "x" * (1024 * 1024 + 1)})
    deep: object = {}
    for _ in range(5000):
        deep = {"d": deep}
    with pytest.raises(PayloadTooLargeError) as info:
        agent.call("orders.lookup", {"deep": deep})
    assert info.value.code == "too_deep"
    assert tools.total_calls() == 0
    assert app.verify_audit().ok


def test_forged_and_expired_tokens_are_refused_and_recorded(
    app: App, tools: Tools, clock: FrozenClock
) -> None:
    token = app.mint_token("bot", tenant="acme", scopes=SCOPES)
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    for bad in (forged, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJib3QifQ.", "garbage", token + "x"):
        with pytest.raises(AuthenticationError):
            app.call(CallRequest(tool="orders.lookup", arguments={}, token=bad))
    clock.advance(minutes=11)
    with pytest.raises(AuthenticationError) as info:
        app.call(CallRequest(tool="orders.lookup", arguments={}, token=token))
    assert info.value.code == "token_expired"
    assert tools.total_calls() == 0
    record = last_record(app)
    assert record.entry.agent is None
    assert record.entry.rule_id == "authenticate:token_expired"


def test_missing_scope_is_refused_even_when_policy_allows(app: App, tools: Tools) -> None:
    with pytest.raises(AuthorizationError) as info:
        app.agent("bot", tenant="acme", scopes=["orders:read"]).call(
            "billing.refund", {"order_id": "A", "amount": 5}
        )
    assert info.value.code == "missing_scope"
    assert tools.refund.calls == 0


def test_a_failing_guard_fails_closed(tmp_config, clock: FrozenClock) -> None:  # type: ignore[no-untyped-def]
    class Broken(Guard):
        name = "broken"

        def before(self, ctx: CallContext) -> None:
            raise RuntimeError("ledger unreachable")

    with App(tmp_config, clock=clock, extra_guards=[Broken()]) as app:
        app.add_policy("policy: p\ntools: {allow: [orders.lookup]}\n")
        tool = RecordingTool("orders.lookup", scope="orders:read")
        app.register(tool)
        with pytest.raises(InternalError) as info:
            app.agent("bot", tenant="acme", scopes=SCOPES).call("orders.lookup", {})
        assert "fail closed" in info.value.message
        assert tool.calls == 0
        assert last_record(app).entry.rule_id == "broken:internal_error"


def test_tool_failure_is_recorded_and_raised(app: App, tools: Tools) -> None:
    flaky = RecordingTool("slow.thing", scope="orders:read", fail_times=1, retryable=True)
    app.register(flaky)
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    with pytest.raises(ToolError) as info:
        agent.call("slow.thing", {})
    assert info.value.retryable
    record = last_record(app)
    assert record.entry.kind == "call"
    assert record.entry.body["error"]["code"] == "tool_error"
    assert agent.call("slow.thing", {}).value is None


def test_unexpected_tool_exception_becomes_a_tool_error(app: App, tools: Tools) -> None:
    @app.tool("orders.lookup2", scope="orders:read")
    def boom() -> None:
        raise ZeroDivisionError("oops")

    app.add_policy("policy: extra\nscope: {tenant: acme}\ntools: {allow: [orders.lookup2]}\n")
    with pytest.raises(ToolError) as info:
        app.agent("bot", tenant="acme", scopes=SCOPES).call("orders.lookup2", {})
    assert "ZeroDivisionError" in info.value.message
    assert not info.value.retryable


def test_shadow_mode_executes_nothing(app: App, tools: Tools) -> None:
    app.add_policy(
        "policy: shadow\nscope: {tenant: acme}\nshadow: true\ntools: {allow: [orders.lookup]}\n"
    )
    result = app.agent("bot", tenant="acme", scopes=SCOPES).call("orders.lookup", {"id": "1"})
    assert result.shadow
    assert result.value is None
    assert tools.lookup.calls == 0
    assert last_record(app).entry.body["shadow"] is True


def test_async_entry_point_with_async_tool(app: App, tools: Tools) -> None:
    @app.tool("orders.lookup_async", scope="orders:read")
    async def lookup(order_id: str) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"order_id": order_id}

    app.add_policy("policy: async\nscope: {tenant: acme}\ntools: {allow: [orders.lookup_async]}\n")
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    result = asyncio.run(agent.acall("orders.lookup_async", {"order_id": "A"}))
    assert result.value == {"order_id": "A"}
    sync_tool_result = asyncio.run(agent.acall("orders.lookup", {"id": "1"}))
    assert sync_tool_result.value == {"status": "shipped"}


def test_token_renewal_keeps_an_agent_working(app: App, tools: Tools, clock: FrozenClock) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    agent.call("orders.lookup", {})
    clock.advance(minutes=30)
    agent.call("orders.lookup", {})
    assert tools.lookup.calls == 2


def test_tainted_calls_are_marked_in_the_record(app: App, tools: Tools) -> None:
    app.agent("bot", tenant="acme", scopes=SCOPES).call("orders.lookup", {}, tainted=True)
    assert last_record(app).entry.body["tainted"] is True


def test_records_survive_clock_jumping_backwards(
    app: App, tools: Tools, clock: FrozenClock
) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    agent.call("orders.lookup", {})
    clock.set(clock.now() - _dt.timedelta(minutes=3))
    agent.call("orders.lookup", {})
    assert app.verify_audit().ok
