"""Model calls as governed calls: configured models as gateway targets, and routed completion.

A ``ModelTarget`` wraps a provider and a model name so the gateway can resolve, price, execute
and record a model call exactly like a tool call (same identity, policy, ledger and audit). The
gateway knows nothing about models beyond that; models know nothing about governance.

``ModelCaller.complete`` is what an agent calls: it asks the Router which targets fit the task
(tier, risk, data sensitivity), makes one governed call per attempt, falls back to the next
target on provider errors and cascades to a higher tier when the caller's verifier is not
confident. Every attempt is its own audited call; the route and the reason for each attempt are
in the call's record.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from keel.core import ZERO_COST, Cost
from keel.errors import (
    InvalidRequestError,
    KeelError,
    ModelError,
    RateLimited,
    UsageError,
)
from keel.gateway import CallRequest, CallResult, Gateway
from keel.gateway.breaker import CircuitOpen
from keel.models import (
    ModelRequest,
    ModelResponse,
    PriceBook,
    Provider,
    RouteDecision,
    Router,
    complete_sync,
    estimate_input_tokens,
)
from keel.tools import Tool, ToolContext, ToolRegistry, ToolSpec, check_model_name

__all__ = ["ModelCaller", "ModelCatalog", "ModelOutcome", "ModelTarget", "Targets"]

MODEL_SCOPE = "models:invoke"


class _RequestValidator:
    """Arguments of a model call are a ModelRequest in dict form; unknown fields are refused."""

    def __init__(self, model: str) -> None:
        self._model = model
        self.json_schema: Mapping[str, Any] = {
            "type": "object",
            "description": "a model request (keel.models.ModelRequest.to_dict())",
            "required": ["messages", "max_tokens"],
        }

    def validate(self, tool: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        data = dict(raw)
        model = data.setdefault("model", self._model)
        if model != self._model:
            raise InvalidRequestError(
                f"the request names model {model!r} but was sent to {self._model!r}",
                code="invalid_arguments",
                context={"tool": tool},
            )
        return ModelRequest.from_dict(data).to_dict()


class ModelTarget(Tool):
    """A configured model, executable by the gateway. Thread-safe.

    Its effect is ``read`` (a model call changes nothing in the world); its scope is
    ``models:invoke``. Cost: reserved at the worst case (input estimate × input price +
    ``max_tokens`` × output price, × ``n``), settled from the provider-reported usage, priced by
    the requested model name (providers answer with dated ids that config prices would miss).
    """

    def __init__(
        self,
        name: str,
        provider: Provider,
        prices: PriceBook,
        *,
        provider_model: str | None = None,
        timeout: float = 120.0,
        self_hosted: bool = False,
    ) -> None:
        check_model_name(name)
        self.provider = provider
        self.provider_model = provider_model or name
        self.prices = prices
        self.self_hosted = self_hosted
        self.is_async = True
        self.spec = ToolSpec(
            name=name,
            description=f"model {self.provider_model} via {provider.name}",
            arguments=_RequestValidator(name),
            scope=MODEL_SCOPE,
            effect="read",
            kind="model",
            timeout=_dt.timedelta(seconds=timeout),
            idempotent=True,
        )
        # An unknown price must stop the call before anything is sent (PriceUnknown).
        self.prices.price(provider.name, self.provider_model)

    def _request(self, arguments: Mapping[str, Any]) -> ModelRequest:
        request = ModelRequest.from_dict(arguments)
        if self.provider_model != self.spec.name:
            request = ModelRequest.from_dict({**request.to_dict(), "model": self.provider_model})
        return request

    def estimate_cost(self, arguments: dict[str, Any]) -> Cost:
        request = self._request(arguments)
        return Cost(
            usd=self.prices.worst_case(self.provider.name, request),
            input_tokens=estimate_input_tokens(request) * request.n,
            output_tokens=request.max_tokens * request.n,
        )

    def actual_cost(self, arguments: dict[str, Any], result: Any) -> Cost:
        response = ModelResponse.from_dict(result)
        if response.cached:
            return ZERO_COST
        usage = response.usage
        return Cost(
            usd=self.prices.cost(self.provider.name, self.provider_model, usage),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )

    def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        return complete_sync(self.provider, self._request(arguments)).to_dict()

    async def ainvoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        return (await self.provider.complete(self._request(arguments))).to_dict()


class ModelCatalog:
    """The models this Keel can call, by name. Registration is thread-safe."""

    def __init__(self, prices: PriceBook) -> None:
        self.prices = prices
        self._models: dict[str, ModelTarget] = {}
        self._lock = threading.Lock()

    def add(
        self,
        name: str,
        provider: Provider,
        *,
        provider_model: str | None = None,
        self_hosted: bool = False,
        timeout: float = 120.0,
    ) -> ModelTarget:
        target = ModelTarget(
            name,
            provider,
            self.prices,
            provider_model=provider_model,
            self_hosted=self_hosted,
            timeout=timeout,
        )
        with self._lock:
            if name in self._models:
                raise UsageError(f"a model named {name!r} is already configured")
            self._models = {**self._models, name: target}
        return target

    def get(self, name: object) -> ModelTarget:
        target = self._models.get(name) if isinstance(name, str) else None
        if target is not None:
            return target
        checked = check_model_name(name)
        raise InvalidRequestError(
            f"no model named {checked!r} is configured",
            code="unknown_model",
            context={"model": checked},
        )

    def names(self) -> list[str]:
        return sorted(self._models)


class Targets:
    """The gateway's resolver: tools from the registry, models from the catalog."""

    def __init__(self, tools: ToolRegistry, models: ModelCatalog) -> None:
        self.tools = tools
        self.models = models

    def resolve(self, kind: Literal["tool", "model"], name: object) -> Tool:
        if kind == "model":
            return self.models.get(name)
        return self.tools.get(name)


