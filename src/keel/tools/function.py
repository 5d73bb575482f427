"""The function adapter: a plain Python function (sync or async) as a governed tool.

The argument model is derived from the signature (like FastAPI): each parameter becomes a field,
unknown fields are refused. A parameter annotated ``ToolContext`` receives the call context
instead. A single parameter annotated with a Pydantic model makes that model the argument schema
and receives the validated instance. The return annotation, if any, is the result contract.

Timeouts: async functions are cancelled at their timeout. A sync function runs on the caller's
thread when called through the sync API (it cannot be pre-empted; an overrun is reported as a
``ToolTimeout`` only if the function has not produced a result) and in a worker thread under
``asyncio.wait_for`` when called through the async API.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import typing
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import pydantic

from keel.core import Cost, Effect
from keel.errors import ToolTimeout, UsageError
from keel.tools.contract import (
    ArgumentValidator,
    JSONSchemaValidator,
    ModelValidator,
    ReconcileHook,
    ToolContext,
    ToolSpec,
)

__all__ = ["FunctionTool", "Tool"]


class Tool:
    """A tool Keel can execute: a contract plus an invoker. Adapters subclass this.

    ``invoke`` and ``ainvoke`` receive arguments already validated against the contract and
    return the raw result; they raise ``keel.errors.ToolError`` (or anything: the gateway wraps
    unexpected exceptions as a non-retryable ToolError). They are called concurrently from many
    threads or tasks and must be thread-safe.
    """

    spec: ToolSpec
    is_async: bool = False

    def estimate_cost(self, arguments: dict[str, Any]) -> Cost:
        """The most this call may cost, reserved before it runs (default: the declared price)."""
        return Cost(usd=self.spec.cost_usd)

    def actual_cost(self, arguments: dict[str, Any], result: Any) -> Cost:
        """What the call cost, settled after it ran (default: the declared price)."""
        return Cost(usd=self.spec.cost_usd)

    def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        raise NotImplementedError

    async def ainvoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        return await asyncio.to_thread(self.invoke, arguments, context)


class FunctionTool(Tool):
    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        scope: str,
        effect: Effect = "read",
        description: str | None = None,
        arguments_schema: Mapping[str, Any] | type[pydantic.BaseModel] | None = None,
        timeout: float | _dt.timedelta = 30.0,
        idempotent: bool = False,
        reconcile: ReconcileHook | None = None,
        cost_usd: Decimal | str | int = 0,
        sensitive: bool = False,
        tags: tuple[str, ...] = (),
    ) -> None:
        self._fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # unresolved forward references
            raise UsageError(f"tool {name}: cannot read type hints of {fn!r}: {exc}") from None
        signature = inspect.signature(fn)
        self._context_param: str | None = None
        self._model_param: str | None = None
        self._model: type[pydantic.BaseModel] | None = None
        fields: dict[str, Any] = {}
        for param in signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise UsageError(f"tool {name}: *args/**kwargs parameters are not allowed")
            annotation = hints.get(param.name, Any)
            if annotation is ToolContext:
                self._context_param = param.name
                continue
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, default)
        validator: ArgumentValidator
        if isinstance(arguments_schema, Mapping):
            validator = JSONSchemaValidator(arguments_schema)
        elif isinstance(arguments_schema, type) and issubclass(
            arguments_schema, pydantic.BaseModel
        ):
            validator = ModelValidator(arguments_schema)
            self._model = validator.model
            if len(fields) != 1:
                raise UsageError(
                    f"tool {name}: with arguments_schema=<model>, the function takes one "
                    "parameter (the model instance) besides an optional ToolContext"
                )
            self._model_param = next(iter(fields))
        elif (
            len(fields) == 1
            and isinstance(only := next(iter(fields.values()))[0], type)
            and issubclass(only, pydantic.BaseModel)
        ):
            validator = ModelValidator(only)
            self._model = validator.model
            self._model_param = next(iter(fields))
        else:
            model = pydantic.create_model(
                _model_name(name),
                __config__=pydantic.ConfigDict(extra="forbid"),
                **fields,
            )
            validator = ModelValidator(model)
        returns = hints.get("return", None)
        result_adapter: pydantic.TypeAdapter[Any] | None = None
        result_schema: dict[str, Any] | None = None
        if returns is not None and returns is not type(None) and returns is not Any:
            result_adapter = pydantic.TypeAdapter(returns)
            result_schema = result_adapter.json_schema()
        self.spec = ToolSpec(
            name=name,
            description=(description or inspect.getdoc(fn) or "").strip(),
            arguments=validator,
            scope=scope,
            effect=effect,
            result_schema=result_schema,
            result_adapter=result_adapter,
            timeout=timeout
            if isinstance(timeout, _dt.timedelta)
            else _dt.timedelta(seconds=timeout),
            idempotent=idempotent,
            reconcile=reconcile,
            cost_usd=Decimal(str(cost_usd)),
            sensitive=sensitive,
            tags=tags,
        )

    def _kwargs(self, arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        if self._model_param is not None and self._model is not None:
            kwargs: dict[str, Any] = {self._model_param: self._model.model_construct(**arguments)}
        else:
            kwargs = dict(arguments)
        if self._context_param is not None:
            kwargs[self._context_param] = context
        return kwargs

    def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        kwargs = self._kwargs(arguments, context)
        if not self.is_async:
            return self._fn(**kwargs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._with_timeout(kwargs))
        raise UsageError(
            f"tool {self.spec.name} is async and the sync API was called inside an event loop; "
            "use the async API (acall)"
        )

    async def _with_timeout(self, kwargs: dict[str, Any]) -> Any:
        try:
            return await asyncio.wait_for(self._fn(**kwargs), self.spec.timeout.total_seconds())
        except TimeoutError:
            raise ToolTimeout(
                f"tool {self.spec.name} did not finish within {self.spec.timeout.total_seconds()}s",
                context={"tool": self.spec.name},
            ) from None

    async def ainvoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        kwargs = self._kwargs(arguments, context)
        if self.is_async:
            return await self._with_timeout(kwargs)
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._fn, **kwargs), self.spec.timeout.total_seconds()
            )
        except TimeoutError:
            raise ToolTimeout(
                f"tool {self.spec.name} did not finish within {self.spec.timeout.total_seconds()}s",
                context={"tool": self.spec.name},
            ) from None


def _model_name(tool: str) -> str:
    return "".join(
        part.capitalize() for part in tool.replace("-", "_").replace(".", "_").split("_")
    )
