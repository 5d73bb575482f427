"""``keel budget show`` and ``keel forecast``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from keel.cli._common import ConfigOption, StoreOption, console, handle_errors, resolve_config
from keel.core import SystemClock

__all__ = ["budget_app", "forecast_command"]

budget_app = typer.Typer(help="Budgets: spend, holds, caps and what remains.", no_args_is_help=True)


def _usd(value: object) -> str:
    return "—" if value is None else f"${value:,.4f}"


@budget_app.command("show")
@handle_errors
def show(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only this workflow.")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    all_days: Annotated[bool, typer.Option("--all-days", help="Include past days.")] = False,
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """Spend, reserved, cap and remaining, per cap and key."""
    from keel.ledger import Ledger
    from keel.store import open_store

    cfg = resolve_config(config, store)
    with open_store(cfg.store_url, migrate=False) as s:
        lines = Ledger(s, _clock()).report(
            tenant=tenant, workflow=workflow, run_id=run, all_days=all_days
        )
    if not lines:
        console.print("no budget counters (no call has reserved against a cap yet)")
        return
    table = Table(title="Budgets")
    for col in ("tenant", "cap", "scope", "key", "period", "spent", "reserved", "limit", "left"):
        table.add_column(col, overflow="fold")
    for line in lines:
        if line.limit_usd is not None:
            spent, held, limit = _usd(line.spent_usd), _usd(line.reserved_usd), _usd(line.limit_usd)
            left = _usd(max(line.limit_usd - line.spent_usd - line.reserved_usd, 0))
        elif line.limit_calls is not None:
            spent, held = str(line.spent_calls), str(line.reserved_calls)
            limit = str(line.limit_calls)
            left = str(max(line.limit_calls - line.spent_calls - line.reserved_calls, 0)) + " calls"
        else:
            spent, held = str(line.spent_tokens), str(line.reserved_tokens)
            limit = str(line.limit_tokens)
            left = str(max((line.limit_tokens or 0) - line.spent_tokens - line.reserved_tokens, 0))
        table.add_row(
            line.tenant,
            line.cap_id,
            line.scope,
            line.key,
            line.period or "—",
            spent,
            held,
            limit,
            left,
        )
    console.print(table)


@handle_errors
def forecast_command(
    workflow: Annotated[str, typer.Argument(help="The workflow to forecast.")],
    runs: Annotated[int, typer.Option(help="How many future runs.")] = 1000,
    backtest: Annotated[
        bool, typer.Option("--backtest", help="Forecast the later half of history from the first.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed (forecasts are reproducible).")] = 0,
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """Expected cost of N runs of a workflow with a P10–P90 band, calibrated on its history."""
    from keel.ledger.forecast import backtest as run_backtest
    from keel.ledger.forecast import forecast, render_backtest, render_forecast
    from keel.runtime.history import run_observations
    from keel.store import open_store

    cfg = resolve_config(config, store)
    with open_store(cfg.store_url, migrate=False) as s:
        history = run_observations(s, workflow)
    if backtest:
        text = render_backtest(run_backtest(history, seed=seed))
    else:
        text = render_forecast(forecast(history, runs, seed=seed))
    sys.stdout.write(text + "\n")


def _clock() -> SystemClock:
    return SystemClock()
