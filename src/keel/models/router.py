"""Routing: which model serves a call, decided from config, with a reason a person can read.

The router is pure: it never calls a provider. Config (``RouterConfig``) names tiers (e.g.
``small``, ``medium``, ``large``), each an ordered list of targets (first choice, then
fallbacks on provider errors), and the rules:

- ``task_classes`` map a task class (``classify``, ``draft``, ``plan`` …) to its tier; others get
  ``default_tier``;
- ``risk_floor`` gives the lowest tier allowed for a risk (the effect of the tools involved:
  ``read`` / ``reversible`` / ``irreversible``); a requested or task-class tier below it is raised;
- ``sensitivity`` says where each data class may go: ``any`` target, or ``self_hosted`` targets
  only. A data class the config does not name is treated as ``self_hosted`` (fail closed). When
  a tier has no eligible target the next higher one is tried; when none has, routing fails with
  ``AuthorizationError`` (code ``no_eligible_model``).

``cascade`` moves a decision to the next higher tier (``tier_order``) after a verification
failure or low confidence. Example, as YAML::

    tiers:
      small: [openai:gpt-4o-mini, {provider: local, model: llama-3-8b, self_hosted: true}]
      medium: [openai:gpt-4o]
      large: [anthropic:claude-sonnet-4-5, {provider: local, model: llama-3-70b, self_hosted: true}]
    task_classes: {classify: small, draft: medium, plan: large}
    risk_floor: {irreversible: large}
    sensitivity: {public: any, internal: any, sensitive: self_hosted}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keel.core import Effect
from keel.errors import AuthorizationError, ConfigError, InvalidRequestError

__all__ = ["RouteDecision", "Router", "RouterConfig", "Target"]

Requirement = Literal["any", "self_hosted"]


class Target(BaseModel):
    """One model at one provider. ``self_hosted`` marks endpoints that may see sensitive data.

    In config, a target is a mapping or the short form ``"provider:model"``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1, description="The provider's name (as registered).")
    model: str = Field(min_length=1, description="The model id the provider serves.")
    self_hosted: bool = Field(False, description="Runs on infrastructure the operator controls.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, str):
            provider, sep, model = value.partition(":")
            if not sep:
                raise ValueError(f"target {value!r} must be 'provider:model' or a mapping")
            return {"provider": provider, "model": model}
        return value

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.model}"


def _default_sensitivity() -> dict[str, Requirement]:
    return {"public": "any", "internal": "any", "sensitive": "self_hosted"}


