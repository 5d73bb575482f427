"""The cost forecast: calibration, Monte Carlo totals, back-tests and rendering."""

from __future__ import annotations

import datetime as _dt
import json
import random
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.errors import InvalidRequestError, UsageError
from keel.ledger.forecast import (
    MIN_OBSERVATIONS,
    Backtest,
    InsufficientHistory,
    InvalidObservation,
    MixedWorkflows,
    RunObservation,
    Scenario,
    atfm_point_cost,
    backtest,
    backtest_rows,
    calibrate,
    forecast,
    forecast_rows,
    format_usd,
    render_backtest,
    render_forecast,
    render_rolling_backtest,
    rolling_backtest,
)

T0 = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)
IN_PRICE = Decimal("0.000001")  # $1 per 1M input tokens
OUT_PRICE = Decimal("0.000004")  # $4 per 1M output tokens


def obs(
    i: int,
    cost: str | Decimal,
    *,
    workflow: str = "wf",
    iterations: int = 4,
    input_tokens: int = 4000,
    output_tokens: int = 800,
    errors: int = 0,
    retries: int = 0,
    completed: bool = True,
) -> RunObservation:
    return RunObservation(
        workflow=workflow,
        run_id=f"r{i:05d}",
        iterations=iterations,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=Decimal(cost),
        started_at=T0 + _dt.timedelta(minutes=i),
        errors=errors,
        retries=retries,
        completed=completed,
    )


def synthetic(n: int, seed: int) -> list[RunObservation]:
    """Runs with known distributions: iterations uniform on 3..7 (mean 5); per call, input
    tokens uniform on 800..1200 (mean 1000) and output uniform on 150..250 (mean 200); every
    iteration fails with probability 0.1 and each failure costs exactly 2 retry calls; one price
    ($1 / $4 per 1M tokens). Expected cost per run: 5 × 1.2 × (1000 × 1e-6 + 200 × 4e-6)."""
    rng = random.Random(seed)
    runs = []
    for i in range(n):
        iterations = rng.randint(3, 7)
        errors = sum(rng.random() < 0.1 for _ in range(iterations))
        retries = 2 * errors
        calls = iterations + retries
        tin = calls * rng.randint(800, 1200)
        tout = calls * rng.randint(150, 250)
        runs.append(
            RunObservation(
                workflow="synthetic",
                run_id=f"s{i}",
                iterations=iterations,
                input_tokens=tin,
                output_tokens=tout,
                cost_usd=tin * IN_PRICE + tout * OUT_PRICE,
                started_at=T0 + _dt.timedelta(seconds=i),
                errors=errors,
                retries=retries,
                completed=rng.random() < 0.9,
            )
        )
    return runs


def dependent(n: int, seed: int) -> list[RunObservation]:
    """Long runs have big contexts and run on a 20× dearer model: factors strongly dependent."""
    rng = random.Random(seed)
    runs = []
    for i in range(n):
        hard = rng.random() < 0.2
        iterations = rng.randint(8, 12) if hard else rng.randint(1, 3)
        per_call = 4000 if hard else 1000
        price = Decimal("0.00002") if hard else Decimal("0.000001")
        tin = iterations * per_call
        runs.append(
            RunObservation(
                workflow="dep",
                run_id=f"d{i}",
                iterations=iterations,
                input_tokens=tin,
                output_tokens=0,
                cost_usd=tin * price,
                started_at=T0 + _dt.timedelta(seconds=i),
            )
        )
    return runs


# --------------------------------------------------------------------------- calibration


