"""``keel approvals list | show ID | approve ID | deny ID --reason …``.

The operator is named with ``--as`` and holds the roles given with ``--role`` (default:
``approver``); ``--tenant`` limits them to one tenant. Whoever runs the command with access to the
store is trusted to say who they are (as with ``keel kill``): the server authenticates operators.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.table import Table

from keel.cli._common import ConfigOption, StoreOption, console, handle_errors, resolve_config

if TYPE_CHECKING:
    from keel.app import App
    from keel.approvals import ApprovalRequest, ApprovalStatus, Operator

__all__ = ["approvals_app"]

approvals_app = typer.Typer(
    help="Calls waiting for a person: list, show, approve, deny.", no_args_is_help=True
)

AsOption = typer.Option("--as", help="The operator deciding (recorded in the audit log).")
RoleOption = typer.Option("--role", help="A role the operator holds (repeat; default: approver).")
TenantOption = typer.Option(help="Only this tenant (an operator of one tenant).")
JsonOption = typer.Option("--json", help="Print JSON instead of a table.")


def _app(config: Path | None, store: str | None) -> App:
    from keel.app import App

    return App(resolve_config(config, store))


def _operator(name: str, roles: list[str] | None, tenant: str | None) -> Operator:
    from keel.approvals import Operator

    return Operator(name, frozenset(roles or ["approver"]), tenant)


def _short(value: Any, width: int = 48) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(request: ApprovalRequest, field: str) -> str:
    value = request.to_dict()[field]
    return "—" if value is None else str(value)[:19].replace("T", " ")


@approvals_app.command("list")
@handle_errors
def list_(
    status: Annotated[
        str | None,
        typer.Option(help="pending | escalated | approved | executing | used | denied | expired"),
    ] = None,
    tenant: Annotated[str | None, TenantOption] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: Annotated[bool, JsonOption] = False,
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """Approval requests, newest first (default: every status)."""
    with _app(config, store) as keel_app:
        wanted = cast("ApprovalStatus | None", status)  # checked by Approvals.list
        requests = keel_app.approvals.list(status=wanted, tenant=tenant, limit=limit)
    if as_json:
        for request in requests:
            sys.stdout.write(json.dumps(request.to_dict(), ensure_ascii=False) + "\n")
        return
    if not requests:
        console.print("no approval requests")
        return
    table = Table(title="Approvals")
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for col in ("tenant", "tool", "arguments", "asked by", "rule", "ok", "asked"):
        table.add_column(col, overflow="fold")
    for r in requests:
        table.add_row(
            r.approval_id,
            r.status,
            r.tenant,
            r.tool,
            _short(r.arguments),
            r.requested_by + (f" for {r.on_behalf_of}" if r.on_behalf_of else ""),
            r.rule_id,
            f"{len(r.approved_by)}/{r.approvals_required}",
            _when(r, "created_at"),
        )
    console.print(table)


@approvals_app.command("show")
@handle_errors
def show(
    approval_id: Annotated[str, typer.Argument(help="The approval id (apr_…).")],
    tenant: Annotated[str | None, TenantOption] = None,
    as_json: Annotated[bool, JsonOption] = False,
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """One request: the call, why it needs a person, who may decide, and its history."""
    with _app(config, store) as keel_app:
        request = keel_app.approvals.get(approval_id, tenant=tenant)
    if as_json:
        sys.stdout.write(json.dumps(request.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return
    r = request
    lines = [
        f"[bold]{r.approval_id}[/]  {r.status}  ({r.kind})",
        f"call       {r.tool} {json.dumps(r.arguments, ensure_ascii=False, sort_keys=True)}",
        f"tenant     {r.tenant}   run {r.run_id or '—'}   step {r.step_id or '—'}",
        f"asked by   {r.requested_by}" + (f" for {r.on_behalf_of}" if r.on_behalf_of else ""),
        f"why        {r.reason}  [dim]({r.rule_id})[/]",
        f"deciders   {', '.join(r.deciders())}   approvals {len(r.approved_by)}"
        f"/{r.approvals_required}",
        f"deadline   {_when(r, 'deadline')}   token expires {_when(r, 'token_expires')}",
        "history",
    ]
    for event in r.history:
        note = f": {event.note}" if event.note else ""
        lines.append(f"  {event.at.isoformat()[:19]}  {event.action:8} {event.actor}{note}")
    for line in lines:
        console.print(line, highlight=False)


@approvals_app.command("approve")
@handle_errors
def approve(
    approval_id: Annotated[str, typer.Argument(help="The approval id (apr_…).")],
    as_: Annotated[str, AsOption],
    role: Annotated[list[str] | None, RoleOption] = None,
    tenant: Annotated[str | None, TenantOption] = None,
    note: Annotated[str, typer.Option(help="A note for the record.")] = "",
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """Approve a call; it may then run once, until the approval expires."""
    with _app(config, store) as keel_app:
        r = keel_app.approvals.approve(approval_id, _operator(as_, role, tenant), note=note)
    if r.status == "approved":
        console.print(
            f"[green]approved[/] {r.approval_id} ({r.tool}); valid once until "
            f"{_when(r, 'token_expires')} UTC",
            highlight=False,
        )
    else:
        missing = r.approvals_required - len(r.approved_by)
        console.print(
            f"[green]approval recorded[/] for {r.approval_id}: {len(r.approved_by)}/"
            f"{r.approvals_required}; {missing} more distinct approver(s) needed",
            highlight=False,
        )


@approvals_app.command("deny")
@handle_errors
def deny(
    approval_id: Annotated[str, typer.Argument(help="The approval id (apr_…).")],
    as_: Annotated[str, AsOption],
    reason: Annotated[str, typer.Option(help="Why (recorded, shown to the requester).")],
    role: Annotated[list[str] | None, RoleOption] = None,
    tenant: Annotated[str | None, TenantOption] = None,
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """Deny a call, with a reason."""
    with _app(config, store) as keel_app:
        r = keel_app.approvals.deny(approval_id, _operator(as_, role, tenant), reason=reason)
    console.print(f"[red]denied[/] {r.approval_id} ({r.tool}): {reason}", highlight=False)
