"""OpenAIProvider against the OpenAI stand-in, over real HTTP on 127.0.0.1."""

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
    Message,
    ModelRequest,
    OpenAIProvider,
    RetryPolicy,
    StreamChunk,
    ToolCall,
    ToolDef,
    collect,
    complete_sync,
)
from keel.testing._standins import OpenAIStandIn, StandInFault, StandInReply

from .conftest import FAST, SleepLog, request, run

REFUND = ToolDef(
    "billing.refund",
    "Refund an order",
    {
        "type": "object",
        "properties": {"order": {"type": "string"}, "amount": {"type": "number"}},
        "required": ["order", "amount"],
    },
)
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label", "score"],
    "additionalProperties": False,
}


def provider(server: OpenAIStandIn, **kwargs: Any) -> OpenAIProvider:
    kwargs.setdefault("retry", FAST)
    return OpenAIProvider(server.base_url, "sk-upstream", **kwargs)


async def stream_all(p: OpenAIProvider, req: ModelRequest) -> list[StreamChunk]:
    async with p:
        return [chunk async for chunk in p.stream(req)]


async def complete(p: OpenAIProvider, req: ModelRequest) -> Any:
    async with p:
        return await p.complete(req)


def test_complete_sends_the_wire_format_and_reads_usage(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(
        StandInReply(text="Hi!", input_tokens=12, output_tokens=3, cached_tokens=4)
    )
    req = ModelRequest(
        "gpt-4o-mini",
        (Message.system("Be brief."), Message.user("hello")),
        max_tokens=32,
        temperature=0,
        seed=7,
        stop=("END",),
        metadata={"task": "greet"},
    )
    response = run(complete(provider(openai_standin), req))
    assert response.text == "Hi!"
    assert response.finish_reason == "stop"
    assert response.provider == "openai"
    assert response.model == "gpt-4o-mini"
    assert response.response_id == "chatcmpl-1"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)
    assert response.usage.cached_input_tokens == 4
    assert not response.usage.estimated
    sent = openai_standin.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-upstream"
    assert sent.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": 32,
        "temperature": 0.0,
        "seed": 7,
        "stop": ["END"],
    }


def test_azure_style_key_and_version(openai_standin: OpenAIStandIn) -> None:
    p = OpenAIProvider(
        openai_standin.base_url, "sk-upstream", azure_api_version="2024-10-21", retry=FAST
    )
    assert run(complete(p, request())).text == "echo: hello"
    sent = openai_standin.requests[0]
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == "sk-upstream"
    assert "authorization" not in sent.headers


def test_max_completion_tokens_field(openai_standin: OpenAIStandIn) -> None:
    run(complete(provider(openai_standin, max_tokens_field="max_completion_tokens"), request()))
    body = openai_standin.requests[0].body
    assert body["max_completion_tokens"] == 64
    assert "max_tokens" not in body


def test_tool_calls_round_trip_with_dotted_names(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(
        StandInReply(tool_calls=[("billing__refund", {"order": "A-1", "amount": 5})])
    )
    req = request("refund A-1", tools=(REFUND,), tool_choice="billing.refund")
    response = run(complete(provider(openai_standin), req))
    assert response.finish_reason == "tool_calls"
    assert response.text is None
    (call,) = response.tool_calls
    assert call.name == "billing.refund"
    assert call.arguments == {"order": "A-1", "amount": 5}
    body = openai_standin.requests[0].body
    assert body["tools"][0]["function"]["name"] == "billing__refund"
    assert body["tools"][0]["function"]["parameters"] == REFUND.parameters
    assert body["tool_choice"] == {"type": "function", "function": {"name": "billing__refund"}}


def test_tool_results_are_sent_back(openai_standin: OpenAIStandIn) -> None:
    call = ToolCall.of("call_1", "billing.refund", {"order": "A-1", "amount": 5})
    req = ModelRequest(
        "gpt-4o-mini",
        (
            Message.user("refund A-1"),
            Message.assistant(None, [call]),
            Message.tool("call_1", '{"ok": true}', name="billing.refund"),
        ),
        max_tokens=16,
        tools=(REFUND,),
    )
    run(complete(provider(openai_standin), req))
    messages = openai_standin.requests[0].body["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "billing__refund", "arguments": call.arguments_json},
            }
        ],
    }
    assert messages[2] == {"role": "tool", "content": '{"ok": true}', "tool_call_id": "call_1"}


