"""Governed streams (keel.runtime.streaming), in process: a stream is one governed call; one
that stops early — the consumer leaves, a kill switch is engaged — is recorded with what had
arrived and leaves no budget held."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from keel import App
from keel.audit import query
from keel.errors import KillSwitchEngaged, PolicyDenied
from keel.models import StreamChunk
from keel.testing import Reply, Rule, ScriptedModel

CAPS = """
policy: stream-caps
tools: {allow: []}
models: {allow: ["*"]}
caps:
  - {id: stream-money, models: ["*"], per: [tenant], window: none, max_usd: 1}
"""


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 200, **extra}


def _collect(stream: Any, stop_after: int | None = None, between: Any = None) -> list[StreamChunk]:
    async def run() -> list[StreamChunk]:
        chunks: list[StreamChunk] = []
        iterator = stream.chunks()
        try:
            async for chunk in iterator:
                chunks.append(chunk)
                if between is not None:
                    between(len(chunks))
                if stop_after is not None and len(chunks) >= stop_after:
                    break
        finally:
            await iterator.aclose()
        return chunks

    return asyncio.run(run())


@pytest.fixture
def model(app: App) -> ScriptedModel:
    scripted = ScriptedModel([Rule(r"long", Reply(text="word " * 300))], default="short answer")
    app.add_model("scripted-small", scripted)
    app.add_policy(CAPS)
    return scripted


def _token(app: App) -> Any:
    token = app.mint_token("streamer", tenant="acme", scopes=["models:invoke"])
    return lambda: token


def _records(app: App) -> list[Any]:
    return [r.entry for r in query(app.store, agent="streamer", limit=50)]


def _held(app: App) -> Decimal:
    return sum((line.reserved_usd for line in app.ledger.report(tenant="acme")), Decimal(0))


def test_a_whole_stream_is_one_recorded_call(app: App, model: ScriptedModel) -> None:
    stream = app.model_caller().astream(_token(app), ask("hello", model="scripted-small"))
    chunks = _collect(stream)
    assert chunks[-1].response is not None
    assert "".join(c.delta for c in chunks) == chunks[-1].response.text == "short answer"
    assert stream.result is not None and stream.result.cost.usd > 0
    (record,) = _records(app)
    assert record.kind == "call" and "stream_stopped" not in (record.body.get("notes") or {})
    assert _held(app) == 0


def test_a_consumer_leaving_early_is_recorded_and_spent(app: App, model: ScriptedModel) -> None:
    stream = app.model_caller().astream(_token(app), ask("long please", model="scripted-small"))
    chunks = _collect(stream, stop_after=2)
    assert len(chunks) == 2
    (record,) = _records(app)
    stopped = record.body["notes"]["stream_stopped"]
    assert stopped["code"] == "consumer_closed"
    assert record.body["outcome"]["choices"][0]["text"] == "".join(c.delta for c in chunks)
    assert Decimal(record.body["cost"]["usd"]) > 0
    assert _held(app) == 0


def test_a_kill_switch_stops_a_stream_in_flight(app: App, model: ScriptedModel) -> None:
    stream = app.model_caller().astream(
        _token(app), ask("long please", model="scripted-small"), recheck_every=0.0
    )

    def engage(count: int) -> None:
        if count == 3:
            app.kill_switches.engage("agent", "streamer", reason="runaway", actor="sre")

    with pytest.raises(KillSwitchEngaged):
        _collect(stream, between=engage)
    assert isinstance(stream.stopped, KillSwitchEngaged)
    calls = [r for r in _records(app) if r.kind == "call"]
    assert calls[0].body["notes"]["stream_stopped"]["code"] == "kill_switch"
    assert _held(app) == 0
    with pytest.raises(KillSwitchEngaged):  # and the next call is refused up front
        _collect(app.model_caller().astream(_token(app), ask("x", model="scripted-small")))


def test_refusals_happen_before_the_first_chunk(app: App, model: ScriptedModel) -> None:
    app.add_policy("policy: no-scripted\nmodels: {deny: [scripted-small]}\n")
    with pytest.raises(PolicyDenied):
        _collect(app.model_caller().astream(_token(app), ask("x", model="scripted-small")))
    assert model.calls == 0


def test_a_cached_answer_replays_as_a_stream(app: App, model: ScriptedModel) -> None:
    request = ask("hello", model="scripted-small", temperature=0)
    first = _collect(app.model_caller().astream(_token(app), request))
    again = app.model_caller().astream(_token(app), request)
    second = _collect(again)
    assert again.result is not None and again.result.cached
    assert "".join(c.delta for c in second) == "".join(c.delta for c in first)
    assert model.calls == 1