@dataclass(frozen=True)
class ModelOutcome:
    """The result of a routed model call: the response and every attempt that led to it."""

    response: ModelResponse
    result: CallResult
    route: RouteDecision | None
    attempts: tuple[dict[str, Any], ...] = field(default=())

    @property
    def cost(self) -> Decimal:
        return sum((Decimal(a.get("cost_usd", "0")) for a in self.attempts), Decimal("0"))


Verifier = Callable[[ModelResponse], float]


class ModelCaller:
    """Routed, governed model calls for one agent token source. Thread-safe."""

    #: Errors after which the next target is tried (the provider failed, not governance).
    FALLBACK_ERRORS: tuple[type[KeelError], ...] = (ModelError, RateLimited, CircuitOpen)

    def __init__(self, gateway: Gateway, router: Router | None = None) -> None:
        self._gateway = gateway
        self._router = router

    def complete(
        self,
        token: Callable[[], str],
        request: ModelRequest | Mapping[str, Any],
        *,
        tier: str | None = None,
        task_class: str | None = None,
        risk: Literal["read", "reversible", "irreversible"] | None = None,
        sensitivity: str | None = None,
        verify: Verifier | None = None,
        min_confidence: float = 0.85,
        run_id: str | None = None,
        step_id: str | None = None,
        workflow: str | None = None,
        tainted: bool = False,
    ) -> ModelOutcome:
        """Route ``request`` and make governed calls until one succeeds (and verifies).

        Without a router, the request's own ``model`` is called once. Governance errors
        (policy, budget, kill switch, authentication) are raised at once: they are never
        "fallen back" around. Provider failures fall back to the next target of the tier; a
        verifier score below ``min_confidence`` cascades to the next tier.
        """
        data = request.to_dict() if isinstance(request, ModelRequest) else dict(request)
        decision: RouteDecision | None = None
        if self._router is not None and (tier or task_class or not data.get("model")):
            decision = self._router.route(task_class, risk=risk, sensitivity=sensitivity, tier=tier)
            targets = [t.model for t in decision.targets]
        elif data.get("model"):
            targets = [str(data["model"])]
        else:
            raise UsageError("a model request needs a 'model' or a router with a tier")
        attempts: list[dict[str, Any]] = []
        last_error: KeelError | None = None
        while True:
            for model in targets:
                attempt = len(attempts)
                meta: dict[str, Any] = {"attempt": attempt}
                if decision is not None:
                    meta["route"] = decision.to_record()
                if last_error is not None:
                    meta["fallback_after"] = last_error.code
                try:
                    result = self._gateway.call(
                        CallRequest(
                            kind="model",
                            tool=model,
                            arguments={**data, "model": model},
                            token=token(),
                            run_id=run_id,
                            step_id=step_id
                            if attempt == 0 or step_id is None
                            else f"{step_id}.{attempt}",
                            workflow=workflow,
                            tainted=tainted,
                            metadata=meta,
                        )
                    )
                except self.FALLBACK_ERRORS as exc:
                    attempts.append({"model": model, "error": exc.code})
                    last_error = exc
                    continue
                response = ModelResponse.from_dict(result.value)
                attempts.append(
                    {"model": model, "cost_usd": str(result.cost.usd), "cached": result.cached}
                )
                if verify is not None and decision is not None:
                    confidence = verify(response)
                    if confidence < min_confidence:
                        attempts[-1]["confidence"] = confidence
                        escalated = self._router.cascade(decision) if self._router else None
                        if escalated is not None:
                            decision = escalated
                            targets = [t.model for t in decision.targets]
                            break
                return ModelOutcome(response, result, decision, tuple(attempts))
            else:
                assert last_error is not None
                raise last_error
