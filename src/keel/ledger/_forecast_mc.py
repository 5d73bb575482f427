"""The Monte Carlo forecast of N runs and the constant-input ATFM baseline (private; the public
surface and the description of the model are in ``keel.ledger.forecast``)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from keel.errors import InvalidRequestError
from keel.ledger._forecast_model import (
    Calibration,
    FactorSummary,
    RunFactors,
    RunObservation,
    Scenario,
    calibrate,
    money,
)
from keel.ledger._forecast_stats import moments, quantile, sum_of_draws

__all__ = [
    "DEFAULT_SAMPLES",
    "INDEPENDENT_DRAWS",
    "MIN_SAMPLES",
    "Dependence",
    "Forecast",
    "atfm_point_cost",
    "check_int",
    "forecast",
]

#: Monte Carlo replicates of the total for N runs.
DEFAULT_SAMPLES = 2_000
#: Fewest replicates accepted (below, P10/P90 are too noisy to print).
MIN_SAMPLES = 200
#: Per-run draws made in the ``independent`` comparison mode.
INDEPENDENT_DRAWS = 20_000

Dependence = Literal["joint", "independent"]


@dataclass(frozen=True, slots=True)
class Forecast:
    """The cost of ``runs`` future runs of ``workflow``. Money is Decimal USD (micro-dollars).

    ``per_run_*`` describe one run's cost distribution; ``total_expected`` is ``runs`` times
    ``per_run_mean``; ``total_p10/p50/p90`` are quantiles of the total (the P10–P90 band is a
    central 80% interval). ``inputs`` and ``parameters`` are the calibration's (see
    :class:`Calibration`). ``per_completed_run_mean`` divides by the historical completion rate
    (None when no run completed).
    """

    workflow: str
    runs: int
    per_run_mean: Decimal
    per_run_p10: Decimal
    per_run_p50: Decimal
    per_run_p90: Decimal
    total_expected: Decimal
    total_p10: Decimal
    total_p50: Decimal
    total_p90: Decimal
    inputs: Mapping[str, FactorSummary]
    parameters: Mapping[str, float]
    observations_used: int
    completion_rate: float
    per_completed_run_mean: Decimal | None
    seed: int
    samples: int
    dependence: Dependence = "joint"
    calibration_uncertainty: bool = True
    scenario: Scenario | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: money as decimal strings."""
        pcr = self.per_completed_run_mean
        return {
            "workflow": self.workflow,
            "runs": self.runs,
            "per_run": {
                "mean": str(self.per_run_mean),
                "p10": str(self.per_run_p10),
                "p50": str(self.per_run_p50),
                "p90": str(self.per_run_p90),
            },
            "total": {
                "expected": str(self.total_expected),
                "p10": str(self.total_p10),
                "p50": str(self.total_p50),
                "p90": str(self.total_p90),
            },
            "per_completed_run_mean": None if pcr is None else str(pcr),
            "completion_rate": self.completion_rate,
            "observations_used": self.observations_used,
            "inputs": {k: v.to_dict() for k, v in self.inputs.items()},
            "parameters": dict(self.parameters),
            "seed": self.seed,
            "samples": self.samples,
            "dependence": self.dependence,
            "calibration_uncertainty": self.calibration_uncertainty,
            "scenario": None if self.scenario is None else self.scenario.to_dict(),
        }


def _independent_draws(cal: Calibration, rng: random.Random, k: int) -> list[RunFactors]:
    """``k`` synthetic runs whose factors are drawn independently from their marginals."""
    active = [f for f in cal.factors if f.iterations > 0]
    priced = [f for f in active if f.price_per_token > 0]
    erring = [f for f in active if f.error_probability > 0]
    its = rng.choices([f.iterations for f in cal.factors], k=k)
    tin = rng.choices([f.input_tokens_per_call for f in active] or [0.0], k=k)
    tout = rng.choices([f.output_tokens_per_call for f in active] or [0.0], k=k)
    price = rng.choices([f.price_per_token for f in priced] or [0.0], k=k)
    err = rng.choices([f.error_probability for f in active] or [0.0], k=k)
    mult = rng.choices([f.retry_multiplier for f in erring] or [0.0], k=k)
    fixed = rng.choices([f.fixed_cost for f in cal.factors], k=k)
    rho = cal.output_price_ratio
    return [
        RunFactors(
            its[j], tin[j], tout[j], tin[j] + rho * tout[j], price[j], err[j], mult[j], fixed[j]
        )
        for j in range(k)
    ]


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequestError(
            f"{name} must be an integer ≥ {minimum}, got {value!r}", context={"field": name}
        )
    return value


