"""Routing decisions: tiers, task classes, risk floors, sensitivity, cascade, config errors."""

from __future__ import annotations

from typing import Any

import pytest

from keel.errors import AuthorizationError, ConfigError, InvalidRequestError
from keel.models import RouteDecision, Router, RouterConfig, Target

CONFIG: dict[str, Any] = {
    "tiers": {
        "small": [
            "openai:gpt-4o-mini",
            {"provider": "local", "model": "llama-8b", "self_hosted": True},
        ],
        "medium": ["openai:gpt-4o", "anthropic:claude-3-5-haiku-latest"],
        "large": [
            "anthropic:claude-sonnet-4-5",
            {"provider": "local", "model": "llama-70b", "self_hosted": True},
        ],
    },
    "task_classes": {"classify": "small", "draft": "medium", "plan": "large"},
    "risk_floor": {"reversible": "medium", "irreversible": "large"},
}


@pytest.fixture
def router() -> Router:
    return Router(RouterConfig.from_mapping(CONFIG))


def keys(decision: RouteDecision) -> list[str]:
    return [t.key for t in decision.targets]


def test_task_class_picks_the_tier(router: Router) -> None:
    decision = router.route("classify")
    assert decision.tier == "small"
    assert keys(decision) == ["openai:gpt-4o-mini", "local:llama-8b"]
    assert decision.first == Target(provider="openai", model="gpt-4o-mini")
    assert decision.reason == "task class 'classify' runs on tier 'small'"


def test_unknown_task_class_gets_the_default(router: Router) -> None:
    decision = router.route("summarize")
    assert decision.tier == "small"
    assert "task class 'summarize' has no rule: default tier 'small'" in decision.reason
    assert "no task class" in router.route(None).reason


def test_risk_raises_the_tier(router: Router) -> None:
    decision = router.route("classify", risk="irreversible")
    assert decision.tier == "large"
    assert "risk 'irreversible' needs at least tier 'large'" in decision.reason
    assert router.route("plan", risk="reversible").tier == "large"  # never lowered
    assert router.route("classify", risk="read").tier == "small"


def test_requested_tier_still_obeys_the_risk_floor(router: Router) -> None:
    assert router.route(None, tier="medium").tier == "medium"
    assert router.route(None, risk="irreversible", tier="small").tier == "large"
    with pytest.raises(InvalidRequestError, match="tier 'huge' is not configured"):
        router.route(None, tier="huge")


def test_sensitive_data_only_goes_to_self_hosted_targets(router: Router) -> None:
    decision = router.route("classify", sensitivity="sensitive")
    assert keys(decision) == ["local:llama-8b"]
    assert "may only go to self-hosted targets" in decision.reason
    decision = router.route("draft", sensitivity="sensitive")
    assert decision.tier == "large"  # medium has no self-hosted target
    assert keys(decision) == ["local:llama-70b"]
    assert "tier 'medium' has no self-hosted target, skipped" in decision.reason
    assert keys(router.route("draft", sensitivity="public")) == [
        "openai:gpt-4o",
        "anthropic:claude-3-5-haiku-latest",
    ]


def test_unknown_data_class_fails_closed(router: Router) -> None:
    decision = router.route("classify", sensitivity="medical")
    assert keys(decision) == ["local:llama-8b"]
    assert "treated as restricted" in decision.reason


def test_no_eligible_target_is_refused() -> None:
    config = RouterConfig.from_mapping({"tiers": {"only": ["openai:gpt-4o"]}})
    with pytest.raises(AuthorizationError) as caught:
        Router(config).route("x", sensitivity="sensitive")
    assert caught.value.code == "no_eligible_model"


def test_cascade_moves_up_with_a_reason(router: Router) -> None:
    first = router.route("classify")
    second = router.cascade(first)
    assert second is not None and second.tier == "medium"
    assert (
        second.reason
        == "cascade from tier 'small' to 'medium': verification failed or low confidence"
    )
    third = router.cascade(second, because="low confidence (0.41)")
    assert third is not None and third.tier == "large" and "low confidence (0.41)" in third.reason
    assert router.cascade(third) is None


def test_cascade_keeps_sensitivity_rules(router: Router) -> None:
    decision = router.route("classify", sensitivity="sensitive")
    up = router.cascade(decision)
    assert up is not None and up.tier == "large" and keys(up) == ["local:llama-70b"]
    assert "tier 'medium' has no self-hosted target, skipped" in up.reason


def test_tier_order_and_default_tier() -> None:
    config = RouterConfig.from_mapping(
        {
            "tiers": {"big": ["a:big"], "tiny": ["a:tiny"]},
            "tier_order": ["tiny", "big"],
            "default_tier": "big",
        }
    )
    router = Router(config)
    assert router.route(None).tier == "big"
    up = router.cascade(router.route(None, tier="tiny"))
    assert up is not None and up.tier == "big"


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"tiers": {}}, "router.tiers", "at least one tier"),
        ({"tiers": {"s": []}}, "router.tiers", "has no targets"),
        ({"tiers": {"s": ["gpt-4o"]}}, "router.tiers.s.0", "provider:model"),
        (
            {"tiers": {"s": ["a:b"]}, "task_classes": {"x": "m"}},
            "router",
            "task_classes.x names tier 'm'",
        ),
        (
            {"tiers": {"s": ["a:b"]}, "risk_floor": {"dangerous": "s"}},
            "router.risk_floor.dangerous",
            "Input should be",
        ),
        ({"tiers": {"s": ["a:b"]}, "tier_order": ["s", "t"]}, "router", "exactly once"),
        ({"tiers": {"s": ["a:b"]}, "colour": "blue"}, "router.colour", "Extra inputs"),
        (
            {"tiers": {"s": ["a:b"]}, "sensitivity": {"pii": "nowhere"}},
            "router.sensitivity.pii",
            "Input should be",
        ),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        RouterConfig.from_mapping(data)
    assert caught.value.context["key"] == key


def test_decision_record() -> None:
    record = Router(RouterConfig.from_mapping(CONFIG)).route("plan", risk="read").to_record()
    assert record == {
        "tier": "large",
        "targets": ["anthropic:claude-sonnet-4-5", "local:llama-70b"],
        "reason": "task class 'plan' runs on tier 'large'",
        "task_class": "plan",
        "risk": "read",
        "sensitivity": None,
    }
