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
from collections.abc import AsyncIterator, Callable, Generator, Mapping
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
    StreamChunk,
    complete_sync,
    estimate_input_tokens,
)
from keel.runtime.streaming import GovernedStream
from keel.tools import Tool, ToolContext, ToolRegistry, ToolSpec, check_model_name

__all__ = ["ModelCaller", "ModelCatalog", "ModelOutcome", "ModelTarget", "Targets"]

MODEL_SCOPE = "models:invoke"
_MILLION = Decimal(1_000_000)


class _RequestValidator:
    """Arguments of a model call are a ModelRequest in dict form; unknown fields are refused."""

    def __init__(self, model: str, parsed: _Parsed) -> None:
        self._model = model
        self._parsed = parsed
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
        request = ModelRequest.from_dict(data)
        arguments = request.to_dict()
        self._parsed.remember(arguments, request)
        return arguments


class _Parsed:
    """The ModelRequest of recent validated arguments, so one call parses its request once
    (the gateway hands the same arguments object to estimate, execute and settle). Keyed by the
    object's identity and checked against it; bounded; thread-safe (single dict operations)."""

    LIMIT = 256

    def __init__(self) -> None:
        self._recent: dict[int, tuple[Mapping[str, Any], ModelRequest]] = {}

    def remember(self, arguments: Mapping[str, Any], request: ModelRequest) -> None:
        if len(self._recent) >= self.LIMIT:
            self._recent.clear()
        self._recent[id(arguments)] = (arguments, request)

    def get(self, arguments: Mapping[str, Any]) -> ModelRequest:
        found = self._recent.get(id(arguments))
        if found is not None and found[0] is arguments:
            return found[1]
        return ModelRequest.from_dict(arguments)


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
        self._parsed = _Parsed()
        self.spec = ToolSpec(
            name=name,
            description=f"model {self.provider_model} via {provider.name}",
            arguments=_RequestValidator(name, self._parsed),
            scope=MODEL_SCOPE,
            effect="read",
            kind="model",
            timeout=_dt.timedelta(seconds=timeout),
            idempotent=True,
        )
        # An unknown price must stop the call before anything is sent (PriceUnknown).
        self.prices.price(provider.name, self.provider_model)

    def _request(self, arguments: Mapping[str, Any]) -> ModelRequest:
        request = self._parsed.get(arguments)
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

    def output_cost(self, arguments: dict[str, Any], tokens: int) -> Cost:
        """What ``tokens`` more output tokens of this request cost (to grow a stream's hold)."""
        request = self._request(arguments)
        rates = self.prices.price(self.provider.name, self.provider_model).rates(
            estimate_input_tokens(request)
        )
        return Cost(usd=tokens * rates.output_per_mtok / _MILLION, output_tokens=tokens)

    def astream(
        self, arguments: dict[str, Any], context: ToolContext
    ) -> AsyncIterator[StreamChunk]:
        """The provider's stream of this request (the last chunk carries the response)."""
        return self.provider.stream(self._request(arguments))

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


@dataclass(frozen=True)
class _Plan:
    """What a routed model call will try: the route (if any) and its targets, in order."""

    data: dict[str, Any]
    decision: RouteDecision | None
    targets: list[str]