def test_structured_output_is_parsed_and_validated(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInReply(text='{"label": "refund", "score": 0.9}'))
    response = run(complete(provider(openai_standin), request(output_schema=SCHEMA)))
    assert response.parsed == {"label": "refund", "score": 0.9}
    response_format = openai_standin.requests[0].body["response_format"]
    assert response_format == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }


def test_structured_output_that_breaks_the_schema_is_refused(
    openai_standin: OpenAIStandIn,
) -> None:
    openai_standin.script(StandInReply(text='{"label": "refund"}'))
    with pytest.raises(ModelResponseInvalid, match="does not match the schema"):
        run(complete(provider(openai_standin), request(output_schema=SCHEMA)))


def test_structured_output_cut_by_max_tokens_says_so(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInReply(text='{"label": "ref', finish_reason="length"))
    with pytest.raises(ModelResponseInvalid, match="hit max_tokens"):
        run(complete(provider(openai_standin), request(output_schema=SCHEMA)))


def test_invalid_output_schema_is_refused_before_sending(openai_standin: OpenAIStandIn) -> None:
    with pytest.raises(InvalidRequestError, match="not a valid JSON schema"):
        run(complete(provider(openai_standin), request(output_schema={"type": "nonsense"})))
    assert openai_standin.requests == []


def test_n_choices(openai_standin: OpenAIStandIn) -> None:
    response = run(complete(provider(openai_standin), request(n=3)))
    assert [c.text for c in response.choices] == ["echo: hello"] * 3
    assert openai_standin.requests[0].body["n"] == 3


def test_complete_sync_from_plain_code(openai_standin: OpenAIStandIn) -> None:
    p = provider(openai_standin)
    assert complete_sync(p, request("one")).text == "echo: one"
    assert complete_sync(p, request("two")).text == "echo: two"


# -- streaming ---------------------------------------------------------------------------------


def test_stream_text_and_final_usage(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInReply(text="Streaming works fine.", chunk=4))
    chunks = run(stream_all(provider(openai_standin), request()))
    *pieces, final = chunks
    assert "".join(c.delta for c in pieces) == "Streaming works fine."
    assert all(c.usage is None and c.response is None for c in pieces)
    assert final.usage is not None and final.usage.output_tokens > 0
    assert final.response is not None
    assert final.response.text == "Streaming works fine."
    assert final.finish_reason == "stop"
    body = openai_standin.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_stream_assembles_tool_call_argument_deltas(openai_standin: OpenAIStandIn) -> None:
    arguments = {"order": "A-1", "amount": 12.5}
    openai_standin.script(
        StandInReply(
            tool_calls=[("billing__refund", arguments), ("billing__refund", {"order": "B"})],
            chunk=3,
        )
    )
    chunks = run(stream_all(provider(openai_standin), request(tools=(REFUND,))))
    deltas = [d for c in chunks for d in c.tool_calls]
    assert deltas[0].name == "billing.refund" and deltas[0].id == "call_1_0"
    assert len([d for d in deltas if d.index == 0]) > 3
    assert "".join(d.arguments for d in deltas if d.index == 0) == json.dumps(arguments)
    final = chunks[-1].response
    assert final is not None
    assert [c.arguments for c in final.tool_calls] == [arguments, {"order": "B"}]
    assert final.finish_reason == "tool_calls"


def test_collect_returns_the_final_response(openai_standin: OpenAIStandIn) -> None:
    async def go() -> Any:
        async with provider(openai_standin) as p:
            return await collect(p.stream(request("x")))

    assert run(go()).text == "echo: x"


def test_stopping_a_stream_early_releases_it(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInReply(text="a" * 200, chunk=1))

    async def go() -> str:
        async with provider(openai_standin) as p:
            stream = p.stream(request())
            first = await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
            return first.delta

    assert run(go()) == "a"


