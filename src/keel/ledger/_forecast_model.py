"""Observations and calibration of the forecast's ATFM factors (private; the public surface and
the description of the model are in ``keel.ledger.forecast``)."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from keel.errors import InvalidRequestError, UsageError
from keel.ledger._forecast_stats import quantile, spearman

__all__ = [
    "MIN_OBSERVATIONS",
    "Calibration",
    "FactorSummary",
    "InsufficientHistory",
    "InvalidObservation",
    "MixedWorkflows",
    "RunFactors",
    "RunObservation",
    "Scenario",
    "calibrate",
    "check_history",
    "money",
]

#: Fewest runs a forecast is calibrated on: with 20 runs the P90 rests on the top two.
MIN_OBSERVATIONS = 20

MICRO = Decimal("0.000001")


class InsufficientHistory(UsageError):
    """Too few recorded runs to calibrate on (or to hold out). ``context``: ``workflow``,
    ``observations``, ``minimum``."""

    code = "forecast_insufficient_history"


class MixedWorkflows(UsageError):
    """The runs belong to several workflows; forecast each one separately. ``context``:
    ``workflows`` (sorted, at most ten)."""

    code = "forecast_mixed_workflows"


class InvalidObservation(InvalidRequestError):
    """A run observation is malformed or inconsistent. ``context``: ``run_id``, ``field``."""

    code = "forecast_invalid_observation"


def money(value: float) -> Decimal:
    """A float USD amount as Decimal micro-dollars (half-even); the only float→money edge."""
    return Decimal(value).quantize(MICRO, rounding=ROUND_HALF_EVEN)


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True, kw_only=True)
class RunObservation:
    """What one recorded run of a workflow spent; extracted from the run's journal and ledger.

    ``iterations`` counts loop iterations (model calls that are not retries); ``retries`` counts
    the extra model calls made to recover from ``errors`` (failed model or tool calls), so a run
    made ``iterations + retries`` model calls. ``input_tokens``, ``output_tokens`` and ``cost_usd``
    cover every call of the run, retries included; ``cost_usd`` may include tool spend (it is then
    carried by the effective price). ``started_at`` is timezone-aware; it orders the history for
    back-tests. Construction validates the figures and raises :class:`InvalidObservation` naming
    the field: counts are integers ≥ 0, money a finite ``Decimal`` ≥ 0, a run without iterations
    has no tokens or retries, and retries need errors.
    """

    workflow: str
    run_id: str
    iterations: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    started_at: _dt.datetime
    errors: int = 0
    retries: int = 0
    completed: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InvalidObservation:
            return InvalidObservation(
                f"run {self.run_id!r}: {name} {why}",
                context={"run_id": str(self.run_id), "field": name},
            )

        for name in ("workflow", "run_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise bad(name, "must be a non-empty string")
        for name in ("iterations", "input_tokens", "output_tokens", "errors", "retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, f"must be an integer ≥ 0, got {value!r}")
        cost = self.cost_usd
        if not isinstance(cost, Decimal) or not cost.is_finite() or cost < 0:
            raise bad("cost_usd", f"must be a finite Decimal ≥ 0 (money is never float): {cost!r}")
        when = self.started_at
        if not isinstance(when, _dt.datetime) or when.utcoffset() is None:
            raise bad("started_at", "must be a timezone-aware datetime")
        if not isinstance(self.completed, bool):
            raise bad("completed", "must be a bool")
        if self.iterations == 0 and (self.retries or self.input_tokens or self.output_tokens):
            raise bad("iterations", "is 0 but the run has retries or tokens")
        if self.retries and not self.errors:
            raise bad("retries", "> 0 needs errors > 0 (a retry answers a failed call)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A what-if applied to every drawn run before it is priced.

    ``price_factor`` scales the effective price per token (new list prices, another model);
    ``error_rate_factor`` scales the error probability (0.5: half the failures);
    ``max_iterations`` stops runs at a lower iteration cap (tokens per call are kept, which
    slightly overstates runs whose context grows with every iteration: conservative).
    """

    price_factor: Decimal = Decimal(1)
    error_rate_factor: float = 1.0
    max_iterations: int | None = None

    def __post_init__(self) -> None:
        pf = self.price_factor
        if not isinstance(pf, Decimal) or not pf.is_finite() or pf < 0:
            raise InvalidRequestError(
                f"price_factor must be a finite Decimal ≥ 0, got {pf!r}",
                context={"field": "price_factor"},
            )
        ef = self.error_rate_factor
        if isinstance(ef, bool) or not isinstance(ef, int | float) or not 0 <= ef < math.inf:
            raise InvalidRequestError(
                f"error_rate_factor must be a finite number ≥ 0, got {ef!r}",
                context={"field": "error_rate_factor"},
            )
        cap = self.max_iterations
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise InvalidRequestError(
                f"max_iterations must be an integer ≥ 1 or None, got {cap!r}",
                context={"field": "max_iterations"},
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "price_factor": str(self.price_factor),
            "error_rate_factor": self.error_rate_factor,
            "max_iterations": self.max_iterations,
        }


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True, slots=True)
class RunFactors:
    """The ATFM factors of one run; ``cost()`` recomposes the run's cost from them.

    ``tokens_per_call`` is input-equivalent (``input + ρ·output`` per call); ``price_per_token``
    is USD per input-equivalent token; ``fixed_cost`` is spend not carried by tokens (USD).
    """

    iterations: int
    input_tokens_per_call: float
    output_tokens_per_call: float
    tokens_per_call: float
    price_per_token: float
    error_probability: float
    retry_multiplier: float
    fixed_cost: float = 0.0

    @property
    def reflection_expansion_factor(self) -> float:
        return 1.0 + self.error_probability * self.retry_multiplier

    def cost(self, scenario: Scenario | None = None) -> float:
        """``I · t · p · (1 + e·m) + fixed`` in USD (float), after ``scenario`` if given."""
        iterations = float(self.iterations)
        price = self.price_per_token
        error = self.error_probability
        if scenario is not None:
            if scenario.max_iterations is not None:
                iterations = min(iterations, float(scenario.max_iterations))
            price *= float(scenario.price_factor)
            error *= scenario.error_rate_factor
        ref = 1.0 + error * self.retry_multiplier
        return iterations * self.tokens_per_call * price * ref + self.fixed_cost


