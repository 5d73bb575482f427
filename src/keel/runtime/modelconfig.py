"""The ``models:`` section of keel.yaml: providers, models, prices, router, cache.

    models:
      providers:
        openai: {type: openai, api_key_env: OPENAI_API_KEY}
        local: {type: openai, base_url: "http://127.0.0.1:8000/v1"}
        claude: {type: anthropic, api_key_env: ANTHROPIC_API_KEY}
      models:
        gpt-4o-mini: {provider: openai}
        llama-3-8b: {provider: local, provider_model: meta-llama/Meta-Llama-3-8B, self_hosted: true}
      prices:                     # USD per million tokens; overrides genai-prices
        "local:*": {input: 0, output: 0}
      router:
        tiers: {small: [openai:gpt-4o-mini], large: [claude:claude-sonnet-4-5]}
      cache_ttl_seconds: 3600

API keys are read from the environment variable named by ``api_key_env``, never from the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import pydantic

from keel.errors import ConfigError
from keel.models import (
    AnthropicProvider,
    ModelPrice,
    OpenAIProvider,
    PriceBook,
    Provider,
    RetryPolicy,
    Router,
    RouterConfig,
)

__all__ = ["ModelEntry", "ModelSettings", "ProviderSettings", "build_prices", "build_providers"]


class ProviderSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    type: Literal["openai", "anthropic"]
    base_url: str | None = None
    api_key_env: str | None = None
    azure_api_version: str | None = None
    timeout: float = pydantic.Field(60.0, gt=0)
    max_attempts: int = pydantic.Field(3, ge=1, le=10)


class ModelEntry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    provider: str
    provider_model: str | None = None
    self_hosted: bool = False


class ModelSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    providers: dict[str, ProviderSettings] = {}
    models: dict[str, ModelEntry] = {}
    prices: dict[str, dict[str, Any]] = {}
    price_aliases: dict[str, str] = {}
    router: dict[str, Any] | None = None
    cache_ttl_seconds: int = pydantic.Field(3600, gt=0)
    cache_nondeterministic: bool = False

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ModelSettings:
        try:
            settings = cls.model_validate(dict(data))
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(["models", *(str(p) for p in err["loc"])])
            raise ConfigError(f"setting {key!r}: {err['msg']}", context={"key": key}) from None
        for name, entry in settings.models.items():
            if entry.provider not in settings.providers:
                raise ConfigError(
                    f"setting 'models.models.{name}.provider': no provider named "
                    f"{entry.provider!r} (configured: {', '.join(sorted(settings.providers))})",
                    context={"key": f"models.models.{name}.provider"},
                )
        return settings

    def router_config(self) -> Router | None:
        return None if self.router is None else Router(RouterConfig.from_mapping(self.router))


def build_prices(settings: ModelSettings) -> PriceBook:
    overrides = {
        key: ModelPrice.parse(value, key=f"models.prices.{key}")
        for key, value in settings.prices.items()
    }
    return PriceBook(overrides, aliases=settings.price_aliases)


def build_providers(
    settings: ModelSettings, env: Mapping[str, str] | None = None
) -> dict[str, Provider]:
    env = os.environ if env is None else env
    providers: dict[str, Provider] = {}
    for name, cfg in settings.providers.items():
        key = env.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not key:
            raise ConfigError(
                f"provider {name!r}: environment variable {cfg.api_key_env} is not set",
                context={"key": f"models.providers.{name}.api_key_env"},
            )
        retry = RetryPolicy(max_attempts=cfg.max_attempts)
        if cfg.type == "openai":
            providers[name] = OpenAIProvider(
                cfg.base_url or "https://api.openai.com/v1",
                key,
                name=name,
                azure_api_version=cfg.azure_api_version,
                timeout=cfg.timeout,
                retry=retry,
            )
        else:
            providers[name] = AnthropicProvider(
                cfg.base_url or "https://api.anthropic.com",
                key,
                name=name,
                timeout=cfg.timeout,
                retry=retry,
            )
    return providers