def test_stream_structured_output(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInReply(text='{"label": "x", "score": 1}'))
    chunks = run(stream_all(provider(openai_standin), request(output_schema=SCHEMA)))
    assert chunks[-1].response is not None
    assert chunks[-1].response.parsed == {"label": "x", "score": 1}


# -- retries and errors ------------------------------------------------------------------------


def test_429_is_retried_honouring_retry_after(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInFault("status", 429, retry_after="0.05"))
    sleeps = SleepLog()
    response = run(complete(provider(openai_standin, sleep=sleeps), request()))
    assert response.text == "echo: hello"
    assert len(openai_standin.requests) == 2
    assert len(sleeps.delays) == 1 and sleeps.delays[0] >= 0.05


def test_5xx_is_retried_then_succeeds(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInFault("status", 500), StandInFault("status", 503))
    sleeps = SleepLog()
    response = run(complete(provider(openai_standin, sleep=sleeps), request()))
    assert response.text == "echo: hello"
    assert len(openai_standin.requests) == 3
    assert all(0 <= d <= FAST.max_delay for d in sleeps.delays)


def test_5xx_until_attempts_run_out(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(*[StandInFault("status", 502, message="bad gateway")] * 3)
    with pytest.raises(ModelError) as caught:
        run(complete(provider(openai_standin), request()))
    assert caught.value.retryable
    assert caught.value.code == "model_unavailable"
    assert caught.value.context["status"] == 502
    assert "bad gateway" in caught.value.message
    assert len(openai_standin.requests) == 3


def test_429_until_attempts_run_out_is_rate_limited(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(*[StandInFault("status", 429, retry_after="0.01")] * 2)
    p = provider(openai_standin, retry=RetryPolicy(max_attempts=2, base_delay=0.001))
    with pytest.raises(RateLimited) as caught:
        run(complete(p, request()))
    assert caught.value.code == "upstream_rate_limited"
    assert caught.value.retry_after == pytest.approx(0.01)


def test_retry_after_beyond_the_limit_is_not_waited_for(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInFault("status", 429, retry_after="3600"))
    sleeps = SleepLog()
    with pytest.raises(RateLimited) as caught:
        run(complete(provider(openai_standin, sleep=sleeps), request()))
    assert caught.value.retry_after == 3600
    assert sleeps.delays == []
    assert len(openai_standin.requests) == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "model_rejected"), (401, "model_unauthorized"), (404, "model_not_found")],
)
def test_4xx_is_never_retried(openai_standin: OpenAIStandIn, status: int, code: str) -> None:
    openai_standin.script(StandInFault("status", status, message="The model does not exist"))
    with pytest.raises(ModelError) as caught:
        run(complete(provider(openai_standin), request()))
    assert caught.value.code == code
    assert not caught.value.retryable
    assert "The model does not exist" in caught.value.message
    assert len(openai_standin.requests) == 1


def test_wrong_api_key_is_the_providers_message(openai_standin: OpenAIStandIn) -> None:
    p = OpenAIProvider(openai_standin.base_url, "sk-wrong", retry=FAST)
    with pytest.raises(ModelError, match="Incorrect API key") as caught:
        run(complete(p, request()))
    assert "sk-wrong" not in str(caught.value.to_dict())


def test_timeout(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInFault("slow", delay=5.0))
    with pytest.raises(ModelTimeout) as caught:
        run(complete(provider(openai_standin, timeout=0.2), request()))
    assert caught.value.retryable
    assert len(openai_standin.requests) == 1  # timeouts are not retried by default


def test_timeouts_retried_when_configured(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInFault("slow", delay=5.0))
    retry = RetryPolicy(max_attempts=2, base_delay=0.001, retry_timeouts=True)
    response = run(complete(provider(openai_standin, timeout=0.3, retry=retry), request()))
    assert response.text == "echo: hello"
    assert len(openai_standin.requests) == 2


def test_unreachable_server() -> None:
    with OpenAIStandIn() as server:
        url = server.base_url
    p = OpenAIProvider(url, retry=RetryPolicy(max_attempts=2, base_delay=0.001))
    with pytest.raises(ModelError) as caught:
        run(complete(p, request()))
    assert caught.value.code == "model_unreachable"
    assert caught.value.retryable


