"""The OpenAI-compatible proxy over real HTTP: the official ``openai`` client → Keel (uvicorn on
loopback) → an OpenAI stand-in upstream on loopback. Non-streaming, streaming, tool calls,
budgets (worst case up front, mid-stream stop), redaction across chunks, audit, token passthrough.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keel import App, KeelConfig
from keel.audit import query
from keel.testing import OpenAIStandIn, StandInFault, StandInReply

from ._serving import serving

UPSTREAM_KEY = "sk-upstream-secret-key-0123456789abcdef"

POLICY = """
policy: proxy
scope: {tenant: acme}
tools: {allow: []}
models: {allow: ["gpt-*"], deny: ["gpt-forbidden"]}
caps:
  - {id: model-money, models: ["gpt-*"], per: [tenant], window: none, max_usd: 0.05}
"""


class Proxy:
    def __init__(self, keel: App, base: str, upstream: OpenAIStandIn) -> None:
        self.keel = keel
        self.base = base
        self.upstream = upstream
        self.token = keel.mint_token("proxy-bot", tenant="acme", scopes=["models:invoke"])
        self.client = openai.OpenAI(base_url=f"{base}/v1", api_key=self.token, max_retries=0)

    def records(self) -> list[Any]:
        return [r.entry for r in query(self.keel.store, agent="proxy-bot", limit=100)]


@pytest.fixture
def proxy(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    monkeypatch.setenv("KEEL_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    with OpenAIStandIn(api_key=UPSTREAM_KEY) as upstream:
        models = {
            "providers": {
                "upstream": {
                    "type": "openai",
                    "base_url": upstream.base_url,
                    "api_key_env": "KEEL_TEST_UPSTREAM_KEY",
                    "max_attempts": 1,
                }
            },
            "models": {
                "gpt-small": {"provider": "upstream"},
                "gpt-forbidden": {"provider": "upstream"},
            },
            "prices": {"upstream:*": {"input": "1.00", "output": "2.00"}},
            "router": {"tiers": {"small": ["upstream:gpt-small"]}},
        }
        config = KeelConfig(store_url=store_url, home=tmp_path / "home", models=models)
        with App(config) as keel:
            keel.add_policy(POLICY)
            with serving(keel) as base:
                yield Proxy(keel, base, upstream)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_completion_through_the_official_client_is_governed_and_recorded(proxy: Proxy) -> None:
    proxy.upstream.script(StandInReply(text="Your order shipped.", output_tokens=5))
    raw = proxy.client.chat.completions.with_raw_response.create(
        model="gpt-small", messages=ask("Where is my order?"), max_tokens=50
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "Your order shipped."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert raw.headers["keel-call-id"]
    cost = Decimal(raw.headers["keel-cost-usd"])
    assert cost > 0
    # The upstream saw the provider's key, never the agent's token (ATTACKS.md #16).
    seen = proxy.upstream.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert proxy.token not in json.dumps(seen.headers) + json.dumps(seen.body)
    records = proxy.records()
    assert [r.kind for r in records] == ["call"]
    assert records[0].body["call_kind"] == "model"
    assert Decimal(records[0].body["cost"]["usd"]) == cost


def test_models_lists_configured_models_and_tiers(proxy: Proxy) -> None:
    names = [m.id for m in proxy.client.models.list()]
    assert names == ["gpt-forbidden", "gpt-small", "small"]
    bad = openai.OpenAI(base_url=f"{proxy.base}/v1", api_key="forged", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_a_router_tier_is_a_model_name(proxy: Proxy) -> None:
    proxy.upstream.script(StandInReply(text="routed"))
    answer = proxy.client.chat.completions.create(model="small", messages=ask("hi"), max_tokens=20)
    assert answer.choices[0].message.content == "routed"
    assert proxy.upstream.requests[-1].body["model"] == "gpt-small"


def test_streaming_with_the_official_client(proxy: Proxy) -> None:
    text = "Streaming works one small piece at a time, all the way to the end."
    proxy.upstream.script(StandInReply(text=text, chunk=5))
    pieces = []
    usage = None
    stream = proxy.client.chat.completions.create(
        model="gpt-small",
        messages=ask("stream please"),
        max_tokens=100,
        stream=True,
        stream_options={"include_usage": True},
    )
    finish = None
    for event in stream:
        if event.usage is not None:
            usage = event.usage
        for choice in event.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == text
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0
    (record,) = proxy.records()
    assert record.kind == "call"
    assert record.body["outcome"]["choices"][0]["text"] == text


def test_tool_calls_streamed_and_not(proxy: Proxy) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Find an order",
                "parameters": {
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}},
                    "required": ["order_id"],
                },
            },
        }
    ]
    proxy.upstream.script(StandInReply(tool_calls=[("lookup_order", {"order_id": "A-1"})]))
    answer = proxy.client.chat.completions.create(
        model="gpt-small", messages=ask("find A-1"), max_tokens=50, tools=tools
    )
    (call,) = answer.choices[0].message.tool_calls or []
    assert call.function.name == "lookup_order"
    assert json.loads(call.function.arguments) == {"order_id": "A-1"}
    assert answer.choices[0].finish_reason == "tool_calls"

    proxy.upstream.script(StandInReply(tool_calls=[("lookup_order", {"order_id": "B-2"})]))
    stream = proxy.client.chat.completions.create(
        model="gpt-small", messages=ask("find B-2"), max_tokens=50, tools=tools, stream=True
    )
    arguments = ""
    names = []
    for event in stream:
        for choice in event.choices:
            for piece in choice.delta.tool_calls or []:
                arguments += piece.function.arguments or "" if piece.function else ""
                if piece.function and piece.function.name:
                    names.append(piece.function.name)
    assert names == ["lookup_order"]
    assert json.loads(arguments) == {"order_id": "B-2"}


def test_redaction_in_prompts_and_across_streamed_chunks(proxy: Proxy) -> None:
    card = "4111 1111 1111 1111"
    key = "AKIAIOSFODNN7EXAMPLE"
    proxy.upstream.script(
        StandInReply(text=f"The card on file is {card} and the key is {key}. Done.", chunk=3)
    )
    stream = proxy.client.chat.completions.create(
        model="gpt-small",
        messages=ask("my email is jane.roe@example.com, what is on file?"),
        max_tokens=200,
        stream=True,
    )
    text = "".join(c.delta.content or "" for e in stream for c in e.choices)
    assert card not in text and "1111" not in text
    assert key not in text
    assert "[REDACTED:card:" in text and "[REDACTED:aws_access_key_id:" in text
    assert text.endswith("Done.")
    sent = json.dumps(proxy.upstream.requests[-1].body)
    assert "jane.roe@example.com" not in sent and "[REDACTED:email:" in sent


def test_worst_case_is_held_before_the_call(proxy: Proxy) -> None:
    # max_tokens 100000 at $2/M output = $0.20 worst case > the $0.05 cap: refused, not sent.
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client.chat.completions.create(
            model="gpt-small", messages=ask("write a novel"), max_tokens=100_000
        )
    assert caught.value.status_code == 403
    assert "model-money" in caught.value.message
    assert proxy.upstream.requests == []
    with pytest.raises(openai.APIStatusError) as streamed:
        proxy.client.chat.completions.create(
            model="gpt-small", messages=ask("write a novel"), max_tokens=100_000, stream=True
        )
    assert streamed.value.status_code == 403
    assert proxy.upstream.requests == []


def test_an_upstream_outrunning_max_tokens_is_stopped_mid_stream(proxy: Proxy) -> None:
    # The upstream ignores max_tokens=2000 and streams on; its hold grows block by block until
    # the $0.05 cap has no room: the stream ends with an error event, and what arrived is spent.
    long_text = "word " * 40_000
    proxy.upstream.script(StandInReply(text=long_text, chunk=400))
    stream = proxy.client.chat.completions.create(
        model="gpt-small", messages=ask("go"), max_tokens=2000, stream=True
    )
    received: list[str] = []

    def drain() -> None:
        for event in stream:
            received.extend(c.delta.content or "" for c in event.choices)

    with pytest.raises(openai.APIError) as caught:
        drain()
    assert "model-money" in str(caught.value.message)
    assert 0 < len("".join(received)) < len(long_text)
    (record,) = proxy.records()
    assert record.body["notes"]["stream_stopped"]["code"] == "budget_exceeded"
    lines = proxy.keel.ledger.report(tenant="acme")
    spent = sum(line.spent_usd for line in lines)
    assert Decimal(0) < spent <= Decimal("0.05")
    assert sum(line.reserved_usd for line in lines) == 0


def test_errors_have_clear_codes(proxy: Proxy) -> None:
    bad_token = openai.OpenAI(base_url=f"{proxy.base}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_token.chat.completions.create(model="gpt-small", messages=ask("x"), max_tokens=5)
    with pytest.raises(openai.PermissionDeniedError):
        proxy.client.chat.completions.create(model="gpt-forbidden", messages=ask("x"), max_tokens=5)
    with pytest.raises(openai.BadRequestError, match="no model named"):
        proxy.client.chat.completions.create(model="gpt-nope", messages=ask("x"), max_tokens=5)
    with pytest.raises(openai.BadRequestError) as unsupported:
        proxy.client.chat.completions.create(
            model="gpt-small", messages=ask("x"), max_tokens=5, presence_penalty=1.5
        )
    assert "presence_penalty" in unsupported.value.message
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(openai.BadRequestError, match="text only"):
        proxy.client.chat.completions.create(model="gpt-small", messages=image, max_tokens=5)
    response = httpx.post(
        f"{proxy.base}/v1/chat/completions",
        content=b'{"model": "gpt-small", "model": "gpt-forbidden", "messages": []}',
        headers={"Authorization": f"Bearer {proxy.token}"},
    )
    assert response.status_code == 400
    assert "duplicate" in response.json()["error"]["message"]
    assert proxy.upstream.requests == []


def test_upstream_failure_is_a_clear_error(proxy: Proxy) -> None:
    proxy.upstream.script(StandInFault("status", status=500))
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client.chat.completions.create(model="gpt-small", messages=ask("x"), max_tokens=5)
    assert caught.value.status_code == 502
    records = proxy.records()
    assert records[0].body["error"]["code"].startswith("model")
