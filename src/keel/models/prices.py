"""Model prices: what a call costs, and the most it can cost, in exact ``Decimal`` USD.

Prices come from the ``genai-prices`` package's bundled data (offline: Keel never asks it to
fetch updates) unless configured. Overrides are keyed ``"provider:model"`` (``"openai:gpt-4o"``,
``"my-vllm:llama-3-8b"``) or ``"provider:*"`` for every model of a provider (a self-hosted
endpoint at zero cost: ``{"my-vllm:*": ModelPrice.parse({"input": 0, "output": 0})}``). An
override wins over the package. A model with neither is refused with ``PriceUnknown``, whose
message says how to configure a price: Keel never runs a call it cannot price.

Prices are USD per million tokens. Tiered prices (a higher rate for every token once a request's
input passes a threshold, as Anthropic and Google charge for long prompts) are kept as
``PriceTier`` entries and applied by input size.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from keel.core import Clock, SystemClock
from keel.errors import ConfigError, PriceUnknown
from keel.models.tokens import estimate_input_tokens
from keel.models.types import ModelRequest, Usage

__all__ = ["ModelPrice", "PriceBook", "PriceTier", "worst_case"]

_MILLION: Final = Decimal(1_000_000)
_CACHE_SIZE: Final = 4096


def _money(value: object, key: str) -> Decimal:
    if isinstance(value, bool):
        raise ConfigError(f"price {key} must be a number, got a boolean", context={"key": key})
    try:
        amount = Decimal(str(value)) if isinstance(value, (int, float, str)) else value
    except InvalidOperation:
        amount = None
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
        raise ConfigError(
            f"price {key} must be a non-negative number of USD per million tokens, got {value!r}",
            context={"key": key},
        )
    return amount


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Rates (USD per million tokens) that apply once input exceeds ``above_input_tokens``."""

    above_input_tokens: int
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    cache_write_per_mtok: Decimal


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's price in USD per million tokens.

    ``cached_input_per_mtok`` (prompt-cache reads) and ``cache_write_per_mtok`` default to the
    input rate. ``tiers`` replace all rates once a request's input exceeds their threshold.
    ``source`` says where the price came from (``config`` or ``genai-prices``).
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    tiers: tuple[PriceTier, ...] = ()
    source: str = "config"

    def __post_init__(self) -> None:
        for name in ("input_per_mtok", "output_per_mtok"):
            object.__setattr__(self, name, _money(getattr(self, name), name))
        for name in ("cached_input_per_mtok", "cache_write_per_mtok"):
            value = getattr(self, name)
            rate = self.input_per_mtok if value is None else _money(value, name)
            object.__setattr__(self, name, rate)
        object.__setattr__(
            self, "tiers", tuple(sorted(self.tiers, key=lambda t: t.above_input_tokens))
        )

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, key: str = "prices") -> ModelPrice:
        """A price from config: ``{input: "0.15", output: "0.60", cached_input: "0.075"}``.

        Values are USD per million tokens, as strings or numbers (YAML floats are read through
        their shortest decimal form, so ``0.15`` is exactly ``Decimal("0.15")``).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{key} must be a mapping with input and output prices")
        allowed = {"input", "output", "cached_input", "cache_write"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(
                f"{key} has unknown fields {sorted(unknown)}; accepted: {sorted(allowed)}",
                context={"key": key},
            )
        for required in ("input", "output"):
            if required not in data:
                raise ConfigError(
                    f"{key} needs {required!r} (USD per million tokens)",
                    context={"key": f"{key}.{required}"},
                )
        cached = data.get("cached_input")
        write = data.get("cache_write")
        return cls(
            input_per_mtok=_money(data["input"], f"{key}.input"),
            output_per_mtok=_money(data["output"], f"{key}.output"),
            cached_input_per_mtok=None if cached is None else _money(cached, f"{key}.cached_input"),
            cache_write_per_mtok=None if write is None else _money(write, f"{key}.cache_write"),
        )

    def rates(self, input_tokens: int) -> PriceTier:
        """The rates that apply to a request with ``input_tokens`` of input."""
        cached, write = self.cached_input_per_mtok, self.cache_write_per_mtok
        chosen = PriceTier(
            0,
            self.input_per_mtok,
            self.output_per_mtok,
            self.input_per_mtok if cached is None else cached,
            self.input_per_mtok if write is None else write,
        )
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                chosen = tier
        return chosen

    def cost(self, usage: Usage) -> Decimal:
        """The exact cost of ``usage``: uncached input, cached input, cache writes, output."""
        rates = self.rates(usage.input_tokens)
        uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
        total = (
            uncached * rates.input_per_mtok
            + usage.cached_input_tokens * rates.cached_input_per_mtok
            + usage.cache_write_tokens * rates.cache_write_per_mtok
            + usage.output_tokens * rates.output_per_mtok
        )
        return total / _MILLION

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "input": str(self.input_per_mtok),
            "output": str(self.output_per_mtok),
            "cached_input": str(self.cached_input_per_mtok),
            "source": self.source,
        }
        if self.tiers:
            record["tiers"] = [
                {
                    "above_input_tokens": t.above_input_tokens,
                    "input": str(t.input_per_mtok),
                    "output": str(t.output_per_mtok),
                }
                for t in self.tiers
            ]
        return record


def worst_case(request: ModelRequest, price: ModelPrice) -> Decimal:
    """The most ``request`` can cost: estimated input tokens at the input rate plus
    ``max_tokens`` at the output rate, times ``n``; no prompt-cache discount is assumed."""
    input_tokens = estimate_input_tokens(request)
    rates = price.rates(input_tokens)
    per_choice = input_tokens * rates.input_per_mtok + request.max_tokens * rates.output_per_mtok
    return per_choice * request.n / _MILLION


class PriceBook:
    """Looks up model prices: configured overrides first, then ``genai-prices``.

    ``aliases`` maps a Keel provider name to the ``genai-prices`` provider id whose prices it
    charges (``{"azure-eu": "azure", "openai-proxy": "openai"}``). Prices with date conditions
    are taken at ``clock.now()``. Immutable after construction; thread-safe; lookups do not
    block (the price data is bundled with the package, nothing is fetched).
    """

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        *,
        aliases: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        use_genai_prices: bool = True,
    ) -> None:
        self._overrides: dict[str, ModelPrice] = {}
        for key, price in (overrides or {}).items():
            provider, sep, model = key.partition(":")
            if not sep or not provider or not model:
                raise ConfigError(
                    f"price key {key!r} must be 'provider:model' or 'provider:*'",
                    context={"key": f"prices.{key}"},
                )
            if not isinstance(price, ModelPrice):
                raise ConfigError(
                    f"price {key!r} must be a ModelPrice", context={"key": f"prices.{key}"}
                )
            self._overrides[key] = price
        self._aliases = dict(aliases or {})
        self._clock = clock or SystemClock()
        self._use_genai_prices = use_genai_prices
        # Looked-up prices: fixed ones by (provider, model), date- or time-conditional ones by
        # (provider, model, minute). A genai-prices lookup costs ~100 µs; every call is priced
        # twice (reserve, settle).
        self._looked_up: dict[tuple[str, str, str], ModelPrice | None] = {}
        self._lock = threading.Lock()

    def price(self, provider: str, model: str) -> ModelPrice:
        """The price of ``model`` at ``provider``; ``PriceUnknown`` if none is known."""
        found = self._overrides.get(f"{provider}:{model}") or self._overrides.get(f"{provider}:*")
        if found is not None:
            return found
        if self._use_genai_prices:
            found = self._genai_price(self._aliases.get(provider, provider), model)
            if found is not None:
                return found
        key = f"{provider}:{model}"
        raise PriceUnknown(
            f"no price is known for model {model!r} of provider {provider!r}. Configure one in "
            f"keel.yaml, in USD per million tokens:\n  prices:\n    {key}: "
            "{input: '0.50', output: '1.50'}\n"
            f"(or '{provider}:*' for every model of the provider, e.g. a self-hosted endpoint)",
            context={"provider": provider, "model": model, "key": f"prices.{key}"},
        )

    def _genai_price(self, provider: str, model: str) -> ModelPrice | None:
        now = self._clock.now().astimezone(_dt.UTC)
        minute = now.strftime("%Y-%m-%dT%H:%M")
        with self._lock:
            for key in ((provider, model, ""), (provider, model, minute)):
                if key in self._looked_up:
                    return self._looked_up[key]
        found, fixed = _from_genai_prices(provider, model, now)
        with self._lock:
            if len(self._looked_up) >= _CACHE_SIZE:
                self._looked_up.clear()
            self._looked_up[(provider, model, "" if fixed else minute)] = found
        return found

    def cost(self, provider: str, model: str, usage: Usage) -> Decimal:
        """The exact cost of ``usage`` on ``model`` at ``provider``."""
        return self.price(provider, model).cost(usage)

    def worst_case(self, provider: str, request: ModelRequest) -> Decimal:
        """The most ``request`` can cost at ``provider`` (see ``worst_case``)."""
        return worst_case(request, self.price(provider, request.model))


def _from_genai_prices(
    provider: str, model: str, now: _dt.datetime
) -> tuple[ModelPrice | None, bool]:
    """The package's price (None if it has none) and whether it is fixed (cacheable)."""
    import genai_prices
    from genai_prices.types import ModelPrice as GenaiModelPrice
    from genai_prices.types import TieredPrices

    try:
        calculation = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=0, output_tokens=0),
            model,
            provider_id=provider,
            genai_request_timestamp=now,
        )
    except (LookupError, ValueError):
        return None, True
    info = calculation.model
    fixed = isinstance(info.prices, GenaiModelPrice)  # not a list of conditional prices
    raw = calculation.model_price
    rates: dict[str, Decimal | TieredPrices | None] = {
        "input": getattr(raw, "input_mtok", None),
        "output": getattr(raw, "output_mtok", None),
        "cached": getattr(raw, "cache_read_mtok", None),
        "write": getattr(raw, "cache_write_mtok", None),
    }
    if rates["input"] is None or rates["output"] is None:
        return None, fixed  # priced per request, image or audio: not a token price Keel applies

    def base(value: Decimal | TieredPrices | None) -> Decimal | None:
        return value.base if isinstance(value, TieredPrices) else value

    def at(value: Decimal | TieredPrices | None, above: int) -> Decimal | None:
        if not isinstance(value, TieredPrices):
            return value
        chosen = value.base
        for tier in value.tiers:
            if above >= tier.start:
                chosen = tier.price
        return chosen

    starts = sorted(
        {t.start for v in rates.values() if isinstance(v, TieredPrices) for t in v.tiers}
    )
    tiers = []
    for start in starts:
        tier_input = at(rates["input"], start)
        tier_output = at(rates["output"], start)
        tier_cached = at(rates["cached"], start)
        tier_write = at(rates["write"], start)
        assert tier_input is not None and tier_output is not None
        tiers.append(
            PriceTier(
                start,
                tier_input,
                tier_output,
                tier_input if tier_cached is None else tier_cached,
                tier_input if tier_write is None else tier_write,
            )
        )
    input_rate = base(rates["input"])
    output_rate = base(rates["output"])
    assert input_rate is not None and output_rate is not None
    price = ModelPrice(
        input_per_mtok=input_rate,
        output_per_mtok=output_rate,
        cached_input_per_mtok=base(rates["cached"]),
        cache_write_per_mtok=base(rates["write"]),
        tiers=tuple(tiers),
        source="genai-prices",
    )
    return price, fixed
