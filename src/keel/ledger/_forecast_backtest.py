"""Back-tests of the forecast against held-out later runs (private; the public surface is
``keel.ledger.forecast``)."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from keel.errors import InvalidRequestError
from keel.ledger._forecast_mc import (
    DEFAULT_SAMPLES,
    Dependence,
    Forecast,
    atfm_point_cost,
    check_int,
    forecast,
)
from keel.ledger._forecast_model import (
    MICRO,
    MIN_OBSERVATIONS,
    InsufficientHistory,
    RunObservation,
    calibrate,
    check_history,
)

__all__ = ["MIN_HOLDOUT", "Backtest", "Baseline", "RollingBacktest", "backtest", "rolling_backtest"]

#: Fewest held-out runs a back-test compares against.
MIN_HOLDOUT = 5


@dataclass(frozen=True, slots=True)
class Baseline:
    """A naive forecast of the same held-out total, for comparison."""

    name: str
    description: str
    total: Decimal
    error_pct: float


@dataclass(frozen=True, slots=True)
class Backtest:
    """A forecast of the held-out (later) runs from the earlier ones, against what they cost.

    ``error_pct`` is ``(forecast − actual) / actual × 100`` (positive: over-forecast; ``inf`` when
    the held-out runs cost nothing but the forecast does not). ``within_band``: the actual total
    lies in the forecast's P10–P90 band. ``per_run_p50_coverage`` / ``per_run_p90_coverage``:
    share of held-out runs costing at most the per-run P50 / P90 (ideally 0.5 / 0.9).
    """

    workflow: str
    forecast: Forecast
    train_runs: int
    test_runs: int
    split_at: _dt.datetime
    actual_total: Decimal
    error_pct: float
    within_band: bool
    per_run_p50_coverage: float
    per_run_p90_coverage: float
    baselines: Mapping[str, Baseline]

    @property
    def abs_error_pct(self) -> float:
        return abs(self.error_pct)

    def to_dict(self) -> dict[str, Any]:
        def pct(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "workflow": self.workflow,
            "train_runs": self.train_runs,
            "test_runs": self.test_runs,
            "split_at": self.split_at.isoformat(),
            "actual_total": str(self.actual_total),
            "forecast_total": str(self.forecast.total_expected),
            "error_pct": pct(self.error_pct),
            "within_band": self.within_band,
            "per_run_p50_coverage": self.per_run_p50_coverage,
            "per_run_p90_coverage": self.per_run_p90_coverage,
            "baselines": {
                k: {"total": str(b.total), "error_pct": pct(b.error_pct)}
                for k, b in self.baselines.items()
            },
            "forecast": self.forecast.to_dict(),
        }


def _error_pct(predicted: Decimal, actual: Decimal) -> float:
    if actual == 0:
        return 0.0 if predicted == 0 else math.inf
    return float((predicted - actual) / actual * 100)


def _ordered(observations: Sequence[RunObservation]) -> list[RunObservation]:
    check_history(observations)
    return sorted(observations, key=lambda o: (o.started_at, o.run_id))


def _compare(
    train: Sequence[RunObservation],
    test: Sequence[RunObservation],
    *,
    seed: int,
    samples: int,
    dependence: Dependence,
) -> Backtest:
    if len(test) < MIN_HOLDOUT:
        raise InsufficientHistory(
            f"only {len(test)} runs are held out; a back-test compares at least {MIN_HOLDOUT}",
            context={
                "workflow": train[0].workflow if train else None,
                "observations": len(test),
                "minimum": MIN_HOLDOUT,
            },
        )
    cal = calibrate(train)
    fc = forecast(cal, len(test), seed=seed, samples=samples, dependence=dependence)
    actual = sum((o.cost_usd for o in test), Decimal(0))
    n_test = len(test)
    mean_total = (sum((o.cost_usd for o in train), Decimal(0)) / len(train) * n_test).quantize(
        MICRO, rounding=ROUND_HALF_EVEN
    )
    point_total = atfm_point_cost(cal) * n_test
    baselines = {
        "mean_x_n": Baseline(
            "mean_x_n",
            "mean cost of the earlier runs × N",
            mean_total,
            _error_pct(mean_total, actual),
        ),
        "atfm_point": Baseline(
            "atfm_point",
            "ATFM formula with constant inputs (per-run averages)",
            point_total,
            _error_pct(point_total, actual),
        ),
    }
    return Backtest(
        workflow=cal.workflow,
        forecast=fc,
        train_runs=len(train),
        test_runs=n_test,
        split_at=test[0].started_at,
        actual_total=actual,
        error_pct=_error_pct(fc.total_expected, actual),
        within_band=fc.total_p10 <= actual <= fc.total_p90,
        per_run_p50_coverage=sum(o.cost_usd <= fc.per_run_p50 for o in test) / n_test,
        per_run_p90_coverage=sum(o.cost_usd <= fc.per_run_p90 for o in test) / n_test,
        baselines=baselines,
    )


def backtest(
    observations: Sequence[RunObservation],
    *,
    train_fraction: float = 0.5,
    split_at: _dt.datetime | None = None,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    dependence: Dependence = "joint",
) -> Backtest:
    """Forecast the later runs from the earlier ones and compare with their actual total cost.

    Runs are ordered by ``started_at`` (then ``run_id``). The first ``train_fraction`` of them
    (rounded down) calibrate the forecast, or, when ``split_at`` is given, those started before it.
    Needs :data:`MIN_OBSERVATIONS` earlier and :data:`MIN_HOLDOUT` later runs
    (:class:`InsufficientHistory` otherwise).
    """
    ordered = _ordered(observations)
    if split_at is not None:
        if not isinstance(split_at, _dt.datetime) or split_at.utcoffset() is None:
            raise InvalidRequestError(
                "split_at must be a timezone-aware datetime", context={"field": "split_at"}
            )
        cut = sum(o.started_at < split_at for o in ordered)
    else:
        if isinstance(train_fraction, bool) or not 0 < train_fraction < 1:
            raise InvalidRequestError(
                f"train_fraction must be strictly between 0 and 1, got {train_fraction!r}",
                context={"field": "train_fraction"},
            )
        cut = math.floor(len(ordered) * train_fraction)
    return _compare(ordered[:cut], ordered[cut:], seed=seed, samples=samples, dependence=dependence)


@dataclass(frozen=True, slots=True)
class RollingBacktest:
    """Expanding-window back-tests: fold ``i`` calibrates on blocks ``0..i-1`` of the
    time-ordered history and forecasts block ``i``."""

    folds: tuple[Backtest, ...]
    mean_abs_error_pct: float
    max_abs_error_pct: float
    band_hits: int
    baseline_mean_abs_error_pct: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": [b.to_dict() for b in self.folds],
            "mean_abs_error_pct": self.mean_abs_error_pct,
            "max_abs_error_pct": self.max_abs_error_pct,
            "band_hits": self.band_hits,
            "baseline_mean_abs_error_pct": dict(self.baseline_mean_abs_error_pct),
        }


def rolling_backtest(
    observations: Sequence[RunObservation],
    *,
    folds: int = 4,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    dependence: Dependence = "joint",
) -> RollingBacktest:
    """Split the time-ordered history into ``folds + 1`` equal blocks (the last one takes the
    remainder) and back-test each block against all the blocks before it.

    Needs ``(folds + 1) × MIN_OBSERVATIONS`` runs (:class:`InsufficientHistory` otherwise).
    """
    check_int("folds", folds, 1)
    ordered = _ordered(observations)
    block = len(ordered) // (folds + 1)
    if block < MIN_OBSERVATIONS:
        need = (folds + 1) * MIN_OBSERVATIONS
        raise InsufficientHistory(
            f"a rolling back-test with {folds} folds needs at least {need} runs, "
            f"got {len(ordered)}",
            context={
                "workflow": ordered[0].workflow,
                "observations": len(ordered),
                "minimum": need,
            },
        )
    results = []
    for i in range(1, folds + 1):
        end = (i + 1) * block if i < folds else len(ordered)
        results.append(
            _compare(
                ordered[: i * block],
                ordered[i * block : end],
                seed=seed,
                samples=samples,
                dependence=dependence,
            )
        )
    errors = [b.abs_error_pct for b in results]
    names = list(results[0].baselines)
    return RollingBacktest(
        folds=tuple(results),
        mean_abs_error_pct=math.fsum(errors) / len(errors),
        max_abs_error_pct=max(errors),
        band_hits=sum(b.within_band for b in results),
        baseline_mean_abs_error_pct={
            k: math.fsum(abs(b.baselines[k].error_pct) for b in results) / len(results)
            for k in names
        },
    )