@dataclass(frozen=True, slots=True)
class FactorSummary:
    """One calibrated input: its distribution over runs (floats, in ``unit``).

    ``pooled`` is the ratio of totals (e.g. all errors / all iterations); ``runs`` is how many
    runs define the factor (e.g. only runs with errors define the retry multiplier).
    """

    unit: str
    runs: int
    pooled: float
    mean: float
    p10: float
    p50: float
    p90: float
    min: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "runs": self.runs,
            "pooled": self.pooled,
            "mean": self.mean,
            "p10": self.p10,
            "p50": self.p50,
            "p90": self.p90,
            "min": self.min,
            "max": self.max,
        }


def _summary(unit: str, values: Sequence[float], pooled: float) -> FactorSummary:
    if not values:
        return FactorSummary(unit, 0, pooled, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    s = sorted(values)
    mean = math.fsum(s) / len(s)
    return FactorSummary(
        unit,
        len(s),
        pooled,
        mean,
        quantile(s, 0.1),
        quantile(s, 0.5),
        quantile(s, 0.9),
        s[0],
        s[-1],
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Calibration:
    """The calibrated ATFM inputs of one workflow, from ``observations_used`` recorded runs.

    ``factors`` holds every run's factors (the joint distribution the Monte Carlo draws from);
    ``costs`` the runs' observed costs in USD (floats, same order); ``inputs`` summarizes each
    factor; ``parameters`` holds scalar fits and diagnostics (``output_price_ratio``, Spearman
    correlations between factors, ``fixed_cost_share``). ``output_price_ratio_source`` says where
    ρ came from: ``given`` by the caller, ``fitted`` on the history, or ``default`` (1.0, the fit
    was degenerate).
    """

    workflow: str
    observations_used: int
    output_price_ratio: float
    output_price_ratio_source: Literal["given", "fitted", "default"]
    factors: tuple[RunFactors, ...]
    costs: tuple[float, ...]
    inputs: Mapping[str, FactorSummary]
    parameters: Mapping[str, float]
    completion_rate: float
    first_started_at: _dt.datetime
    last_started_at: _dt.datetime


def check_history(observations: Sequence[RunObservation]) -> str:
    """The single workflow of ``observations``, or a UsageError saying what is wrong."""
    if not observations:
        raise InsufficientHistory(
            "no recorded runs to forecast from",
            context={"workflow": None, "observations": 0, "minimum": MIN_OBSERVATIONS},
        )
    for obs in observations:
        if not isinstance(obs, RunObservation):
            raise InvalidRequestError(
                f"expected RunObservation, got {type(obs).__name__}",
                context={"type": type(obs).__name__},
            )
    workflows = sorted({o.workflow for o in observations})
    if len(workflows) > 1:
        shown = ", ".join(repr(w) for w in workflows[:10])
        raise MixedWorkflows(
            f"runs of {len(workflows)} workflows ({shown}); forecast one workflow at a time",
            context={"workflows": workflows[:10]},
        )
    seen: set[str] = set()
    for obs in observations:
        if obs.run_id in seen:
            raise InvalidObservation(
                f"run {obs.run_id!r} appears twice in the history",
                context={"run_id": obs.run_id, "field": "run_id"},
            )
        seen.add(obs.run_id)
    return workflows[0]


def _fit_output_price_ratio(observations: Sequence[RunObservation]) -> float | None:
    """Least squares of cost on (input, output) tokens through the origin; the ratio of the two
    coefficients, or None when the fit is degenerate (collinear, or a coefficient ≤ 0)."""
    sii = sio = soo = sic = soc = 0.0
    for o in observations:
        i, out, c = float(o.input_tokens), float(o.output_tokens), float(o.cost_usd)
        sii += i * i
        sio += i * out
        soo += out * out
        sic += i * c
        soc += out * c
    det = sii * soo - sio * sio
    if sii <= 0 or soo <= 0 or det <= 1e-9 * sii * soo:
        return None
    a = (sic * soo - soc * sio) / det
    b = (soc * sii - sic * sio) / det
    if a <= 0 or b <= 0:
        return None
    return b / a


def calibrate(
    observations: Sequence[RunObservation], *, output_price_ratio: float | None = None
) -> Calibration:
    """Calibrate the ATFM inputs of one workflow from its recorded runs.

    ``output_price_ratio`` (output/input price per token) may be given from the price table;
    otherwise it is fitted (see the module docstring). Raises :class:`InsufficientHistory` below
    :data:`MIN_OBSERVATIONS` runs, :class:`MixedWorkflows`, or :class:`InvalidObservation` for a
    duplicated run id.
    """
    workflow = check_history(observations)
    n = len(observations)
    if n < MIN_OBSERVATIONS:
        raise InsufficientHistory(
            f"workflow {workflow!r} has {n} recorded runs; a forecast needs at least "
            f"{MIN_OBSERVATIONS} (the P90 of fewer runs rests on one run)",
            context={"workflow": workflow, "observations": n, "minimum": MIN_OBSERVATIONS},
        )
    if output_price_ratio is not None and not 0 < output_price_ratio < math.inf:
        raise InvalidRequestError(
            f"output_price_ratio must be a positive finite number, got {output_price_ratio!r}",
            context={"field": "output_price_ratio"},
        )
    source: Literal["given", "fitted", "default"] = "given"
    rho = output_price_ratio
    if rho is None:
        rho = _fit_output_price_ratio(observations)
        source = "default" if rho is None else "fitted"
        rho = 1.0 if rho is None else rho

    factors: list[RunFactors] = []
    costs: list[float] = []
    for o in observations:
        cost = float(o.cost_usd)
        calls = o.iterations + o.retries
        weighted = o.input_tokens + rho * o.output_tokens
        if calls == 0:
            factors.append(RunFactors(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, cost))
        else:
            factors.append(
                RunFactors(
                    iterations=o.iterations,
                    input_tokens_per_call=o.input_tokens / calls,
                    output_tokens_per_call=o.output_tokens / calls,
                    tokens_per_call=weighted / calls,
                    price_per_token=cost / weighted if weighted > 0 else 0.0,
                    error_probability=o.errors / o.iterations,
                    retry_multiplier=o.retries / o.errors if o.errors else 0.0,
                    fixed_cost=0.0 if weighted > 0 else cost,
                )
            )
        costs.append(cost)

    active = [(o, f) for o, f in zip(observations, factors, strict=True) if f.iterations > 0]
    priced = [(o, f) for o, f in active if f.price_per_token > 0]
    erring = [(o, f) for o, f in active if o.errors > 0]
    total_calls = sum(o.iterations + o.retries for o, _ in active)
    total_iterations = sum(o.iterations for o, _ in active)
    total_errors = sum(o.errors for o, _ in active)
    total_retries = sum(o.retries for o, _ in active)
    priced_weight = math.fsum(o.input_tokens + rho * o.output_tokens for o, _ in priced)
    priced_cost = math.fsum(float(o.cost_usd) for o, _ in priced)
    fixed_total = math.fsum(f.fixed_cost for f in factors)

    inputs = {
        "iterations": _summary(
            "iterations per run", [float(f.iterations) for f in factors], total_iterations / n
        ),
        "input_tokens_per_call": _summary(
            "input tokens per model call",
            [f.input_tokens_per_call for _, f in active],
            _ratio(sum(o.input_tokens for o, _ in active), total_calls),
        ),
        "output_tokens_per_call": _summary(
            "output tokens per model call",
            [f.output_tokens_per_call for _, f in active],
            _ratio(sum(o.output_tokens for o, _ in active), total_calls),
        ),
        "price_per_1k_tokens": _summary(
            "USD per 1K input-equivalent tokens",
            [f.price_per_token * 1000 for _, f in priced],
            _ratio(priced_cost, priced_weight) * 1000,
        ),
        "error_probability": _summary(
            "failed calls per iteration",
            [f.error_probability for _, f in active],
            _ratio(total_errors, total_iterations),
        ),
        "retry_multiplier": _summary(
            "retry calls per failed call",
            [f.retry_multiplier for _, f in erring],
            _ratio(total_retries, total_errors),
        ),
        "reflection_expansion_factor": _summary(
            "1 + error probability × retry multiplier",
            [f.reflection_expansion_factor for _, f in active],
            1.0 + _ratio(total_retries, total_iterations),
        ),
    }
    its = [float(f.iterations) for _, f in priced]
    tpc = [f.tokens_per_call for _, f in priced]
    price = [f.price_per_token for _, f in priced]
    ref = [f.reflection_expansion_factor for _, f in priced]
    parameters = {
        "output_price_ratio": rho,
        "spearman_iterations_tokens_per_call": spearman(its, tpc),
        "spearman_iterations_price": spearman(its, price),
        "spearman_tokens_per_call_price": spearman(tpc, price),
        "spearman_iterations_reflection": spearman(its, ref),
        "fixed_cost_share": _ratio(fixed_total, math.fsum(costs)),
    }
    started = [o.started_at for o in observations]
    return Calibration(
        workflow=workflow,
        observations_used=n,
        output_price_ratio=rho,
        output_price_ratio_source=source,
        factors=tuple(factors),
        costs=tuple(costs),
        inputs=inputs,
        parameters=parameters,
        completion_rate=sum(o.completed for o in observations) / n,
        first_started_at=min(started),
        last_started_at=max(started),
    )