def forecast(
    history: Sequence[RunObservation] | Calibration,
    runs: int,
    *,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    dependence: Dependence = "joint",
    scenario: Scenario | None = None,
    calibration_uncertainty: bool = True,
) -> Forecast:
    """Forecast the cost of ``runs`` future runs from recorded runs (or a :class:`Calibration`).

    Deterministic for a given ``seed``: the same history and arguments give the same Forecast.
    ``samples`` Monte Carlo replicates of the total (≥ 200). ``dependence="independent"`` draws
    each factor from its own marginal (biased; for comparison). Raises the calibration's errors and
    ``InvalidRequestError`` for bad arguments. Runs in O(samples × (runs + history)) up to the
    exact-sum limit, O(samples) beyond.
    """
    cal = history if isinstance(history, Calibration) else calibrate(history)
    check_int("runs", runs, 1)
    check_int("samples", samples, MIN_SAMPLES)
    check_int("seed", seed, -(2**63))
    if dependence not in ("joint", "independent"):
        raise InvalidRequestError(
            f"dependence must be 'joint' or 'independent', got {dependence!r}",
            context={"field": "dependence"},
        )
    rng = random.Random(seed)
    if dependence == "joint":
        draws: Sequence[RunFactors] = cal.factors
    else:
        draws = _independent_draws(cal, rng, INDEPENDENT_DRAWS)
    if dependence == "joint" and scenario is None:
        pool = list(cal.costs)  # equal to f.cost() up to float rounding: keep the exact figures
    else:
        pool = [f.cost(scenario) for f in draws]
    per_run = moments(pool)
    ordered = sorted(pool)
    n = cal.observations_used

    totals: list[float] = []
    for _ in range(samples):
        total = sum_of_draws(rng, pool, runs, per_run)
        if calibration_uncertainty and per_run.mean > 0:
            total *= sum_of_draws(rng, pool, n, per_run) / (n * per_run.mean)
        totals.append(total)
    totals.sort()

    mean = per_run.mean
    rate = cal.completion_rate
    return Forecast(
        workflow=cal.workflow,
        runs=runs,
        per_run_mean=money(mean),
        per_run_p10=money(quantile(ordered, 0.1)),
        per_run_p50=money(quantile(ordered, 0.5)),
        per_run_p90=money(quantile(ordered, 0.9)),
        total_expected=money(mean * runs),
        total_p10=money(quantile(totals, 0.1)),
        total_p50=money(quantile(totals, 0.5)),
        total_p90=money(quantile(totals, 0.9)),
        inputs=cal.inputs,
        parameters=cal.parameters,
        observations_used=n,
        completion_rate=rate,
        per_completed_run_mean=money(mean / rate) if rate > 0 else None,
        seed=seed,
        samples=samples,
        dependence=dependence,
        calibration_uncertainty=calibration_uncertainty,
        scenario=scenario,
    )


def atfm_point_cost(history: Sequence[RunObservation] | Calibration) -> Decimal:
    """The seed article's formula with constant inputs: the per-run cost from per-run *averages*
    ``mean(I) × mean(t) × mean(p) × (1 + mean(e) × mean(m))`` (plus the mean fixed cost).

    A baseline, not a forecast: averaging dependent factors separately biases the product (see
    the module docstring). With pooled ratios instead (all tokens / all calls, …) the product
    collapses to the sample mean cost, which :func:`backtest` reports as the other baseline.
    """
    cal = history if isinstance(history, Calibration) else calibrate(history)

    def avg(values: Sequence[float]) -> float:
        return math.fsum(values) / len(values) if values else 0.0

    active = [f for f in cal.factors if f.iterations > 0]
    priced = [f for f in active if f.price_per_token > 0]
    erring = [f for f in active if f.error_probability > 0]
    tokens = avg([f.input_tokens_per_call for f in active]) + cal.output_price_ratio * avg(
        [f.output_tokens_per_call for f in active]
    )
    ref = 1.0 + avg([f.error_probability for f in active]) * avg(
        [f.retry_multiplier for f in erring]
    )
    cost = avg([float(f.iterations) for f in cal.factors]) * tokens
    cost *= avg([f.price_per_token for f in priced]) * ref
    return money(cost + avg([f.fixed_cost for f in cal.factors]))
