"""Back-test of the cost forecast on 1,000 simulated support-ticket runs with seeded faults.

    python bench/forecast.py [--seeds 10] [--runs 1000] [--oracle-runs 100000]

For each seed, a self-contained simulator (below) produces ``--runs`` runs of a support-ticket
agent as ``RunObservation`` records; the forecast is calibrated on the first half (by start time)
and compared with the actual total cost of the second half. Printed per seed and summarized over
seeds (mean and max absolute aggregate error), against baselines computed in the same run:

- ``mean×N``: mean cost of the training runs × N (what the forecast's expectation equals by
  construction: its value is the band, the factors and what-ifs, not a different point estimate);
- ``ATFM point``: the seed article's formula with constant inputs (per-run averages);
- ``ATFM indep.``: the ATFM Monte Carlo with each factor drawn independently from its marginal;
- ``oracle``: the workload's true mean cost (from ``--oracle-runs`` extra simulated runs) × N.
  No forecast can beat it on average: its error is the noise of the held-out runs themselves,
  the floor for any method on this workload.

The simulated workload (``Workload``; every rate is seeded through one ``random.Random``):

- tickets are easy (55%), medium (30%) or hard (15%); the agent loop makes
  ``base + Poisson(extra)`` iterations depending on difficulty (2+1, 3+2.5, 5+5 on average);
- each iteration is one model call whose input is the whole context so far (system prompt,
  the ticket, every earlier output and tool result), so input tokens grow with the iteration;
  outputs and tool results are lognormal (token counts vary by ×2–3 between calls);
- two model tiers: small ($0.15 / $0.60 per 1M input / output tokens) for easy and medium
  tickets, large ($2.50 / $10.00) for hard ones; 35% of medium tickets cascade to the large tier
  after two iterations (verification failure);
- faults: a malformed model answer (3%) repeats the call; a tool failure (8%) costs a re-planning
  model call and a retry, up to three retries, after which the run gives up (incomplete);
- a runaway loop (1.5% of runs) never converges and is stopped at the 20-iteration reflection cap;
  contexts over 24K tokens are compacted to 8K (as agents do to stay in their window).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import random
import statistics
import time
from dataclasses import dataclass
from decimal import Decimal

from keel.ledger.forecast import (
    RunObservation,
    atfm_point_cost,
    backtest,
    calibrate,
    forecast,
    render_backtest,
    render_rolling_backtest,
    rolling_backtest,
)

WORKFLOW = "support-ticket"
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Tier:
    name: str
    input_per_token: Decimal
    output_per_token: Decimal


SMALL = Tier("small", Decimal("0.15") / MILLION, Decimal("0.60") / MILLION)
LARGE = Tier("large", Decimal("2.50") / MILLION, Decimal("10.00") / MILLION)


@dataclass(frozen=True)
class Workload:
    """Parameters of the simulated support desk (see the module docstring)."""

    mix: tuple[tuple[str, float], ...] = (("easy", 0.55), ("medium", 0.30), ("hard", 0.15))
    base_iterations: tuple[tuple[str, int], ...] = (("easy", 2), ("medium", 3), ("hard", 5))
    extra_iterations: tuple[tuple[str, float], ...] = (
        ("easy", 1.0),
        ("medium", 2.5),
        ("hard", 5.0),
    )
    output_median: tuple[tuple[str, float], ...] = (("easy", 150), ("medium", 250), ("hard", 400))
    output_sigma: float = 0.5
    system_tokens: int = 1_200
    ticket_median: float = 350
    ticket_sigma: float = 0.6
    tool_result_median: float = 300
    tool_result_sigma: float = 0.9
    error_tokens: int = 80
    cascade_probability: float = 0.35
    cascade_after: int = 2
    model_fault_rate: float = 0.03
    tool_failure_rate: float = 0.08
    max_retries: int = 3
    runaway_rate: float = 0.015
    max_iterations: int = 20
    compact_above: int = 24_000
    compact_to: int = 8_000


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method (fine for the small means used here)."""
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _lognormal_int(rng: random.Random, median: float, sigma: float) -> int:
    return max(1, round(rng.lognormvariate(math.log(median), sigma)))


def simulate_run(
    rng: random.Random, w: Workload, index: int, start: _dt.datetime
) -> RunObservation:
    """One run of the support agent, as the ledger would record it."""
    r = rng.random()
    difficulty = w.mix[-1][0]
    for name, share in w.mix:
        if r < share:
            difficulty = name
            break
        r -= share
    planned = dict(w.base_iterations)[difficulty] + _poisson(
        rng, dict(w.extra_iterations)[difficulty]
    )
    runaway = rng.random() < w.runaway_rate
    target = w.max_iterations if runaway else min(planned, w.max_iterations)
    tier = LARGE if difficulty == "hard" else SMALL
    cascade = difficulty == "medium" and rng.random() < w.cascade_probability
    out_median = dict(w.output_median)[difficulty]

    context = w.system_tokens + _lognormal_int(rng, w.ticket_median, w.ticket_sigma)
    cost = Decimal(0)
    tokens_in = tokens_out = iterations = errors = retries = 0
    completed = not runaway

    def call(out_scale: float = 1.0) -> int:
        nonlocal cost, tokens_in, tokens_out
        out = _lognormal_int(rng, out_median * out_scale, w.output_sigma)
        cost += context * tier.input_per_token + out * tier.output_per_token
        tokens_in += context
        tokens_out += out
        return out

    for it in range(target):
        if cascade and it == w.cascade_after:
            tier = LARGE
        iterations += 1
        out = call()
        while rng.random() < w.model_fault_rate:  # malformed answer: the same call again
            errors += 1
            retries += 1
            out = call()
        context += out
        tries, gave_up = 0, False
        while rng.random() < w.tool_failure_rate:  # tool failed: re-plan with the error, retry
            errors += 1
            if tries == w.max_retries:
                gave_up = True
                break
            tries += 1
            retries += 1
            context += w.error_tokens
            context += call(out_scale=0.5)
        if gave_up:
            completed = False
            break
        context += _lognormal_int(rng, w.tool_result_median, w.tool_result_sigma)
        if context > w.compact_above:
            context = w.compact_to
    started = start + _dt.timedelta(minutes=3 * index, seconds=rng.randrange(180))
    return RunObservation(
        workflow=WORKFLOW,
        run_id=f"run-{index:06d}",
        iterations=iterations,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_usd=cost.quantize(Decimal("0.00000001")),
        started_at=started,
        errors=errors,
        retries=retries,
        completed=completed,
    )


