"""Cost forecasts for a workflow: the ATFM model calibrated on recorded runs, and its back-test.

The model
---------
The seed articles' Agentic Token Forecasting Model (ATFM) prices one run as::

    cost = iterations × tokens per iteration × price per token × REF
    REF  = 1 + error probability × retry multiplier        (reflection expansion factor)

Every input is measured per recorded run (:class:`RunObservation`), which makes the formula an
exact identity for each observed run (:class:`RunFactors`)::

    I  iterations            loop iterations: model calls that are not retries
    t  tokens per call       (input + ρ·output tokens) / (I + retries)
    p  price per token       cost / (input + ρ·output tokens)   USD per input-equivalent token
    e  error probability     errors / I
    m  retry multiplier      retries / errors
    I · t · p · (1 + e·m) = cost                          since 1 + e·m = (I + retries) / I

``ρ`` is the output/input price ratio: given by the caller (from the price table) or fitted by
least squares of cost on input and output tokens over the history (1.0 if that fit is degenerate).
The per-run price ``p`` is an *effective* price, so a run's model mix (a small and a large tier,
a cascade) is carried by its price. Runs that spent money without tokens carry it as a fixed cost.

Calibration: distributions, jointly
-----------------------------------
Each input is calibrated as a distribution over runs, not a constant: its empirical distribution,
summarized in :attr:`Forecast.inputs` (pooled value, mean, P10/P50/P90, range). The Monte Carlo
draws the five factors **jointly**, as the vector of one recorded run (a run bootstrap), rather
than from five independent marginals. The reason is that the factors are strongly dependent in
agent workloads: a hard ticket takes more iterations, carries a larger context on every call and
is routed to the larger model, so E[I·t·p] is far above E[I]·E[t]·E[p]. Drawing factors
independently — or multiplying their averages, the seed article's reading — underestimates the
mean cost; ``dependence="independent"`` keeps that variant for comparison and the back-test shows
the bias (``bench/forecast.py``: about −60% on a simulated support desk with two model tiers).
The run bootstrap is non-parametric on purpose: per-run cost is a mixture (tiers, difficulty
classes, loops stopped at a cap) that no simple parametric family fits, and the empirical joint
distribution keeps caps and point masses exactly. Its expected cost is the sample mean of the
history, the unbiased estimate. What the factor form adds is the band, the factor summaries, and
:class:`Scenario` what-ifs (a price change, a fixed flaky tool, a lower iteration cap), which act
on single factors of every drawn run.

Totals for N runs
-----------------
Each of ``samples`` replicates (default 2,000) sums ``N`` per-run draws. Sums are computed exactly
by resampling while the normal approximation would be poor for heavy tails (the skewness of a sum
of ``k`` draws is ``γ/√k``): up to ``max(2,000, (4γ)²)`` draws, bounded by 20,000; beyond, a
Cornish–Fisher expansion corrects the normal for skewness and kurtosis. Unless
``calibration_uncertainty=False``, each replicate is also scaled by a bootstrap re-estimate of the
mean cost from a history of the same size, so the band carries the uncertainty of a finite history
and not only the randomness of the future runs. ``total_expected`` is exactly ``N`` times the mean
per-run cost; the P10/P50/P90 come from the replicates and are deterministic for a ``seed``.

Back-tests
----------
:func:`backtest` orders the history by ``started_at``, calibrates on the earlier part (a fraction,
or the runs before ``split_at``) and compares the forecast of the later part with its actual total,
next to two baselines (mean cost × N; the constant-input formula, :func:`atfm_point_cost`).
:func:`rolling_backtest` repeats that over expanding windows. The aggregate error cannot beat the
noise of the held-out runs themselves, about ``CV / √N`` for a per-run cost with coefficient of
variation ``CV``; the bench prints that floor next to the error.

Units and limits
----------------
Money is ``Decimal`` USD at the boundary: observations carry ``Decimal`` costs; forecasts return
``Decimal`` amounts quantized to micro-dollars (6 places, half-even). Inside, the statistics run in
binary floats (relative error ~1e-15, far below the forecast's own uncertainty); factor summaries
are floats with their unit stated. A forecast needs at least :data:`MIN_OBSERVATIONS` runs of one
workflow: below that the P90 of the per-run distribution rests on one or two runs. A failure mode
that never occurred in the history is never forecast; a cap in the ledger bounds what it can cost.
Every function is pure (no I/O, no global state) and safe to call from several threads.

Errors (all ``UsageError``: fix the input, do not retry)::

    UsageError
    ├── InsufficientHistory     too few runs (code ``forecast_insufficient_history``)
    ├── MixedWorkflows          runs of several workflows (code ``forecast_mixed_workflows``)
    └── InvalidRequestError
        └── InvalidObservation  a run's figures are inconsistent (``forecast_invalid_observation``)
"""

from __future__ import annotations

from keel.ledger._forecast_backtest import (
    MIN_HOLDOUT,
    Backtest,
    Baseline,
    RollingBacktest,
    backtest,
    rolling_backtest,
)
from keel.ledger._forecast_mc import (
    DEFAULT_SAMPLES,
    Dependence,
    Forecast,
    atfm_point_cost,
    forecast,
)
from keel.ledger._forecast_model import (
    MIN_OBSERVATIONS,
    Calibration,
    FactorSummary,
    InsufficientHistory,
    InvalidObservation,
    MixedWorkflows,
    RunFactors,
    RunObservation,
    Scenario,
    calibrate,
)
from keel.ledger._forecast_render import (
    backtest_rows,
    forecast_rows,
    format_usd,
    render_backtest,
    render_forecast,
    render_rolling_backtest,
)

__all__ = [
    "DEFAULT_SAMPLES",
    "MIN_HOLDOUT",
    "MIN_OBSERVATIONS",
    "Backtest",
    "Baseline",
    "Calibration",
    "Dependence",
    "FactorSummary",
    "Forecast",
    "InsufficientHistory",
    "InvalidObservation",
    "MixedWorkflows",
    "RollingBacktest",
    "RunFactors",
    "RunObservation",
    "Scenario",
    "atfm_point_cost",
    "backtest",
    "backtest_rows",
    "calibrate",
    "forecast",
    "forecast_rows",
    "format_usd",
    "render_backtest",
    "render_forecast",
    "render_rolling_backtest",
    "rolling_backtest",
]