def test_calibration_recovers_known_parameters() -> None:
    cal = calibrate(synthetic(4000, seed=1))
    i = cal.inputs
    assert i["iterations"].mean == pytest.approx(5.0, abs=0.1)
    assert i["iterations"].min == 3
    assert i["iterations"].max == 7
    assert i["input_tokens_per_call"].pooled == pytest.approx(1000, rel=0.02)
    assert i["output_tokens_per_call"].pooled == pytest.approx(200, rel=0.02)
    # One price: the fitted output/input ratio and the effective price are exact.
    assert cal.output_price_ratio == pytest.approx(4.0, rel=1e-9)
    assert cal.output_price_ratio_source == "fitted"
    assert i["price_per_1k_tokens"].p10 == pytest.approx(0.001, rel=1e-9)
    assert i["price_per_1k_tokens"].p90 == pytest.approx(0.001, rel=1e-9)
    assert i["error_probability"].pooled == pytest.approx(0.1, abs=0.01)
    assert i["retry_multiplier"].pooled == pytest.approx(2.0)
    assert i["retry_multiplier"].min == i["retry_multiplier"].max == 2.0
    assert i["reflection_expansion_factor"].pooled == pytest.approx(1.2, abs=0.02)
    assert cal.completion_rate == pytest.approx(0.9, abs=0.02)
    # The Monte Carlo mean matches the analytic expectation of the generating process.
    fc = forecast(cal, 100, seed=3)
    expected = 5 * 1.2 * (1000 * 1e-6 + 200 * 4e-6)
    assert float(fc.per_run_mean) == pytest.approx(expected, rel=0.03)


def test_factors_recompose_every_observed_cost() -> None:
    runs = synthetic(200, seed=2)
    cal = calibrate(runs)
    for run, factors in zip(runs, cal.factors, strict=True):
        assert factors.cost() == pytest.approx(float(run.cost_usd), rel=1e-12)


def test_given_output_price_ratio_is_used() -> None:
    cal = calibrate(synthetic(50, seed=4), output_price_ratio=5.0)
    assert cal.output_price_ratio == 5.0
    assert cal.output_price_ratio_source == "given"
    with pytest.raises(InvalidRequestError):
        calibrate(synthetic(50, seed=4), output_price_ratio=-1.0)


def test_dependence_is_measured_and_matters() -> None:
    runs = dependent(1000, seed=5)
    cal = calibrate(runs)
    assert cal.parameters["spearman_iterations_price"] > 0.5
    joint = forecast(cal, 100, seed=1, samples=500)
    indep = forecast(cal, 100, seed=1, samples=500, dependence="independent")
    true_mean = sum((r.cost_usd for r in runs), Decimal(0)) / len(runs)
    assert float(joint.per_run_mean) == pytest.approx(float(true_mean), rel=1e-6)
    # Independent factors multiply averages: far below the real mean on dependent data.
    assert indep.total_expected < joint.total_expected * Decimal("0.6")
    assert atfm_point_cost(cal) < joint.per_run_mean * Decimal("0.6")


def test_independent_mode_agrees_when_factors_are_independent() -> None:
    cal = calibrate(synthetic(3000, seed=6))
    joint = forecast(cal, 100, seed=2)
    indep = forecast(cal, 100, seed=2, dependence="independent")
    assert float(indep.per_run_mean) == pytest.approx(float(joint.per_run_mean), rel=0.03)


def test_runs_without_calls_or_tokens_carry_fixed_cost() -> None:
    runs = [obs(i, "0.01") for i in range(20)]
    runs += [obs(100, "0.50", iterations=0, input_tokens=0, output_tokens=0)]
    runs += [obs(101, "0.20", input_tokens=0, output_tokens=0)]
    cal = calibrate(runs)
    assert cal.parameters["fixed_cost_share"] == pytest.approx(0.7 / 0.9)
    fc = forecast(cal, 22, seed=0, dependence="independent")
    assert fc.per_run_mean > 0
    assert forecast(cal, 22).total_expected == Decimal("0.900000")


# --------------------------------------------------------------------------- forecast


def test_forecast_is_deterministic_for_a_seed() -> None:
    runs = synthetic(100, seed=7)
    a = forecast(runs, 500, seed=42)
    b = forecast(list(runs), 500, seed=42)
    assert a == b
    c = forecast(runs, 500, seed=43)
    assert (c.total_p10, c.total_p90) != (a.total_p10, a.total_p90)
    assert c.total_expected == a.total_expected  # the expectation needs no sampling


def test_totals_scale_with_runs() -> None:
    cal = calibrate(synthetic(200, seed=8))
    small = forecast(cal, 100, seed=1)
    large = forecast(cal, 1000, seed=1)
    assert large.total_expected == pytest.approx(small.total_expected * 10, abs=Decimal("1e-5"))
    assert large.per_run_mean == small.per_run_mean
    assert large.total_p10 > small.total_p90
    # The band narrows relative to the total as N grows (law of large numbers).
    rel = [(f.total_p90 - f.total_p10) / f.total_expected for f in (small, large)]
    assert rel[1] < rel[0]