# -- malformed answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "not valid JSON"),
        ("wrong_content_type", "content type 'text/html'"),
        ("missing_choices", "without choices"),
        ("missing_usage", "no usable token usage"),
    ],
)
def test_malformed_answers_are_refused(
    openai_standin: OpenAIStandIn, kind: Any, message: str
) -> None:
    openai_standin.script(StandInFault(kind))
    with pytest.raises(ModelResponseInvalid, match=message) as caught:
        run(complete(provider(openai_standin), request()))
    assert caught.value.context["provider"] == "openai"
    assert len(openai_standin.requests) == 1


def test_tool_arguments_that_are_not_json_are_refused(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInReply(tool_calls=[("billing__refund", '{"order": "A-')]))
    with pytest.raises(ModelResponseInvalid, match="not a JSON object") as caught:
        run(complete(provider(openai_standin), request(tools=(REFUND,))))
    assert caught.value.context["tool"] == "billing.refund"


def test_tool_arguments_with_duplicate_keys_are_refused(openai_standin: OpenAIStandIn) -> None:
    raw = '{"order": "A-1", "order": "B-2", "amount": 1}'
    openai_standin.script(StandInReply(tool_calls=[("billing__refund", raw)]))
    with pytest.raises(ModelResponseInvalid, match="duplicate"):
        run(complete(provider(openai_standin), request(tools=(REFUND,))))


def test_bad_tool_arguments_can_be_kept_for_the_agent(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInReply(tool_calls=[("billing__refund", "not json")]))
    p = provider(openai_standin, invalid_tool_arguments="keep")
    (call,) = run(complete(p, request(tools=(REFUND,)))).tool_calls
    assert not call.ok
    assert call.arguments is None
    assert call.arguments_json == "not json"
    assert call.error is not None


def test_missing_usage_may_be_estimated(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInFault("missing_usage", reply=StandInReply(text="four words here")))
    response = run(complete(provider(openai_standin, allow_estimated_usage=True), request()))
    assert response.usage.estimated
    assert response.usage.input_tokens > 0 and response.usage.output_tokens == 3


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "before its \\[DONE\\]"),
        ("wrong_content_type", "expected text/event-stream"),
        ("missing_usage", "no usable token usage"),
    ],
)
def test_malformed_streams_are_refused(
    openai_standin: OpenAIStandIn, kind: Any, message: str
) -> None:
    openai_standin.script(StandInFault(kind))
    with pytest.raises(ModelResponseInvalid, match=message):
        run(stream_all(provider(openai_standin), request()))


def test_stream_with_bad_tool_arguments_is_refused(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInReply(tool_calls=[("billing__refund", '{"order": ')]))
    with pytest.raises(ModelResponseInvalid, match="not a JSON object"):
        run(stream_all(provider(openai_standin), request(tools=(REFUND,))))


def test_stream_429_is_retried_before_the_first_chunk(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInFault("status", 429, retry_after="0.01"))
    chunks = run(stream_all(provider(openai_standin), request()))
    assert chunks[-1].response is not None and chunks[-1].response.text == "echo: hello"
    assert len(openai_standin.requests) == 2


def test_stream_4xx(openai_standin: OpenAIStandIn) -> None:
    openai_standin.script(StandInFault("status", 400, message="bad request"))
    with pytest.raises(ModelError, match="bad request"):
        run(stream_all(provider(openai_standin), request()))
    assert len(openai_standin.requests) == 1


def test_one_provider_shared_by_tasks_and_threads(openai_standin: OpenAIStandIn) -> None:
    import asyncio
    import threading

    p = provider(openai_standin)

    async def many(prefix: str) -> list[str | None]:
        responses = await asyncio.gather(*(p.complete(request(f"{prefix}{i}")) for i in range(5)))
        await p.aclose()
        return [r.text for r in responses]

    results: dict[int, list[str | None]] = {}

    def worker(n: int) -> None:
        results[n] = run(many(f"t{n}-"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: [f"echo: t{n}-{i}" for i in range(5)] for n in range(3)}
    assert len(openai_standin.requests) == 15
