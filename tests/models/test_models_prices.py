"""Prices: genai-prices data, overrides, unknown models, exact Decimal costs and worst cases."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.errors import ConfigError, PriceUnknown
from keel.models import (
    ModelPrice,
    PriceBook,
    PriceTier,
    Usage,
    estimate_input_tokens,
    worst_case,
)
from keel.testing import FrozenClock

from .conftest import request


def book(overrides: dict[str, ModelPrice] | None = None) -> PriceBook:
    return PriceBook(overrides, clock=FrozenClock())


def test_known_model_from_genai_prices() -> None:
    price = book().price("openai", "gpt-4o-mini")
    assert price.source == "genai-prices"
    assert price.input_per_mtok == Decimal("0.15")
    assert price.output_per_mtok == Decimal("0.6")
    assert price.cached_input_per_mtok == Decimal("0.075")
    cost = price.cost(Usage(1_000_000, 1_000_000, 400_000))
    assert cost == Decimal("0.6") * 1 + Decimal("0.15") * Decimal("0.6") + Decimal(
        "0.075"
    ) * Decimal("0.4")
    assert isinstance(cost, Decimal)


def test_tiered_prices_apply_above_the_threshold() -> None:
    price = book().price("anthropic", "claude-sonnet-4-5")
    assert price.input_per_mtok == Decimal("3")
    assert price.tiers and price.tiers[0].above_input_tokens == 200_000
    small = price.cost(Usage(200_000, 0))
    large = price.cost(Usage(200_001, 0))
    assert small == Decimal("0.6")
    assert large == Decimal(200_001) * price.tiers[0].input_per_mtok / 1_000_000


def test_override_wins_and_wildcards() -> None:
    mine = ModelPrice.parse({"input": "1", "output": "2"})
    free = ModelPrice.parse({"input": 0, "output": 0})
    prices = book({"openai:gpt-4o-mini": mine, "my-vllm:*": free})
    assert prices.price("openai", "gpt-4o-mini") is mine
    assert prices.price("my-vllm", "llama-3-8b") is free
    assert prices.cost("my-vllm", "anything", Usage(10**6, 10**6)) == 0
    assert prices.cost("openai", "gpt-4o-mini", Usage(500_000, 250_000)) == Decimal("1.0")


def test_aliases_map_provider_names() -> None:
    prices = PriceBook(aliases={"openai-proxy": "openai"}, clock=FrozenClock())
    assert prices.price("openai-proxy", "gpt-4o-mini").input_per_mtok == Decimal("0.15")


def test_unknown_model_says_how_to_configure_a_price() -> None:
    with pytest.raises(PriceUnknown) as caught:
        book().price("my-vllm", "llama-3-8b")
    message = caught.value.message
    assert "my-vllm:llama-3-8b" in message and "prices:" in message and "input" in message
    assert caught.value.context["key"] == "prices.my-vllm:llama-3-8b"
    with pytest.raises(PriceUnknown):
        book().price("openai", "gpt-unknown-model-9")
    with pytest.raises(PriceUnknown):
        PriceBook(use_genai_prices=False).price("openai", "gpt-4o-mini")


def test_bad_price_config() -> None:
    with pytest.raises(ConfigError, match="needs 'output'"):
        ModelPrice.parse({"input": "1"})
    with pytest.raises(ConfigError, match="non-negative"):
        ModelPrice.parse({"input": "-1", "output": "1"})
    with pytest.raises(ConfigError, match="non-negative"):
        ModelPrice.parse({"input": "lots", "output": "1"})
    with pytest.raises(ConfigError, match="unknown fields"):
        ModelPrice.parse({"input": 1, "output": 1, "currency": "EUR"})
    with pytest.raises(ConfigError, match="provider:model"):
        PriceBook({"gpt-4o": ModelPrice.parse({"input": 1, "output": 1})})


def test_yaml_floats_are_read_exactly() -> None:
    assert ModelPrice.parse({"input": 0.15, "output": 0.6}).input_per_mtok == Decimal("0.15")


def test_worst_case_is_input_estimate_plus_max_tokens_times_n() -> None:
    price = ModelPrice(Decimal("2"), Decimal("10"))
    req = request("hello there", max_tokens=1000, n=3)
    expected = (estimate_input_tokens(req) * 2 + 1000 * 10) * Decimal(3) / 1_000_000
    assert worst_case(req, price) == expected
    assert book({"openai:m": price}).worst_case("openai", request(model="m", max_tokens=10)) > 0


def test_worst_case_uses_the_tier_of_the_estimated_input() -> None:
    tier = PriceTier(10, Decimal("100"), Decimal("100"), Decimal("100"), Decimal("100"))
    price = ModelPrice(Decimal("1"), Decimal("1"), tiers=(tier,))
    short = request("hi", max_tokens=1)
    long = request("word " * 50, max_tokens=1)
    assert worst_case(short, price) == (estimate_input_tokens(short) + 1) / Decimal(1_000_000)
    assert worst_case(long, price) == (estimate_input_tokens(long) + 1) * 100 / Decimal(1_000_000)


@given(
    input_tokens=st.integers(0, 10**7),
    output_tokens=st.integers(0, 10**6),
    cached_share=st.integers(0, 100),
)
def test_cost_is_exact_and_bounded(
    input_tokens: int, output_tokens: int, cached_share: int
) -> None:
    price = ModelPrice(Decimal("0.15"), Decimal("0.6"), Decimal("0.075"))
    cached = input_tokens * cached_share // 100
    cost = price.cost(Usage(input_tokens, output_tokens, cached))
    uncached_cost = price.cost(Usage(input_tokens, output_tokens))
    assert 0 <= cost <= uncached_cost
    assert cost * 1_000_000 == (
        (input_tokens - cached) * Decimal("0.15")
        + cached * Decimal("0.075")
        + output_tokens * Decimal("0.6")
    )


def test_time_of_day_prices_follow_the_clock() -> None:
    clock = FrozenClock()  # 00:00 UTC
    prices = PriceBook(clock=clock)
    at_midnight = prices.price("deepseek", "deepseek-chat")
    assert prices.price("deepseek", "deepseek-chat") == at_midnight
    clock.advance(hours=1)  # inside DeepSeek's 00:30-16:30 UTC window
    assert prices.price("deepseek", "deepseek-chat") != at_midnight
    clock.advance(hours=23)
    assert prices.price("deepseek", "deepseek-chat") == at_midnight
