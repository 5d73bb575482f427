from __future__ import annotations

import asyncio
from decimal import Decimal

import pydantic
import pytest

from keel.errors import InvalidRequestError, ToolResultInvalid, ToolTimeout, UsageError
from keel.tools import FunctionTool, ToolContext, ToolRegistry, check_tool_name

CTX = ToolContext(call_id="c1", tool="t", tenant="acme", agent_id="a")


@pytest.mark.parametrize("name", ["billing.refund", "get_time", "crm.contacts.update", "a1.b-2"])
def test_canonical_names_pass(name: str) -> None:
    assert check_tool_name(name) == name


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("g\u0435t_current_time", "CYRILLIC SMALL LETTER IE"),  # Cyrillic е
        ("read\u200bfile", "ZERO WIDTH SPACE"),
        ("\uff52ead", "looks like 'r'"),  # full-width r
        ("Billing.Refund", "not canonical"),
        ("billing..refund", "not canonical"),
        ("../etc/passwd", "not canonical"),
        ("", "empty"),
        ("a" * 200, "at most 128"),
    ],
)
def test_lookalike_and_non_canonical_names_are_refused(name: str, needle: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_tool_name(name)
    assert needle in info.value.message


def test_signature_becomes_a_strict_schema() -> None:
    def refund(order_id: str, amount: Decimal, ctx: ToolContext, note: str = "") -> dict[str, str]:
        return {"order": order_id, "amount": str(amount), "key": str(ctx.idempotency_key)}

    tool = FunctionTool(refund, name="billing.refund", scope="billing:write", effect="irreversible")
    schema = tool.spec.arguments.json_schema
    assert set(schema["required"]) == {"order_id", "amount"}
    assert schema["additionalProperties"] is False
    args = tool.spec.arguments.validate("billing.refund", {"order_id": "A", "amount": "1.50"})
    assert args == {"order_id": "A", "amount": Decimal("1.50"), "note": ""}
    assert tool.invoke(args, CTX)["amount"] == "1.50"
    with pytest.raises(InvalidRequestError) as info:
        tool.spec.arguments.validate("billing.refund", {"order_id": "A", "amount": 1, "x": 1})
    assert "x" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        tool.spec.arguments.validate("billing.refund", {"amount": "lots"})
    assert "order_id" in info.value.message


class Args(pydantic.BaseModel):
    q: str


def test_pydantic_model_argument_forbids_extra_fields_even_if_model_allows() -> None:
    def search(args: Args) -> list[str]:
        return [args.q]

    tool = FunctionTool(search, name="kb.search", scope="kb:read")
    with pytest.raises(InvalidRequestError):
        tool.spec.arguments.validate("kb.search", {"q": "x", "extra": 1})
    args = tool.spec.arguments.validate("kb.search", {"q": "x"})
    assert tool.invoke(args, CTX) == ["x"]


def test_json_schema_tools_default_to_no_extra_properties() -> None:
    tool = FunctionTool(
        lambda city: {"city": city},
        name="weather.get",
        scope="weather:read",
        arguments_schema={"properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    with pytest.raises(InvalidRequestError):
        tool.spec.arguments.validate("weather.get", {"city": "x", "evil": True})
    with pytest.raises(InvalidRequestError):
        tool.spec.arguments.validate("weather.get", {"city": 3})


def test_result_contract_is_enforced() -> None:
    def bad() -> int:
        return "not a number"  # type: ignore[return-value]

    tool = FunctionTool(bad, name="x.bad", scope="x:read")
    with pytest.raises(ToolResultInvalid):
        tool.spec.normalize_result(tool.invoke({}, CTX))


def test_async_tool_timeout() -> None:
    async def slow() -> None:
        await asyncio.sleep(10)

    tool = FunctionTool(slow, name="x.slow", scope="x:read", timeout=0.01)
    with pytest.raises(ToolTimeout):
        asyncio.run(tool.ainvoke({}, CTX))


def test_contract_misuse_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        FunctionTool(lambda: None, name="x.y", scope="", effect="read")
    with pytest.raises(UsageError):
        FunctionTool(lambda: None, name="x.y", scope="x:y", effect="destroy")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        FunctionTool(lambda: None, name="X", scope="x:y")


def test_registry_refuses_duplicates_and_unknown_names() -> None:
    registry = ToolRegistry()
    registry.register(FunctionTool(lambda: 1, name="a.b", scope="a:read"))
    with pytest.raises(UsageError):
        registry.register(FunctionTool(lambda: 2, name="a.b", scope="a:read"))
    with pytest.raises(InvalidRequestError) as info:
        registry.get("a.c")
    assert info.value.code == "unknown_tool"
    with pytest.raises(InvalidRequestError) as info:
        registry.get("\u0430.b")  # Cyrillic а
    assert info.value.code == "invalid_tool_name"