def test_large_volumes_use_the_skew_corrected_approximation() -> None:
    cal = calibrate(dependent(500, seed=9))
    fc = forecast(cal, 2_000_000, seed=1, samples=500)
    assert fc.total_p10 <= fc.total_p50 <= fc.total_p90
    assert fc.total_expected == pytest.approx(fc.per_run_mean * 2_000_000, rel=Decimal("1e-6"))
    assert fc.total_p50 == pytest.approx(fc.total_expected, rel=Decimal("0.05"))


def test_calibration_uncertainty_widens_the_band() -> None:
    cal = calibrate(synthetic(100, seed=10))
    with_it = forecast(cal, 1000, seed=1)
    without = forecast(cal, 1000, seed=1, calibration_uncertainty=False)
    assert with_it.total_p90 - with_it.total_p10 > without.total_p90 - without.total_p10


def test_money_is_decimal_micro_dollars() -> None:
    fc = forecast(synthetic(50, seed=11), 37, seed=0)
    amounts = [
        fc.per_run_mean,
        fc.per_run_p10,
        fc.per_run_p50,
        fc.per_run_p90,
        fc.total_expected,
        fc.total_p10,
        fc.total_p50,
        fc.total_p90,
        fc.per_completed_run_mean,
    ]
    for amount in amounts:
        assert isinstance(amount, Decimal)
        assert amount.as_tuple().exponent == -6
    assert isinstance(atfm_point_cost(synthetic(50, seed=11)), Decimal)


def test_scenarios_act_on_single_factors() -> None:
    cal = calibrate(synthetic(300, seed=12))
    base = forecast(cal, 100, seed=1)
    half = forecast(cal, 100, seed=1, scenario=Scenario(price_factor=Decimal("0.5")))
    assert half.per_run_mean == pytest.approx(base.per_run_mean / 2, abs=Decimal("2e-6"))
    no_errors = forecast(cal, 100, seed=1, scenario=Scenario(error_rate_factor=0.0))
    ref = cal.inputs["reflection_expansion_factor"].pooled
    assert float(no_errors.per_run_mean) == pytest.approx(float(base.per_run_mean) / ref, rel=0.02)
    capped = forecast(cal, 100, seed=1, scenario=Scenario(max_iterations=3))
    assert capped.per_run_mean < base.per_run_mean
    assert capped.scenario == Scenario(max_iterations=3)
    with pytest.raises(InvalidRequestError):
        Scenario(max_iterations=0)
    with pytest.raises(InvalidRequestError):
        Scenario(price_factor=0.5)  # type: ignore[arg-type]


def test_per_completed_run_divides_by_completion_rate() -> None:
    runs = [obs(i, "0.10", completed=i % 4 != 0) for i in range(40)]
    fc = forecast(runs, 10)
    assert fc.completion_rate == 0.75
    assert fc.per_completed_run_mean == Decimal("0.133333")
    none_done = forecast([obs(i, "0.10", completed=False) for i in range(20)], 10)
    assert none_done.per_completed_run_mean is None


def test_zero_cost_history() -> None:
    runs = [obs(i, "0") for i in range(30)]
    fc = forecast(runs, 100)
    assert fc.total_expected == fc.total_p90 == fc.per_run_p90 == Decimal("0.000000")


