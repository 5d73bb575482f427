"""Plain-text rendering of forecasts and back-tests for the CLI (private; re-exported by
``keel.ledger.forecast``). Functions return strings or ``(label, value)`` rows; they print nothing.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keel.ledger.forecast import Backtest, FactorSummary, Forecast, RollingBacktest

__all__ = [
    "backtest_rows",
    "forecast_rows",
    "format_usd",
    "render_backtest",
    "render_forecast",
    "render_rolling_backtest",
]

_FACTOR_LABELS = {
    "iterations": "iterations / run",
    "input_tokens_per_call": "input tokens / call",
    "output_tokens_per_call": "output tokens / call",
    "price_per_1k_tokens": "USD / 1K tokens",
    "error_probability": "error probability",
    "retry_multiplier": "retry multiplier",
    "reflection_expansion_factor": "REF",
}


def format_usd(amount: Decimal) -> str:
    """``$1,234.57`` from one dollar up, four decimals from a cent, six below."""
    size = abs(amount)
    if size >= 1:
        return f"${amount:,.2f}"
    if size >= Decimal("0.01"):
        return f"${amount:.4f}"
    return f"${amount:.6f}"


def _pct(value: float) -> str:
    return f"{value:+.1f}%" if math.isfinite(value) else "n/a (actual is zero)"


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _factor(summary: FactorSummary) -> str:
    if summary.runs == 0:
        return "no runs"
    return (
        f"{_num(summary.p50)} [{_num(summary.p10)}–{_num(summary.p90)}]"
        f"  mean {_num(summary.mean)}  ({summary.runs} runs)"
    )


def forecast_rows(fc: Forecast) -> list[tuple[str, str]]:
    """The forecast as ``(label, value)`` rows: totals, per-run band, then each calibrated input
    as ``median [P10–P90] mean``."""
    rows = [
        ("workflow", fc.workflow),
        ("runs forecast", f"{fc.runs:,}"),
        ("expected total", format_usd(fc.total_expected)),
        (
            "total band",
            f"P10 {format_usd(fc.total_p10)} · P50 {format_usd(fc.total_p50)}"
            f" · P90 {format_usd(fc.total_p90)}",
        ),
        ("per run mean", format_usd(fc.per_run_mean)),
        (
            "per run band",
            f"P10 {format_usd(fc.per_run_p10)} · P50 {format_usd(fc.per_run_p50)}"
            f" · P90 {format_usd(fc.per_run_p90)}",
        ),
    ]
    if fc.per_completed_run_mean is not None:
        rows.append(
            (
                "per completed run",
                f"{format_usd(fc.per_completed_run_mean)} (completion {fc.completion_rate:.1%})",
            )
        )
    rows.append(("history", f"{fc.observations_used:,} runs (seed {fc.seed})"))
    if fc.scenario is not None:
        s = fc.scenario
        rows.append(
            (
                "scenario",
                f"price ×{s.price_factor}, errors ×{s.error_rate_factor:g}, "
                f"cap {s.max_iterations if s.max_iterations is not None else 'as recorded'}",
            )
        )
    if fc.dependence != "joint":
        rows.append(("dependence", f"{fc.dependence} (comparison mode, biased)"))
    for key, label in _FACTOR_LABELS.items():
        if key in fc.inputs:
            rows.append((label, _factor(fc.inputs[key])))
    return rows


def _table(rows: list[tuple[str, str]], title: str) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join([title, *(f"  {label.ljust(width)}  {value}" for label, value in rows)])


def render_forecast(fc: Forecast) -> str:
    """The forecast as text for ``keel forecast WORKFLOW --runs N``."""
    return _table(
        forecast_rows(fc),
        f"Forecast: {fc.runs:,} runs of {fc.workflow!r} ≈ {format_usd(fc.total_expected)}",
    )


def backtest_rows(bt: Backtest) -> list[tuple[str, str]]:
    """The back-test as ``(label, value)`` rows, baselines last."""
    fc = bt.forecast
    rows = [
        ("workflow", bt.workflow),
        ("calibrated on", f"{bt.train_runs:,} runs before {bt.split_at.isoformat()}"),
        ("held out", f"{bt.test_runs:,} runs"),
        ("forecast", f"{format_usd(fc.total_expected)}"),
        ("band P10–P90", f"{format_usd(fc.total_p10)} – {format_usd(fc.total_p90)}"),
        ("actual", format_usd(bt.actual_total)),
        ("error", f"{_pct(bt.error_pct)} ({'within' if bt.within_band else 'outside'} band)"),
        (
            "per-run coverage",
            f"{bt.per_run_p50_coverage:.0%} ≤ P50, {bt.per_run_p90_coverage:.0%} ≤ P90",
        ),
    ]
    for baseline in bt.baselines.values():
        rows.append(
            (
                f"baseline {baseline.name}",
                f"{format_usd(baseline.total)} ({_pct(baseline.error_pct)}):"
                f" {baseline.description}",
            )
        )
    return rows


def render_backtest(bt: Backtest) -> str:
    """The back-test as text for ``keel forecast --backtest``."""
    return _table(backtest_rows(bt), f"Back-test of {bt.workflow!r}: error {_pct(bt.error_pct)}")


def render_rolling_backtest(rb: RollingBacktest) -> str:
    """One line per fold, then mean and max absolute error against the baselines'."""
    lines = [f"Rolling back-test of {rb.folds[0].workflow!r}: {len(rb.folds)} folds"]
    for i, bt in enumerate(rb.folds, 1):
        lines.append(
            f"  fold {i}: {bt.train_runs:>6,} → {bt.test_runs:>6,} runs"
            f"  forecast {format_usd(bt.forecast.total_expected)}"
            f"  actual {format_usd(bt.actual_total)}  error {_pct(bt.error_pct)}"
            f"  {'in' if bt.within_band else 'out of'} band"
        )
    lines.append(
        f"  mean |error| {rb.mean_abs_error_pct:.1f}%, max {rb.max_abs_error_pct:.1f}%,"
        f" {rb.band_hits}/{len(rb.folds)} within the P10–P90 band"
    )
    for name, err in rb.baseline_mean_abs_error_pct.items():
        lines.append(f"  baseline {name}: mean |error| {err:.1f}%")
    return "\n".join(lines)
