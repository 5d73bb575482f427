"""``keel worker`` and ``keel runs list|show|retry|cancel``.

Workflows are Python code, so commands that execute or inspect runs load the App that registers
them, uvicorn-style: ``--app package.module:app`` (an ``App`` object, or a function returning one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from keel.cli._common import ConfigOption, console, handle_errors, resolve_config

if TYPE_CHECKING:
    from keel.app import App

__all__ = ["runs_app", "worker_command"]

runs_app = typer.Typer(help="Durable runs: list, show, re-drive, cancel.", no_args_is_help=True)

AppOption = typer.Option(
    None, "--app", help="module:attribute of your App (or of a function returning one)."
)


def load_app(spec: str | None, config: Path | None) -> App:
    """The App named by ``spec``, or a plain App from the config (no workflows registered)."""
    from keel.app import App, import_app

    if spec is None:
        return App(resolve_config(config))
    return import_app(spec)


@handle_errors
def worker_command(
    app_spec: str | None = AppOption,
    once: Annotated[bool, typer.Option("--once", help="Drain runnable runs, then exit.")] = False,
    lease: Annotated[float, typer.Option(help="Lease length in seconds.")] = 30.0,
    poll: Annotated[float, typer.Option(help="Idle poll interval in seconds.")] = 0.5,
    reconcile_every: Annotated[
        float,
        typer.Option(help="Also run the reconciliation job every N seconds (0: never)."),
    ] = 0.0,
    config: Path | None = ConfigOption,
) -> None:
    """Execute runnable runs (pending, due timers, decided approvals, expired leases)."""
    app = load_app(app_spec, config)
    worker = app.runtime.worker(lease=lease)
    if reconcile_every > 0:
        worker.reconcile_every = reconcile_every
    console.print(f"worker {worker.worker_id} serving {', '.join(app.workflows) or 'no workflows'}")
    try:
        if once:
            console.print(json.dumps(worker.drain()))
        else:
            worker.serve(poll=poll)
    except KeyboardInterrupt:
        worker.stop.set()
    finally:
        app.close()


@runs_app.command("list")
@handle_errors
def list_runs(
    status: Annotated[str | None, typer.Option(help="Only runs in this state.")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only this workflow.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    config: Path | None = ConfigOption,
) -> None:
    """Runs, newest first."""
    app = load_app(None, config)
    with app:
        runs = app.runtime.runs.find(status=status, workflow=workflow, limit=limit)
        counts = app.runtime.runs.counts()
    table = Table(title="Runs " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for col in ("run", "workflow", "status", "attempts", "created", "error"):
        table.add_column(col, overflow="fold")
    for r in runs:
        error = (r.error or {}).get("message", "") if r.error else ""
        table.add_row(
            r.run_id, r.workflow, r.status, str(r.attempts), r.created_at.isoformat()[:19], error
        )
    console.print(table)


@runs_app.command("show")
@handle_errors
def show_run(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    config: Path | None = ConfigOption,
) -> None:
    """A run and its steps, as JSON."""
    app = load_app(None, config)
    with app:
        record = app.runtime.get(run_id)
        steps = app.runtime.steps(run_id)
    data = record.to_dict()
    data["steps"] = [step.to_dict() for step in steps]
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@runs_app.command("retry")
@handle_errors
def retry_run(
    run_id: Annotated[str, typer.Argument(help="A failed, parked, escalated or killed run.")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "re-driven by an operator",
    config: Path | None = ConfigOption,
) -> None:
    """Re-drive a run: failed steps run again through policy, budget and kill switch."""
    app = load_app(None, config)
    with app:
        record = app.runtime.retry(run_id, reason=reason)
    console.print(f"run {record.run_id} is {record.status}; a worker will pick it up")


@runs_app.command("cancel")
@handle_errors
def cancel_run(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")],
    config: Path | None = ConfigOption,
) -> None:
    """Cancel a run that has not ended."""
    app = load_app(None, config)
    with app:
        app.runtime.cancel(run_id, reason=reason)
    console.print(f"run {run_id} cancelled")
