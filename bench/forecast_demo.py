"""Forecast back-test on the demo workload: 1,000 real runs through Keel, with seeded faults.

    python bench/forecast_demo.py [--runs 1000] [--seeds 5]

Each run is one support ticket worked by the demo's scripted agent through the real gateway
(identity, policy, ledger, audit on a SQLite file): ticket kinds drawn at random from the demo's
51 templates, the scripted models misbehaving with seeded faults (malformed JSON, wrong tool
arguments). The forecast is calibrated on the first half of the recorded runs, read back from the
audit log exactly as ``keel forecast`` does, and compared with the actual cost of the second half.
Baselines in the same run: mean of the first half × N, and the ATFM formula with constant inputs.
Target: aggregate error within ±5 %.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from keel import App
from keel.configfile import load_config
from keel.demo.agent import SupportAgent
from keel.demo.models import scripted_models
from keel.demo.runner import AGENT_SCOPES, prepare
from keel.demo.shop import Shop, load_tickets
from keel.demo.tools import register_tools
from keel.ledger.forecast import backtest
from keel.runtime.history import run_observations
from keel.testing import FaultPlan


def run_workload(seed: int, runs: int, directory: Path) -> list:  # type: ignore[type-arg]
    rng = random.Random(seed)
    templates = load_tickets()
    config = prepare(directory)
    shop = Shop(directory / "shop.db")
    triage, writer = scripted_models()
    faults = FaultPlan(seed=seed, malformed_json=0.02, wrong_tool_args=0.02)
    triage.faults = faults
    writer.faults = faults
    tickets: dict[str, dict] = {}  # type: ignore[type-arg]
    with App(load_config(config)) as app:
        register_tools(app, shop, tickets)
        app.add_model("triage-small", triage)
        app.add_model("writer-medium", writer)
        agent = app.agent("support-bot", tenant="acme", scopes=AGENT_SCOPES)
        worker = SupportAgent(agent, lambda attempt: None)
        for n in range(runs):
            ticket = dict(rng.choice(templates), id=f"T-{seed}-{n}")
            tickets[ticket["id"]] = ticket
            worker.handle(ticket, run_id=f"run-{seed}-{n}")
        observations = run_observations(app.store, "support")
    shop.close()
    return observations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    errors: list[float] = []
    base_mean: list[float] = []
    base_atfm: list[float] = []
    inside = 0
    print(
        f"{'seed':>4}  {'runs':>5}  {'CV':>5}  {'forecast':>10}  {'actual':>10}  {'error':>7}  "
        f"{'mean×N':>7}  {'ATFM':>7}  band"
    )
    for seed in range(args.seeds):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            observations = run_workload(seed, args.runs, Path(tmp))
        elapsed = time.perf_counter() - started
        costs = [float(o.cost_usd) for o in observations]
        cv = statistics.pstdev(costs) / statistics.fmean(costs)
        bt = backtest(observations, seed=seed)
        baselines = bt.baselines
        errors.append(abs(bt.error_pct))
        base_mean.append(abs(baselines["mean_x_n"].error_pct))
        base_atfm.append(abs(baselines["atfm_point"].error_pct))
        inside += bt.within_band
        print(
            f"{seed:>4}  {len(observations):>5}  {cv:5.2f}  {bt.forecast.total_expected:>10.4f}  "
            f"{bt.actual_total:>10.4f}  {bt.error_pct:+6.1f}%  "
            f"{baselines['mean_x_n'].error_pct:+6.1f}%  {baselines['atfm_point'].error_pct:+6.1f}%  "
            f"{'in' if bt.within_band else 'OUT'}  ({elapsed:.1f} s)"
        )
    print(
        f"\nmean |error| over {args.seeds} seeds: forecast {statistics.fmean(errors):.1f}% "
        f"(max {max(errors):.1f}%), mean×N {statistics.fmean(base_mean):.1f}%, "
        f"ATFM constant inputs {statistics.fmean(base_atfm):.1f}%; "
        f"within ±5%: {sum(e <= 5 for e in errors)}/{len(errors)}; "
        f"actual inside P10–P90: {inside}/{len(errors)}"
    )
    _ = Decimal


if __name__ == "__main__":
    main()
