"""``keel audit verify|show``."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from keel.cli._common import (
    ConfigOption,
    StoreOption,
    console,
    err_console,
    handle_errors,
    parse_since,
    resolve_config,
)

__all__ = ["audit_app"]

audit_app = typer.Typer(help="Verify and query the audit log.", no_args_is_help=True)


@audit_app.command("verify")
@handle_errors
def verify(config: Path | None = ConfigOption, store: str | None = StoreOption) -> None:
    """Check the hash chain, signed checkpoints and the external anchor. Exit 1 if broken."""
    from keel.audit import verify_chain
    from keel.identity import KeySet
    from keel.store import open_store

    cfg = resolve_config(config, store)
    home = Path(cfg.home)
    keys_path = home / "keys.json"
    keys = KeySet.load(keys_path).public_only() if keys_path.exists() else None
    if keys is None:
        err_console.print(
            f"[yellow]warning[/]: no key set at {keys_path}; checkpoint signatures not checked"
        )
    anchor = home / "audit-anchor.jsonl"
    with open_store(cfg.store_url, migrate=False) as s:
        report = verify_chain(s, verifier=keys, checkpoint_path=anchor if anchor.exists() else None)
    if report.ok:
        console.print(
            f"[green]✓ audit log verified[/]: {report.records_checked} records, "
            f"chains: {', '.join(report.chains) or 'none'}"
        )
        return
    err_console.print(
        f"[red]✗ audit log BROKEN[/] at seq {report.first_bad_seq}: {report.problem}",
        highlight=False,
    )
    raise typer.Exit(1)


@audit_app.command("show")
@handle_errors
def show(
    run: Annotated[str | None, typer.Option("--run", help="Only this run id.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    tool: Annotated[str | None, typer.Option(help="Only this tool.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    decision: Annotated[str | None, typer.Option(help="allow | deny | require_approval …")] = None,
    since: Annotated[str | None, typer.Option(help="7d, 12h, 30m or an ISO time.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, full records.")] = False,
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """Show audit records, newest first."""
    from keel.audit import query
    from keel.store import open_store

    cfg = resolve_config(config, store)
    with open_store(cfg.store_url, migrate=False) as s:
        records = query(
            s,
            run_id=run,
            agent=agent,
            tool=tool,
            tenant=tenant,
            decision=decision,
            since=parse_since(since, _dt.datetime.now(_dt.UTC)),
            limit=limit,
        )
    if as_json:
        for record in records:
            sys.stdout.write(json.dumps(record.to_dict(), default=str) + "\n")
        return
    table = Table(show_lines=False)
    for col in ("seq", "time", "kind", "agent", "tool", "decision", "rule", "reason"):
        table.add_column(col, overflow="fold")
    for r in records:
        e = r.entry
        verdict = e.body.get("verdict") or {}
        reason = verdict.get("reason") or e.body.get("reason") or ""
        table.add_row(
            str(r.seq),
            r.ts.strftime("%Y-%m-%d %H:%M:%S"),
            e.kind,
            e.agent or "",
            e.tool or "",
            e.decision or "",
            e.rule_id or "",
            str(reason),
        )
    console.print(table)