class ModelCaller:
    """Routed, governed model calls for one agent token source. Thread-safe.

    ``complete`` (blocking), ``acomplete`` (async) and ``astream`` (async, streamed) share one
    routing rule: a router picks targets when a tier or task class is given (or the request
    names no model), else the request's own ``model`` is called.
    """

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
        trace_id: str | None = None,
    ) -> ModelOutcome:
        """Route ``request`` and make governed calls until one succeeds (and verifies).

        Without a router, the request's own ``model`` is called once. Governance errors
        (policy, budget, kill switch, authentication) are raised at once: they are never
        "fallen back" around. Provider failures fall back to the next target of the tier; a
        verifier score below ``min_confidence`` cascades to the next tier.
        """
        plan = self._plan(request, tier, task_class, risk, sensitivity)
        steps = self._drive(
            plan, token, verify, min_confidence, run_id, step_id, workflow, tainted, trace_id
        )
        step: CallRequest | ModelOutcome = next(steps)
        while isinstance(step, CallRequest):
            try:
                result = self._gateway.call(step)
            except self.FALLBACK_ERRORS as exc:
                step = _resume(steps, error=exc)
            else:
                step = _resume(steps, result=result)
        return step

    async def acomplete(
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
        trace_id: str | None = None,
    ) -> ModelOutcome:
        """:meth:`complete` for async code: the provider is awaited on the running loop."""
        plan = self._plan(request, tier, task_class, risk, sensitivity)
        steps = self._drive(
            plan, token, verify, min_confidence, run_id, step_id, workflow, tainted, trace_id
        )
        step: CallRequest | ModelOutcome = next(steps)
        while isinstance(step, CallRequest):
            try:
                result = await self._gateway.acall(step)
            except self.FALLBACK_ERRORS as exc:
                step = _resume(steps, error=exc)
            else:
                step = _resume(steps, result=result)
        return step

    def astream(
        self,
        token: Callable[[], str],
        request: ModelRequest | Mapping[str, Any],
        *,
        tier: str | None = None,
        task_class: str | None = None,
        risk: Literal["read", "reversible", "irreversible"] | None = None,
        sensitivity: str | None = None,
        run_id: str | None = None,
        step_id: str | None = None,
        workflow: str | None = None,
        tainted: bool = False,
        trace_id: str | None = None,
        recheck_every: float = 1.0,
    ) -> GovernedStream:
        """Stream a governed model call (see ``keel.runtime.streaming``): iterate the result
        for chunks as the provider sends them (the last carries the response); afterwards its
        ``result`` is the recorded CallResult."""
        plan = self._plan(request, tier, task_class, risk, sensitivity)

        def attempt(number: int, model: str, last_error: KeelError | None) -> CallRequest:
            return self._call(
                plan,
                model,
                number,
                token,
                run_id,
                step_id,
                workflow,
                tainted,
                trace_id,
                last_error,
            )

        return GovernedStream(
            self._gateway, plan.targets, attempt, self.FALLBACK_ERRORS, recheck_every
        )

    # -- shared ----------------------------------------------------------------------------------

    def _plan(
        self,
        request: ModelRequest | Mapping[str, Any],
        tier: str | None,
        task_class: str | None,
        risk: Literal["read", "reversible", "irreversible"] | None,
        sensitivity: str | None,
    ) -> _Plan:
        data = request.to_dict() if isinstance(request, ModelRequest) else dict(request)
        if self._router is not None and (tier or task_class or not data.get("model")):
            decision = self._router.route(task_class, risk=risk, sensitivity=sensitivity, tier=tier)
            return _Plan(data, decision, [t.model for t in decision.targets])
        if data.get("model"):
            return _Plan(data, None, [str(data["model"])])
        raise UsageError("a model request needs a 'model' or a router with a tier")

    @staticmethod
    def _call(
        plan: _Plan,
        model: str,
        attempt: int,
        token: Callable[[], str],
        run_id: str | None,
        step_id: str | None,
        workflow: str | None,
        tainted: bool,
        trace_id: str | None,
        last_error: KeelError | None,
    ) -> CallRequest:
        meta: dict[str, Any] = {"attempt": attempt}
        if plan.decision is not None:
            meta["route"] = plan.decision.to_record()
        if last_error is not None:
            meta["fallback_after"] = last_error.code
        return CallRequest(
            kind="model",
            tool=model,
            arguments={**plan.data, "model": model},
            token=token(),
            run_id=run_id,
            step_id=step_id if attempt == 0 or step_id is None else f"{step_id}.{attempt}",
            workflow=workflow,
            tainted=tainted,
            trace_id=trace_id,
            metadata=meta,
        )

    def _drive(
        self,
        plan: _Plan,
        token: Callable[[], str],
        verify: Verifier | None,
        min_confidence: float,
        run_id: str | None,
        step_id: str | None,
        workflow: str | None,
        tainted: bool,
        trace_id: str | None,
    ) -> Generator[CallRequest, CallResult, ModelOutcome]:
        """The routing loop, written once: yields each call to make; is sent its result, or
        thrown the fallback error it raised; returns the outcome (or raises the last error)."""
        attempts: list[dict[str, Any]] = []
        last_error: KeelError | None = None
        decision = plan.decision
        targets = plan.targets
        while True:
            for model in targets:
                attempt = len(attempts)
                current = _Plan(plan.data, decision, targets)
                request = self._call(
                    current,
                    model,
                    attempt,
                    token,
                    run_id,
                    step_id,
                    workflow,
                    tainted,
                    trace_id,
                    last_error,
                )
                try:
                    result = yield request
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


def _resume(
    steps: Generator[CallRequest, CallResult, ModelOutcome],
    *,
    result: CallResult | None = None,
    error: KeelError | None = None,
) -> CallRequest | ModelOutcome:
    """Advance the routing loop with a call's result or error: the next call, or the outcome."""
    try:
        if error is not None:
            return steps.throw(error)
        assert result is not None
        return steps.send(result)
    except StopIteration as stop:
        outcome: ModelOutcome = stop.value
        return outcome