@st.composite
def observations(draw: st.DrawFn) -> list[RunObservation]:
    n = draw(st.integers(MIN_OBSERVATIONS, 40))
    runs = []
    for i in range(n):
        iterations = draw(st.integers(0, 30))
        if iterations == 0:
            fixed = draw(st.sampled_from(["0", "0.05"]))
            runs.append(obs(i, fixed, iterations=0, input_tokens=0, output_tokens=0))
            continue
        errors = draw(st.integers(0, iterations))
        retries = draw(st.integers(0, 3 * errors))
        cost = draw(st.decimals(min_value=0, max_value=50, places=6))
        runs.append(
            obs(
                i,
                cost,
                iterations=iterations,
                input_tokens=draw(st.integers(0, 200_000)),
                output_tokens=draw(st.integers(0, 20_000)),
                errors=errors,
                retries=retries,
            )
        )
    return runs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=observations(),
    runs=st.integers(1, 5000),
    dependence=st.sampled_from(["joint", "independent"]),
)
def test_quantiles_are_ordered(history: list[RunObservation], runs: int, dependence: str) -> None:
    fc = forecast(history, runs, seed=0, samples=200, dependence=dependence)  # type: ignore[arg-type]
    assert Decimal(0) <= fc.per_run_p10 <= fc.per_run_p50 <= fc.per_run_p90
    assert Decimal(0) <= fc.total_p10 <= fc.total_p50 <= fc.total_p90
    if dependence == "joint":
        mean = sum((o.cost_usd for o in history), Decimal(0)) / len(history)
        assert fc.per_run_mean == pytest.approx(mean, abs=Decimal("1e-6"))


# --------------------------------------------------------------------------- refusals


def test_too_few_observations() -> None:
    with pytest.raises(InsufficientHistory) as info:
        forecast([obs(i, "0.01") for i in range(MIN_OBSERVATIONS - 1)], 10)
    err = info.value
    assert isinstance(err, UsageError)
    assert err.code == "forecast_insufficient_history"
    assert err.context == {"workflow": "wf", "observations": 19, "minimum": MIN_OBSERVATIONS}
    assert "at least 20" in err.message
    with pytest.raises(InsufficientHistory):
        calibrate([])


def test_mixed_workflows() -> None:
    runs = [obs(i, "0.01", workflow="a" if i % 2 else "b") for i in range(40)]
    with pytest.raises(MixedWorkflows) as info:
        forecast(runs, 10)
    assert info.value.code == "forecast_mixed_workflows"
    assert info.value.context == {"workflows": ["a", "b"]}


