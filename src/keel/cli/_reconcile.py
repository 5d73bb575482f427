"""``keel reconcile``: check recorded effects against their systems of record.

A thin layer over ``keel.runtime.reconcile.reconcile``. Reconcile hooks are code, so the App that
registers the tools is loaded with ``--app package.module:app``. Exit code 1 when drift is found
(an effect missing, an outcome that differs, a hook that failed); open steps alone exit 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from keel.cli._common import ConfigOption, console, handle_errors, parse_since
from keel.cli._runs import AppOption, load_app
from keel.errors import UsageError
from keel.runtime.reconcile import ReconcileReport, reconcile

__all__ = ["reconcile_command"]


def parse_compare(values: list[str] | None) -> dict[str, list[str]]:
    """``["bank.transfer=amount,currency"]`` → ``{"bank.transfer": ["amount", "currency"]}``."""
    keys: dict[str, list[str]] = {}
    for value in values or ():
        tool, sep, names = value.partition("=")
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        if not sep or not tool.strip() or not chosen:
            raise UsageError(
                f"--compare {value!r} must look like TOOL=KEY[,KEY...], e.g. bank.transfer=amount"
            )
        keys.setdefault(tool.strip(), []).extend(chosen)
    return keys


@handle_errors
def reconcile_command(
    app_spec: str | None = AppOption,
    since: Annotated[
        str | None,
        typer.Option(help="Only steps finished since then: 7d, 12h, 30m or an ISO-8601 time."),
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only runs in this tenant.")] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            help="TOOL=KEY[,KEY...]: compare only these outcome keys for TOOL (repeat).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    config: Path | None = ConfigOption,
) -> None:
    """Report drift between what Keel recorded and what the systems of record hold."""
    keys = parse_compare(compare)
    app = load_app(app_spec, config)
    with app:
        report = reconcile(
            app,
            since=parse_since(since, app.clock.now()),
            workflow=workflow,
            tenant=tenant,
            keys=keys,
        )
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


def _print(report: ReconcileReport) -> None:
    if not report.tools:
        console.print(
            "[yellow]no tool with a reconcile hook is registered[/]: only open steps were "
            "looked at (pass --app module:app to load your tools)"
        )
    else:
        console.print(f"checked effects of {', '.join(report.tools)}")
    verdict = "[green]no drift[/]" if report.ok else f"[red]drift in {report.drift} step(s)[/]"
    console.print(
        f"{verdict}: checked {report.checked}, matched {report.matched}, missing "
        f"{report.missing}, differs {report.differs}, errors {report.errors}, open {report.open}"
    )
    if not report.findings:
        return
    table = Table(title=f"Findings (job {report.job_id})")
    for col in ("kind", "run", "step", "tool", "run status", "message"):
        table.add_column(col, overflow="fold")
    for f in report.findings:
        table.add_row(f.kind, f.run_id, f.step_id, f.tool, f.run_status, f.message)
    console.print(table)
    if report.truncated:
        console.print("[yellow]more findings than shown[/]: the counts above are complete")
