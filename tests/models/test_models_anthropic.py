"""AnthropicProvider against the Anthropic stand-in, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import pytest

from keel.errors import (
    InvalidRequestError,
    ModelError,
    ModelResponseInvalid,
    ModelTimeout,
    RateLimited,
)
from keel.models import (
    AnthropicProvider,
    Message,
    ModelRequest,
    RetryPolicy,
    StreamChunk,
    ToolCall,
    ToolDef,
)
from keel.testing._standins import AnthropicStandIn, StandInFault, StandInReply

from .conftest import FAST, SleepLog, request, run

LOOKUP = ToolDef(
    "orders.lookup",
    "Look an order up",
    {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
)
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}},
    "required": ["label"],
}


def provider(server: AnthropicStandIn, **kwargs: Any) -> AnthropicProvider:
    kwargs.setdefault("retry", FAST)
    return AnthropicProvider(server.base_url, "ak-upstream", **kwargs)


def claude(text: str = "hello", **kwargs: Any) -> ModelRequest:
    return request(text, model="claude-3-5-haiku-latest", **kwargs)


async def complete(p: AnthropicProvider, req: ModelRequest) -> Any:
    async with p:
        return await p.complete(req)


async def stream_all(p: AnthropicProvider, req: ModelRequest) -> list[StreamChunk]:
    async with p:
        return [chunk async for chunk in p.stream(req)]


def test_complete_maps_system_headers_and_usage(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(
        StandInReply(text="Hi!", input_tokens=20, output_tokens=2, cached_tokens=8)
    )
    req = ModelRequest(
        "claude-3-5-haiku-latest",
        (Message.system("Be brief."), Message.system("Be kind."), Message.user("hello")),
        max_tokens=32,
        temperature=0.5,
        stop=("END",),
        seed=3,
    )
    response = run(complete(provider(anthropic_standin), req))
    assert response.text == "Hi!"
    assert response.finish_reason == "stop"
    assert response.provider == "anthropic"
    assert response.response_id == "msg_1"
    assert response.usage.input_tokens == 20  # 12 fresh + 8 read from the prompt cache
    assert response.usage.cached_input_tokens == 8
    assert response.usage.output_tokens == 2
    sent = anthropic_standin.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "ak-upstream"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 32,
        "system": "Be brief.\n\nBe kind.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "temperature": 0.5,
        "stop_sequences": ["END"],
    }


def test_tool_use_and_tool_results(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(
        StandInReply(text="Let me look.", tool_calls=[("orders__lookup", {"order": "A-1"})])
    )
    response = run(complete(provider(anthropic_standin), claude("where is A-1", tools=(LOOKUP,))))
    assert response.finish_reason == "tool_calls"
    assert response.text == "Let me look."
    (call,) = response.tool_calls
    assert (call.id, call.name, call.arguments) == ("toolu_1_0", "orders.lookup", {"order": "A-1"})
    body = anthropic_standin.requests[0].body
    assert body["tools"] == [
        {
            "name": "orders__lookup",
            "description": "Look an order up",
            "input_schema": LOOKUP.parameters,
        }
    ]
    follow_up = ModelRequest(
        "claude-3-5-haiku-latest",
        (
            Message.user("where is A-1"),
            response.to_message(),
            Message.tool(call.id, '{"status": "shipped"}'),
            Message.user("thanks"),
        ),
        max_tokens=32,
        tools=(LOOKUP,),
        tool_choice="required",
    )
    run(complete(provider(anthropic_standin), follow_up))
    body = anthropic_standin.requests[1].body
    assert body["tool_choice"] == {"type": "any"}
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {
                "type": "tool_use",
                "id": "toolu_1_0",
                "name": "orders__lookup",
                "input": {"order": "A-1"},
            },
        ],
    }
    assert body["messages"][2] == {  # tool result and the next user turn merged into one turn
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1_0", "content": '{"status": "shipped"}'},
            {"type": "text", "text": "thanks"},
        ],
    }


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("orders.lookup", {"type": "tool", "name": "orders__lookup"}),
    ],
)
def test_tool_choice_mapping(anthropic_standin: AnthropicStandIn, choice: str, wire: Any) -> None:
    run(complete(provider(anthropic_standin), claude(tools=(LOOKUP,), tool_choice=choice)))
    assert anthropic_standin.requests[0].body["tool_choice"] == wire


def test_structured_output_through_the_output_tool(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(StandInReply(tool_calls=[("keel_output", {"label": "refund"})]))
    response = run(complete(provider(anthropic_standin), claude(output_schema=SCHEMA)))
    assert response.parsed == {"label": "refund"}
    assert response.tool_calls == ()
    assert response.finish_reason == "stop"
    body = anthropic_standin.requests[0].body
    assert body["tools"][-1]["name"] == "keel_output"
    assert body["tools"][-1]["input_schema"] == SCHEMA
    assert body["tool_choice"] == {"type": "tool", "name": "keel_output"}


def test_structured_output_that_breaks_the_schema(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(StandInReply(tool_calls=[("keel_output", {"other": 1})]))
    with pytest.raises(ModelResponseInvalid, match="does not match the schema"):
        run(complete(provider(anthropic_standin), claude(output_schema=SCHEMA)))


def test_requests_the_api_cannot_serve_are_refused(anthropic_standin: AnthropicStandIn) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        run(complete(provider(anthropic_standin), claude(n=2)))
    assert caught.value.context["field"] == "n"
    with pytest.raises(InvalidRequestError) as caught:
        run(complete(provider(anthropic_standin), claude(temperature=1.5)))
    assert caught.value.context["field"] == "temperature"
    clash = ToolDef("keel_output")
    with pytest.raises(InvalidRequestError, match="reserves"):
        run(complete(provider(anthropic_standin), claude(tools=(clash,), output_schema=SCHEMA)))
    assert anthropic_standin.requests == []


def test_stream_text_tools_and_usage(anthropic_standin: AnthropicStandIn) -> None:
    arguments = {"order": "A-1", "note": "x" * 30}
    anthropic_standin.script(
        StandInReply(
            text="Checking.",
            tool_calls=[("orders__lookup", arguments)],
            chunk=4,
            input_tokens=30,
            output_tokens=9,
        )
    )
    chunks = run(stream_all(provider(anthropic_standin), claude(tools=(LOOKUP,))))
    *pieces, final = chunks
    assert "".join(c.delta for c in pieces) == "Checking."
    deltas = [d for c in pieces for d in c.tool_calls]
    assert (
        deltas[0].index == 0 and deltas[0].name == "orders.lookup" and deltas[0].id == "toolu_1_0"
    )
    assert "".join(d.arguments for d in deltas) == json.dumps(arguments)
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 9)
    assert final.response is not None
    assert final.response.tool_calls[0].arguments == arguments
    assert final.response.text == "Checking."
    assert final.finish_reason == "tool_calls"
    assert anthropic_standin.requests[0].body["stream"] is True


def test_stream_structured_output(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(StandInReply(tool_calls=[("keel_output", {"label": "ok"})], chunk=3))
    chunks = run(stream_all(provider(anthropic_standin), claude(output_schema=SCHEMA)))
    assert "".join(c.delta for c in chunks) == '{"label": "ok"}'
    assert chunks[-1].response is not None
    assert chunks[-1].response.parsed == {"label": "ok"}
    assert chunks[-1].response.tool_calls == ()


def test_429_retried_honouring_retry_after(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(StandInFault("status", 429, retry_after="0.04"))
    sleeps = SleepLog()
    assert run(complete(provider(anthropic_standin, sleep=sleeps), claude())).text == "echo: hello"
    assert sleeps.delays[0] >= 0.04
    assert len(anthropic_standin.requests) == 2


def test_overloaded_529_retried(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(StandInFault("status", 529, message="Overloaded"))
    assert run(complete(provider(anthropic_standin), claude())).text == "echo: hello"
    assert len(anthropic_standin.requests) == 2


def test_rate_limited_after_attempts(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(*[StandInFault("status", 429, retry_after="0")] * 3)
    with pytest.raises(RateLimited) as caught:
        run(complete(provider(anthropic_standin), claude()))
    assert caught.value.context["upstream_type"] == "rate_limit_error"


def test_4xx_not_retried_with_the_providers_message(anthropic_standin: AnthropicStandIn) -> None:
    p = AnthropicProvider(anthropic_standin.base_url, "wrong", retry=FAST)
    with pytest.raises(ModelError, match="invalid x-api-key") as caught:
        run(complete(p, claude()))
    assert caught.value.code == "model_unauthorized"
    assert caught.value.context["upstream_type"] == "authentication_error"
    assert len(anthropic_standin.requests) == 1


def test_timeout(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(StandInFault("slow", delay=5.0))
    with pytest.raises(ModelTimeout):
        run(complete(provider(anthropic_standin, timeout=0.2), claude()))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "not valid JSON"),
        ("wrong_content_type", "content type 'text/html'"),
        ("missing_choices", "without a content list"),
        ("missing_usage", "no usable token usage"),
    ],
)
def test_malformed_answers(anthropic_standin: AnthropicStandIn, kind: Any, message: str) -> None:
    anthropic_standin.script(StandInFault(kind))
    with pytest.raises(ModelResponseInvalid, match=message):
        run(complete(provider(anthropic_standin), claude()))


def test_tool_input_that_is_not_an_object(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(StandInReply(tool_calls=[("orders__lookup", "A-1")]))
    with pytest.raises(ModelResponseInvalid, match="not a JSON object"):
        run(complete(provider(anthropic_standin), claude(tools=(LOOKUP,))))


@pytest.mark.parametrize(
    ("kind", "message"),
    [("truncated", "before message_stop"), ("missing_usage", "no usable token usage")],
)
def test_malformed_streams(anthropic_standin: AnthropicStandIn, kind: Any, message: str) -> None:
    anthropic_standin.script(StandInFault(kind))
    with pytest.raises(ModelResponseInvalid, match=message):
        run(stream_all(provider(anthropic_standin), claude()))


def test_stream_tool_arguments_not_json(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(StandInReply(tool_calls=[("orders__lookup", '{"order": "A')]))
    with pytest.raises(ModelResponseInvalid, match="not a JSON object"):
        run(stream_all(provider(anthropic_standin), claude(tools=(LOOKUP,))))


def test_missing_usage_estimated_when_allowed(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.script(StandInFault("missing_usage"))
    p = provider(anthropic_standin, allow_estimated_usage=True)
    response = run(complete(p, claude()))
    assert response.usage.estimated


def test_history_with_kept_bad_arguments_is_sent_as_empty_input(
    anthropic_standin: AnthropicStandIn,
) -> None:
    bad = ToolCall("toolu_9", "orders.lookup", "{not json")
    req = ModelRequest(
        "claude-3-5-haiku-latest",
        (Message.user("a"), Message.assistant(None, [bad]), Message.tool("toolu_9", "error")),
        max_tokens=8,
        tools=(LOOKUP,),
    )
    run(complete(provider(anthropic_standin), req))
    block = anthropic_standin.requests[0].body["messages"][1]["content"][0]
    assert block["input"] == {}


def test_retry_policy_validation() -> None:
    from keel.errors import ConfigError

    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="base_delay"):
        RetryPolicy(base_delay=-1)
