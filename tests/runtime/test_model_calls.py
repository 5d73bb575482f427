"""Model calls are governed calls: policy, pricing, cache, fallback, cascade, audit."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from keel import App, KeelConfig
from keel.audit import query
from keel.errors import (
    InvalidRequestError,
    ModelResponseInvalid,
    PolicyDenied,
    PriceUnknown,
)
from keel.models import OpenAIProvider, RetryPolicy, Router, RouterConfig
from keel.testing import (
    FrozenClock,
    OpenAIStandIn,
    Reply,
    Rule,
    ScriptedModel,
    StandInFault,
    StandInReply,
)

POLICY = """
policy: models
scope: {tenant: acme}
tools: {allow: []}
models: {allow: ["triage-*", "big-*", "gpt-*"], deny: ["gpt-forbidden"]}
"""

MODELS = {
    "prices": {
        "scripted:*": {"input": "1.00", "output": "2.00"},
        "upstream:*": {"input": "0.50", "output": "1.50"},
        "backup:*": {"input": "0.50", "output": "1.50"},
    }
}


def ask(text: str, **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 50, **extra}


@pytest.fixture
def app(tmp_path: Path, store_url: str) -> Iterator[App]:
    config = KeelConfig(store_url=store_url, home=tmp_path / "home", models=MODELS)
    with App(config, clock=FrozenClock()) as keel_app:
        keel_app.add_policy(POLICY)
        yield keel_app


@pytest.fixture
def scripted() -> ScriptedModel:
    return ScriptedModel(
        [Rule(r"refund", Reply(text="category: refund"))], default="category: other"
    )


def test_model_call_is_priced_metered_and_recorded(app: App, scripted: ScriptedModel) -> None:
    app.add_model("triage-small", scripted)
    agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
    outcome = agent.model(ask("I want a refund", model="triage-small"))
    assert outcome.response.text == "category: refund"
    usage = outcome.response.usage
    expected = (
        Decimal(usage.input_tokens) * Decimal("1.00") + Decimal(usage.output_tokens) * 2
    ) / 10**6
    assert outcome.result.cost.usd == expected
    record = query(app.store, tool="triage-small", limit=1)[0]
    assert record.entry.kind == "call"
    assert record.entry.body["call_kind"] == "model"
    assert Decimal(record.entry.body["cost"]["usd"]) == expected
    assert record.entry.body["cost"]["input_tokens"] == usage.input_tokens


def test_policy_governs_models(app: App, scripted: ScriptedModel) -> None:
    app.add_model("gpt-forbidden", scripted)
    app.add_model("other-model", scripted)
    agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
    for model in ("gpt-forbidden", "other-model"):
        with pytest.raises(PolicyDenied):
            agent.model(ask("hi", model=model))
    assert scripted.calls == 0


def test_missing_scope_blocks_models(app: App, scripted: ScriptedModel) -> None:
    app.add_model("triage-small", scripted)
    with pytest.raises(Exception, match="models:invoke"):
        app.agent("bot", tenant="acme", scopes=["orders:read"]).model(
            ask("x", model="triage-small")
        )


def test_unknown_model_and_missing_price(app: App, scripted: ScriptedModel) -> None:
    agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
    with pytest.raises(InvalidRequestError) as info:
        agent.model(ask("x", model="triage-nope"))
    assert info.value.code == "unknown_model"
    unpriced = ScriptedModel(name="mystery")
    with pytest.raises(PriceUnknown) as priced:
        app.add_model("triage-mystery", unpriced)
    assert "price" in priced.value.message


@pytest.mark.parametrize(
    ("args", "field"),
    [({"max_tokens": -5}, "max_tokens"), ({"max_tokens": 10**9}, "max_tokens"), ({"n": 500}, "n")],
)
def test_absurd_requests_are_refused_before_anything_runs(
    app: App, scripted: ScriptedModel, args: dict[str, object], field: str
) -> None:
    app.add_model("triage-small", scripted)
    agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
    with pytest.raises(InvalidRequestError) as info:
        agent.model({**ask("x", model="triage-small"), **args})
    assert field in info.value.message
    assert scripted.calls == 0
    assert query(app.store, limit=1)[0].entry.decision == "deny"


def test_deterministic_calls_are_cached_and_free(app: App, scripted: ScriptedModel) -> None:
    app.add_model("triage-small", scripted)
    agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
    request = ask("refund please", model="triage-small", temperature=0)
    first = agent.model(request)
    second = agent.model(request)
    assert scripted.calls == 1
    assert second.result.cached
    assert second.result.cost.usd == 0
    assert second.response.text == first.response.text
    record = query(app.store, limit=1)[0]
    assert record.entry.body["cached"] is True
    other_tenant_policy = POLICY.replace("tenant: acme", "tenant: globex").replace(
        "policy: models", "policy: globex"
    )
    app.add_policy(other_tenant_policy)
    app.agent("bot", tenant="globex", scopes=["models:invoke"]).model(request)
    assert scripted.calls == 2  # the cache is tenant-scoped


def test_malformed_provider_answer_is_recorded_and_costs_nothing(app: App) -> None:
    with OpenAIStandIn() as upstream:
        upstream.script(StandInFault("truncated"))
        app.add_model(
            "gpt-small",
            OpenAIProvider(
                upstream.base_url, "k", name="upstream", retry=RetryPolicy(max_attempts=1)
            ),
        )
        agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
        with pytest.raises(ModelResponseInvalid):
            agent.model(ask("hello", model="gpt-small"))
    record = query(app.store, limit=1)[0]
    assert record.entry.kind == "call"
    assert record.entry.body["error"]["code"] == "model_response_invalid"
    assert "cost" not in record.entry.body


def test_router_falls_back_to_the_next_provider_over_real_http(app: App) -> None:
    with OpenAIStandIn() as primary, OpenAIStandIn() as backup:
        primary.script(StandInFault("status", status=503), StandInFault("status", status=503))
        backup.script(StandInReply(text="from backup"))
        app.add_model(
            "gpt-a",
            OpenAIProvider(
                primary.base_url,
                "k1",
                name="upstream",
                retry=RetryPolicy(max_attempts=2, base_delay=0.01),
            ),
        )
        app.add_model("gpt-b", OpenAIProvider(backup.base_url, "k2", name="backup"))
        app.use_router(
            Router(
                RouterConfig.from_mapping({"tiers": {"small": ["upstream:gpt-a", "backup:gpt-b"]}})
            )
        )
        agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
        token = agent.token
        outcome = agent.model(ask("hi"), tier="small")
        assert outcome.response.text == "from backup"
        assert [a["model"] for a in outcome.attempts] == ["gpt-a", "gpt-b"]
        for received in primary.requests + backup.requests:
            assert token not in str(received.headers)  # the agent's token never goes upstream
    records = query(app.store, limit=2)
    assert records[0].entry.body["metadata"]["fallback_after"] == "model_unavailable"
    assert "route" in records[0].entry.body["metadata"]


def test_cascade_to_a_higher_tier_when_not_confident(app: App) -> None:
    small = ScriptedModel(default="maybe", name="scripted")
    large = ScriptedModel(default="definitely", name="scripted")
    app.add_model("triage-small", small)
    app.add_model("big-large", large)
    app.use_router(
        Router(
            RouterConfig.from_mapping(
                {"tiers": {"small": ["scripted:triage-small"], "large": ["scripted:big-large"]}}
            )
        )
    )
    agent = app.agent("bot", tenant="acme", scopes=["models:invoke"])
    outcome = agent.model(
        ask("classify"), tier="small", verify=lambda r: 0.9 if r.text == "definitely" else 0.2
    )
    assert outcome.response.text == "definitely"
    assert outcome.route is not None and outcome.route.tier == "large"
    assert small.calls == 1
    assert large.calls == 1