class RouterConfig(BaseModel):
    """Routing config. Immutable; unknown keys are refused. See the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tiers: dict[str, tuple[Target, ...]] = Field(
        description="Tier name → targets, first choice first. At least one tier."
    )
    tier_order: tuple[str, ...] = Field(
        (), description="Tiers from lowest to highest (cascade order); default: as listed."
    )
    default_tier: str | None = Field(
        None, description="Tier for task classes without a rule; default: the lowest tier."
    )
    task_classes: dict[str, str] = Field(default_factory=dict, description="Task class → tier.")
    risk_floor: dict[Effect, str] = Field(
        default_factory=dict, description="Risk (tool effect) → the lowest tier allowed."
    )
    sensitivity: dict[str, Requirement] = Field(
        default_factory=_default_sensitivity,
        description="Data class → where it may go; unnamed classes go to self-hosted targets only.",
    )

    @field_validator("tiers")
    @classmethod
    def _tiers_not_empty(cls, tiers: dict[str, tuple[Target, ...]]) -> dict[str, Any]:
        if not tiers:
            raise ValueError("at least one tier is needed")
        for name, targets in tiers.items():
            if not name:
                raise ValueError("tier names must not be empty")
            if not targets:
                raise ValueError(f"tier {name!r} has no targets")
        return tiers

    @model_validator(mode="after")
    def _references_exist(self) -> RouterConfig:
        known = list(self.tiers)
        if self.tier_order and sorted(self.tier_order) != sorted(known):
            raise ValueError(
                f"tier_order {list(self.tier_order)} must list each tier exactly once: {known}"
            )
        refs = [("default_tier", self.default_tier)] if self.default_tier else []
        refs += [(f"task_classes.{k}", v) for k, v in self.task_classes.items()]
        refs += [(f"risk_floor.{k}", v) for k, v in self.risk_floor.items()]
        for where, tier in refs:
            if tier not in self.tiers:
                raise ValueError(f"{where} names tier {tier!r}, which is not one of {known}")
        return self

    @property
    def order(self) -> tuple[str, ...]:
        return self.tier_order or tuple(self.tiers)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "router") -> RouterConfig:
        """Validate config data; ``ConfigError`` naming the key (``router.tiers.small``)."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            parts = [str(part) for part in first["loc"] if part != "[key]"]
            key = ".".join([source, *parts])
            message = first["msg"].removeprefix("Value error, ")
            raise ConfigError(
                f"{key}: {message}", context={"key": key, "errors": exc.error_count()}
            ) from None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a call goes: ``tier``, ``targets`` (first choice then fallbacks) and why."""

    tier: str
    targets: tuple[Target, ...]
    reason: str
    task_class: str | None = None
    risk: Effect | None = None
    sensitivity: str | None = None

    @property
    def first(self) -> Target:
        return self.targets[0]

    def to_record(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "targets": [t.key for t in self.targets],
            "reason": self.reason,
            "task_class": self.task_class,
            "risk": self.risk,
            "sensitivity": self.sensitivity,
        }


class Router:
    """Pure routing decisions from a ``RouterConfig``. Immutable; thread-safe; never blocks."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self._order = config.order
        self._rank = {tier: index for index, tier in enumerate(self._order)}

    def _requirement(self, sensitivity: str | None) -> tuple[Requirement, str]:
        if sensitivity is None:
            return "any", ""
        rule = self.config.sensitivity.get(sensitivity)
        if rule is None:
            return "self_hosted", (
                f"data class {sensitivity!r} has no sensitivity rule, so it is treated as "
                "restricted: self-hosted targets only"
            )
        if rule == "self_hosted":
            return rule, f"data class {sensitivity!r} may only go to self-hosted targets"
        return rule, ""

    def _eligible(self, tier: str, requirement: Requirement) -> tuple[Target, ...]:
        targets = self.config.tiers[tier]
        if requirement == "self_hosted":
            return tuple(t for t in targets if t.self_hosted)
        return targets

    def _settle(
        self,
        start: str,
        requirement: Requirement,
        notes: list[str],
        *,
        strict_above: bool = False,
    ) -> tuple[str, tuple[Target, ...]] | None:
        first = self._rank[start] + (1 if strict_above else 0)
        for tier in self._order[first:]:
            targets = self._eligible(tier, requirement)
            if targets:
                return tier, targets
            notes.append(f"tier {tier!r} has no self-hosted target, skipped")
        return None

    def route(
        self,
        task_class: str | None,
        risk: Effect | None = None,
        sensitivity: str | None = None,
        tier: str | None = None,
    ) -> RouteDecision:
        """Decide the tier and targets for a call (see the module docstring for the rules)."""
        config = self.config
        notes: list[str] = []
        if tier is not None:
            if tier not in config.tiers:
                raise InvalidRequestError(
                    f"tier {tier!r} is not configured; tiers: {list(self._order)}",
                    context={"field": "tier", "tier": tier},
                )
            start = tier
            notes.append(f"tier {tier!r} was requested")
        elif task_class is not None and task_class in config.task_classes:
            start = config.task_classes[task_class]
            notes.append(f"task class {task_class!r} runs on tier {start!r}")
        else:
            start = config.default_tier or self._order[0]
            what = f"task class {task_class!r} has no rule" if task_class else "no task class"
            notes.append(f"{what}: default tier {start!r}")
        floor = config.risk_floor.get(risk) if risk is not None else None
        if floor is not None and self._rank[floor] > self._rank[start]:
            notes.append(f"risk {risk!r} needs at least tier {floor!r}")
            start = floor
        requirement, why = self._requirement(sensitivity)
        if why:
            notes.append(why)
        settled = self._settle(start, requirement, notes)
        if settled is None:
            raise AuthorizationError(
                f"no model may serve this call: {'; '.join(notes)}, and no tier from {start!r} "
                "up has a self-hosted target",
                code="no_eligible_model",
                context={"task_class": task_class, "risk": risk, "sensitivity": sensitivity},
            )
        chosen, targets = settled
        return RouteDecision(chosen, targets, "; ".join(notes), task_class, risk, sensitivity)

    def cascade(
        self, decision: RouteDecision, because: str = "verification failed or low confidence"
    ) -> RouteDecision | None:
        """The next higher tier for ``decision`` (same sensitivity rules), or None at the top."""
        if decision.tier not in self._rank:
            raise InvalidRequestError(
                f"decision tier {decision.tier!r} is not configured", context={"field": "tier"}
            )
        requirement, _ = self._requirement(decision.sensitivity)
        notes: list[str] = []
        settled = self._settle(decision.tier, requirement, notes, strict_above=True)
        if settled is None:
            return None
        chosen, targets = settled
        reason = "; ".join(
            [f"cascade from tier {decision.tier!r} to {chosen!r}: {because}", *notes]
        )
        return RouteDecision(
            chosen, targets, reason, decision.task_class, decision.risk, decision.sensitivity
        )