def test_duplicate_run_ids_are_refused() -> None:
    runs = [obs(i, "0.01") for i in range(20)] + [obs(3, "0.01")]
    with pytest.raises(InvalidObservation, match="appears twice"):
        calibrate(runs)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cost_usd": 0.01}, "cost_usd"),
        ({"cost_usd": Decimal("-1")}, "cost_usd"),
        ({"cost_usd": Decimal("NaN")}, "cost_usd"),
        ({"iterations": -1}, "iterations"),
        ({"iterations": True}, "iterations"),
        ({"started_at": _dt.datetime(2026, 1, 1)}, "started_at"),
        ({"workflow": ""}, "workflow"),
        ({"retries": 2, "errors": 0}, "retries"),
        ({"errors": -1}, "errors"),
        ({"iterations": 0, "retries": 0}, "iterations"),
    ],
)
def test_invalid_observations(changes: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {
        "workflow": "wf",
        "run_id": "r1",
        "iterations": 4,
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_usd": Decimal("0.01"),
        "started_at": T0,
    }
    fields.update(changes)
    with pytest.raises(InvalidObservation) as info:
        RunObservation(**fields)  # type: ignore[arg-type]
    assert info.value.context["field"] == field
    assert info.value.code == "forecast_invalid_observation"


@pytest.mark.parametrize(
    "kwargs",
    [{"runs": 0}, {"runs": True}, {"samples": 10}, {"dependence": "copula"}],
)
def test_invalid_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"runs": 10, **kwargs}
    with pytest.raises(InvalidRequestError):
        forecast(synthetic(30, seed=0), **args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- back-tests


def hand_example() -> list[RunObservation]:
    """20 earlier runs alternating $1 and $3 (mean $2), then 5 later runs costing $12 in all."""
    earlier = [obs(i, "1" if i % 2 else "3") for i in range(20)]
    later = [obs(20 + i, c) for i, c in enumerate(["2", "2", "2", "3", "3"])]
    return later + earlier  # order given does not matter: started_at does


def test_backtest_error_on_a_hand_checked_example() -> None:
    bt = backtest(hand_example(), train_fraction=0.8)
    assert isinstance(bt, Backtest)
    assert (bt.train_runs, bt.test_runs) == (20, 5)
    assert bt.split_at == T0 + _dt.timedelta(minutes=20)
    assert bt.forecast.total_expected == Decimal("10.000000")  # 5 runs × $2
    assert bt.actual_total == Decimal(12)
    assert bt.error_pct == pytest.approx(-100 / 6)  # (10 − 12) / 12
    assert bt.abs_error_pct == pytest.approx(100 / 6)
    assert bt.baselines["mean_x_n"].total == Decimal("10.000000")
    assert bt.baselines["mean_x_n"].error_pct == pytest.approx(-100 / 6)
    # Every run has the same factors but its price: the averages' product is the mean here.
    assert bt.baselines["atfm_point"].total == Decimal("10.000000")
    # Per-run P50 = $2 (between $1 and $3), P90 = $3: 3 of 5 and 5 of 5 later runs are within.
    assert bt.forecast.per_run_p50 == Decimal("2.000000")
    assert bt.per_run_p50_coverage == pytest.approx(0.6)
    assert bt.per_run_p90_coverage == 1.0
    assert bt.within_band == (bt.forecast.total_p10 <= Decimal(12) <= bt.forecast.total_p90)


def test_backtest_split_by_time() -> None:
    by_time = backtest(hand_example(), split_at=T0 + _dt.timedelta(minutes=20))
    by_fraction = backtest(hand_example(), train_fraction=0.8)
    assert by_time == by_fraction
    with pytest.raises(InvalidRequestError):
        backtest(hand_example(), split_at=_dt.datetime(2026, 1, 1))


def test_backtest_needs_history_and_holdout() -> None:
    with pytest.raises(InsufficientHistory):
        backtest(hand_example(), train_fraction=0.5)  # 12 earlier runs
    with pytest.raises(InsufficientHistory, match="held out"):
        backtest(hand_example()[5:] + hand_example()[:2], train_fraction=0.9)
    with pytest.raises(InvalidRequestError):
        backtest(hand_example(), train_fraction=1.0)


def test_backtest_on_a_stationary_workload_is_close() -> None:
    bt = backtest(synthetic(1000, seed=13), seed=1)
    assert bt.abs_error_pct < 3  # low-variance workload: CV ≈ 0.3, floor ≈ 2% at 3 sd
    assert bt.within_band
    assert 0.4 <= bt.per_run_p50_coverage <= 0.6
    assert 0.85 <= bt.per_run_p90_coverage <= 0.95


def test_rolling_backtest() -> None:
    rb = rolling_backtest(synthetic(500, seed=14), folds=4)
    assert len(rb.folds) == 4
    assert [b.train_runs for b in rb.folds] == [100, 200, 300, 400]
    assert [b.test_runs for b in rb.folds] == [100, 100, 100, 100]
    assert rb.max_abs_error_pct >= rb.mean_abs_error_pct
    assert set(rb.baseline_mean_abs_error_pct) == {"mean_x_n", "atfm_point"}
    with pytest.raises(InsufficientHistory, match="needs at least 100 runs"):
        rolling_backtest(synthetic(99, seed=14), folds=4)
    assert "mean |error|" in render_rolling_backtest(rb)
    json.dumps(rb.to_dict())


# --------------------------------------------------------------------------- rendering


def test_render_forecast() -> None:
    fc = forecast(synthetic(100, seed=15), 1000)
    text = render_forecast(fc)
    assert text.startswith("Forecast: 1,000 runs of 'synthetic'")
    labels = dict(forecast_rows(fc))
    assert labels["expected total"] == format_usd(fc.total_expected)
    assert "P90" in labels["per run band"]
    assert "REF" in labels
    data = fc.to_dict()
    assert data["total"]["expected"] == str(fc.total_expected)
    json.dumps(data)


def test_render_backtest() -> None:
    bt = backtest(hand_example(), train_fraction=0.8)
    text = render_backtest(bt)
    assert "error -16.7%" in text
    assert dict(backtest_rows(bt))["actual"] == "$12.00"
    assert bt.to_dict()["error_pct"] == pytest.approx(-100 / 6)
    json.dumps(bt.to_dict())


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("1234.5", "$1,234.50"),
        ("0.0512", "$0.0512"),
        ("0.000123", "$0.000123"),
    ],
)
def test_format_usd(amount: str, text: str) -> None:
    assert format_usd(Decimal(amount)) == text
