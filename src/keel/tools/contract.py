"""Tool contracts: what a tool takes, returns, needs and does to the world.

A ``ToolSpec`` is immutable and knows nothing about governance: the gateway reads it to validate
arguments, check scope, decide and record. Arguments come from a Pydantic model (unknown fields
are always rejected) or from an explicit JSON schema (``additionalProperties`` defaults to false).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

import pydantic

from keel.canonical import canonical_json
from keel.core import Effect
from keel.errors import InvalidRequestError, ToolResultInvalid, UsageError
from keel.tools.names import check_model_name, check_tool_name

__all__ = [
    "ArgumentValidator",
    "JSONSchemaValidator",
    "ModelValidator",
    "ReconcileHook",
    "ToolContext",
    "ToolSpec",
]

_EFFECTS = ("read", "reversible", "irreversible")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may know about the call that invokes it (never the agent's credentials).

    ``idempotency_key`` should be passed to the system of record where it accepts one, so a
    retried call cannot repeat an effect. A tool function receives this object if it declares a
    parameter annotated ``ToolContext``.
    """

    call_id: str
    tool: str
    tenant: str
    agent_id: str
    idempotency_key: str | None = None
    run_id: str | None = None
    step_id: str | None = None
    on_behalf_of: str | None = None


class ReconcileHook(Protocol):
    """Asks the system of record whether a call with this key already took effect.

    Returns the outcome if it did, ``None`` if it did not. Must be safe to call repeatedly.
    """

    def __call__(self, arguments: Mapping[str, Any], context: ToolContext) -> Any: ...


class ArgumentValidator(Protocol):
    """Validates and normalizes raw arguments; raises InvalidRequestError naming the field."""

    @property
    def json_schema(self) -> Mapping[str, Any]: ...

    def validate(self, tool: str, raw: Mapping[str, Any]) -> dict[str, Any]: ...


def _format_pydantic_error(tool: str, exc: pydantic.ValidationError, what: str) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return f"{what} for {tool} are invalid: " + "; ".join(parts) + more


class ModelValidator:
    """Validation through a Pydantic model; ``extra`` fields are always refused."""

    __slots__ = ("_adapter", "json_schema", "model")

    def __init__(self, model: type[pydantic.BaseModel]) -> None:
        if model.model_config.get("extra") != "forbid":
            config = pydantic.ConfigDict(**{**model.model_config, "extra": "forbid"})
            model = type(model.__name__, (model,), {"model_config": config})
        self.model = model
        self.json_schema: Mapping[str, Any] = model.model_json_schema()

    def validate(self, tool: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        try:
            instance = self.model.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise InvalidRequestError(
                _format_pydantic_error(tool, exc, "arguments"),
                code="invalid_arguments",
                context={"tool": tool, "errors": exc.error_count()},
            ) from None
        return {name: getattr(instance, name) for name in type(instance).model_fields}


class JSONSchemaValidator:
    """Validation against an explicit JSON schema (draft 2020-12)."""

    __slots__ = ("_validator", "json_schema")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        import jsonschema

        schema = dict(schema)
        if schema.get("type", "object") != "object":
            raise UsageError("a tool's argument schema must describe an object")
        schema.setdefault("type", "object")
        schema.setdefault("additionalProperties", False)
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise UsageError(f"argument schema is not a valid JSON schema: {exc.message}") from None
        self.json_schema = schema
        self._validator = jsonschema.Draft202012Validator(schema)

    def validate(self, tool: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        errors = sorted(self._validator.iter_errors(raw), key=lambda e: list(e.path))
        if errors:
            parts = [
                f"{'.'.join(str(p) for p in err.path) or '(root)'}: {err.message}"
                for err in errors[:5]
            ]
            raise InvalidRequestError(
                f"arguments for {tool} are invalid: " + "; ".join(parts),
                code="invalid_arguments",
                context={"tool": tool, "errors": len(errors)},
            )
        return dict(raw)


ToolFunction = Callable[..., Any] | Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool's contract.

    ``scope`` is what a principal must hold to call it (``billing:write``). ``effect`` tells
    policy and retries what it does to the world. ``idempotent`` means the tool honours
    idempotency keys (passed in ``ToolContext``), so re-calling with the same key is safe.
    ``cost_usd`` is its declared price per call (the ledger reserves it). ``sensitive`` marks
    outputs that must be encrypted at rest.
    """

    name: str
    description: str
    arguments: ArgumentValidator
    scope: str
    effect: Effect = "read"
    kind: Literal["tool", "model"] = "tool"
    result_schema: Mapping[str, Any] | None = None
    result_adapter: pydantic.TypeAdapter[Any] | None = None
    timeout: _dt.timedelta = _dt.timedelta(seconds=30)
    idempotent: bool = False
    reconcile: ReconcileHook | None = None
    cost_usd: Decimal = Decimal("0")
    sensitive: bool = False
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "model":
            check_model_name(self.name)
        else:
            check_tool_name(self.name)
        if self.effect not in _EFFECTS:
            raise UsageError(
                f"tool {self.name}: effect {self.effect!r} is not one of {', '.join(_EFFECTS)}"
            )
        if not self.scope or not isinstance(self.scope, str):
            raise UsageError(
                f"tool {self.name}: a required scope such as 'billing:write' is needed"
            )
        if self.timeout.total_seconds() <= 0:
            raise UsageError(f"tool {self.name}: timeout must be positive")
        if self.cost_usd < 0:
            raise UsageError(f"tool {self.name}: cost_usd must not be negative")

    def normalize_result(self, value: Any) -> Any:
        """Validate ``value`` against the result contract and return its JSON-safe form."""
        if self.result_adapter is not None:
            try:
                value = self.result_adapter.validate_python(value)
                return self.result_adapter.dump_python(value, mode="json")
            except pydantic.ValidationError as exc:
                raise ToolResultInvalid(
                    _format_pydantic_error(self.name, exc, "result"),
                    context={"tool": self.name},
                ) from None
        if isinstance(value, pydantic.BaseModel):
            return value.model_dump(mode="json")
        try:
            canonical_json(value)
        except InvalidRequestError as exc:
            raise ToolResultInvalid(
                f"tool {self.name} returned a value that is not JSON: {exc.message}",
                context={"tool": self.name},
            ) from None
        return value

    def describe(self) -> dict[str, Any]:
        """The contract as JSON (for listings, MCP tool lists, audit)."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": dict(self.arguments.json_schema),
            "output_schema": dict(self.result_schema) if self.result_schema else None,
            "scope": self.scope,
            "effect": self.effect,
            "idempotent": self.idempotent,
            "timeout_seconds": self.timeout.total_seconds(),
            "cost_usd": str(self.cost_usd),
        }