def simulate(seed: int, runs: int, w: Workload | None = None) -> list[RunObservation]:
    """``runs`` runs in start order, deterministic for ``seed``."""
    rng = random.Random(seed)
    start = _dt.datetime(2026, 1, 5, 8, 0, tzinfo=_dt.UTC)
    workload = w or Workload()
    return [simulate_run(rng, workload, i, start) for i in range(runs)]


def _err(predicted: Decimal, actual: Decimal) -> float:
    return float((predicted - actual) / actual * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--oracle-runs", type=int, default=100_000)
    args = parser.parse_args()

    t0 = time.perf_counter()
    oracle_runs = simulate(10_000_019, args.oracle_runs)
    costs = [float(o.cost_usd) for o in oracle_runs]
    true_mean = statistics.fmean(costs)
    cv = statistics.pstdev(costs) / true_mean
    print(
        f"workload: true mean cost per run ${true_mean:.5f}, CV {cv:.2f}"
        f" (from {args.oracle_runs:,} runs, {time.perf_counter() - t0:.1f}s)"
    )
    held_out = args.runs - args.runs // 2
    floor = cv / math.sqrt(held_out) * 100
    print(
        f"noise of the held-out total alone: ±{floor:.1f}% (1 sd, CV/√{held_out});"
        f" with the calibration half: ±{floor * math.sqrt(2):.1f}%;"
        f" ±5% at 1 sd needs ≈{math.ceil(2 * (cv / 0.05) ** 2):,} runs in each half\n"
    )

    header = (
        f"{'seed':>4} {'actual':>9} {'forecast':>9} {'error':>7} {'band':>4} {'≤P50':>5} {'≤P90':>5}"
        f" | {'mean×N':>7} {'ATFM point':>10} {'ATFM indep.':>11} {'oracle':>7}"
    )
    print(header)
    print("-" * len(header))
    methods = ["forecast", "mean×N", "ATFM point", "ATFM indep.", "oracle"]
    errors: dict[str, list[float]] = {m: [] for m in methods}
    hits, cov50, cov90, timings = 0, [], [], []
    first = None
    for seed in range(args.seeds):
        runs = simulate(seed, args.runs)
        t = time.perf_counter()
        bt = backtest(runs, train_fraction=0.5, seed=seed)
        timings.append(time.perf_counter() - t)
        train = sorted(runs, key=lambda o: o.started_at)[: bt.train_runs]
        cal = calibrate(train)
        indep = forecast(cal, bt.test_runs, seed=seed, dependence="independent")
        point = atfm_point_cost(cal) * bt.test_runs
        oracle = Decimal(repr(true_mean)) * bt.test_runs
        row = {
            "forecast": bt.error_pct,
            "mean×N": bt.baselines["mean_x_n"].error_pct,
            "ATFM point": _err(point, bt.actual_total),
            "ATFM indep.": _err(indep.total_expected, bt.actual_total),
            "oracle": _err(oracle, bt.actual_total),
        }
        for m in methods:
            errors[m].append(row[m])
        hits += bt.within_band
        cov50.append(bt.per_run_p50_coverage)
        cov90.append(bt.per_run_p90_coverage)
        first = first or bt
        print(
            f"{seed:>4} {float(bt.actual_total):>9.3f} {float(bt.forecast.total_expected):>9.3f}"
            f" {row['forecast']:>+6.1f}% {'yes' if bt.within_band else 'no':>4}"
            f" {bt.per_run_p50_coverage:>5.0%} {bt.per_run_p90_coverage:>5.0%}"
            f" | {row['mean×N']:>+6.1f}% {row['ATFM point']:>+9.1f}% {row['ATFM indep.']:>+10.1f}%"
            f" {row['oracle']:>+6.1f}%"
        )
    print()
    print(f"{'method':<12} {'mean |err|':>10} {'max |err|':>10} {'mean err':>9} {'within ±5%':>11}")
    for m in methods:
        errs = errors[m]
        print(
            f"{m:<12} {statistics.fmean(abs(e) for e in errs):>9.1f}% {max(abs(e) for e in errs):>9.1f}%"
            f" {statistics.fmean(errs):>+8.1f}% {sum(abs(e) <= 5 for e in errs):>6}/{len(errs)}"
        )
    print(
        f"\nforecast P10–P90 band held the actual total in {hits}/{args.seeds} seeds (nominal 80%);"
        f" per-run coverage ≤P50 {statistics.fmean(cov50):.0%}, ≤P90 {statistics.fmean(cov90):.0%}"
        f" (nominal 50% / 90%)"
    )
    print(
        f"back-test time per seed (calibrate + forecast 2,000 replicates): {statistics.fmean(timings) * 1000:.0f} ms"
    )
    if first is not None:
        print("\n" + render_backtest(first))
        print("\n" + render_rolling_backtest(rolling_backtest(simulate(0, args.runs), folds=4)))
    print(f"\ntotal time {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
