"""``keel mcp``: the MCP gateway over stdio, and the review of upstream tools.

- ``keel mcp --agent ID --tenant T --scope S`` (or ``--token``): serve MCP on stdin/stdout.
- ``keel mcp tools list``: every upstream tool Keel has seen, its pin status and findings.
- ``keel mcp tools review``: show each tool waiting for review (new, flagged or changed) with
  what changed, and approve or reject it (``--approve``/``--reject`` for one tool, no prompt).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from keel.cli._common import ConfigOption, console, err_console, handle_errors, resolve_config
from keel.errors import UsageError

mcp_app = typer.Typer(
    help="The MCP gateway: serve over stdio (no subcommand) and review upstream tools.",
    invoke_without_command=True,
)
tools_app = typer.Typer(
    help="Upstream MCP tools: pins, quarantine, rug pulls.", no_args_is_help=True
)
mcp_app.add_typer(tools_app, name="tools")


@mcp_app.callback()
@handle_errors
def serve(
    ctx: typer.Context,
    token: Annotated[
        str | None,
        typer.Option(help="The agent token to call with (default: $KEEL_AGENT_TOKEN)."),
    ] = None,
    agent: Annotated[
        str | None, typer.Option(help="Mint (and renew) tokens for this agent instead.")
    ] = None,
    tenant: Annotated[str, typer.Option(help="With --agent: the tenant.")] = "default",
    scope: Annotated[
        list[str] | None, typer.Option(help="With --agent: a granted scope (repeatable).")
    ] = None,
    role: Annotated[
        list[str] | None, typer.Option(help="With --agent: a role (repeatable).")
    ] = None,
    config: Path | None = ConfigOption,
) -> None:
    """Serve the MCP gateway on stdin/stdout for one agent (logs go to stderr)."""
    if ctx.invoked_subcommand is not None:
        return
    import anyio

    from keel.app import App
    from keel.mcp import McpGateway
    from keel.mcp.stdio import TokenSource, serve_stdio

    token = token or os.environ.get("KEEL_AGENT_TOKEN") or None
    if (token is None) == (agent is None):
        raise UsageError("give --token (or $KEEL_AGENT_TOKEN) or --agent, exactly one")
    with App(resolve_config(config)) as keel:
        gateway = McpGateway.from_app(keel)
        if agent is not None:
            granted = list(scope or [])
            roles = list(role or [])
            source = TokenSource(
                keel,
                mint=lambda: keel.mint_token(agent, tenant=tenant, scopes=granted, roles=roles),
            )
        else:
            assert token is not None
            keel.verifier.verify(token)  # refuse a bad token before speaking MCP at all
            source = TokenSource(keel, token=token)
        anyio.run(serve_stdio, keel, gateway, source)


@tools_app.command("list")
@handle_errors
def tools_list(
    status: Annotated[
        str | None,
        typer.Option(help="Only pins in this status (approved, pending, changed, rejected)."),
    ] = None,
    refresh: Annotated[bool, typer.Option(help="Ask every upstream for its tools first.")] = False,
    config: Path | None = ConfigOption,
) -> None:
    """Every upstream tool seen, as JSON lines: status, usable, digests, findings."""
    from keel.app import App
    from keel.mcp import McpGateway

    with App(resolve_config(config)) as keel:
        gateway = McpGateway.from_app(keel)
        try:
            if refresh:
                gateway.refresh_sync()
            for pin in gateway.pins.list(status=status):
                row = pin.to_dict()
                row.pop("offered")
                console.print(json.dumps(row), soft_wrap=True, highlight=False)
        finally:
            gateway.close()


@tools_app.command("review")
@handle_errors
def tools_review(
    approve: Annotated[
        str | None, typer.Option(help="Approve this tool (upstream.tool) as offered now.")
    ] = None,
    reject: Annotated[str | None, typer.Option(help="Reject this tool (upstream.tool).")] = None,
    digest: Annotated[
        str | None, typer.Option(help="With --approve: only if the offered digest is this one.")
    ] = None,
    actor: Annotated[str, typer.Option(help="Who reviews (recorded in the audit log).")] = "cli",
    refresh: Annotated[bool, typer.Option(help="Ask every upstream for its tools first.")] = True,
    config: Path | None = ConfigOption,
) -> None:
    """Review tools waiting for a decision: new ones on a review-only upstream, flagged ones
    (hidden instructions, invisible characters) and changed ones (rug pulls). Without
    --approve/--reject, each is shown and asked about in turn."""
    from keel.app import App
    from keel.mcp import McpGateway

    with App(resolve_config(config)) as keel:
        gateway = McpGateway.from_app(keel)
        try:
            if refresh and gateway.connections:
                try:
                    gateway.refresh_sync()
                except Exception as exc:
                    err_console.print(f"[yellow]warning[/]: could not refresh: {exc}")
            if approve or reject:
                target = approve or reject
                assert target is not None
                upstream, _, tool = target.partition(".")
                if approve:
                    pin = gateway.pins.approve(upstream, tool, actor=actor, digest=digest)
                else:
                    pin = gateway.pins.reject(upstream, tool, actor=actor)
                row = pin.to_dict()
                row.pop("offered")
                console.print(json.dumps(row), soft_wrap=True, highlight=False)
                return
            waiting = [p for p in gateway.pins.list() if not p.usable]
            if not waiting:
                console.print("nothing to review: every upstream tool seen is approved")
                return
            for pin in waiting:
                _show(pin)
                choice = typer.prompt("approve, reject or skip?", default="skip")
                if choice.startswith("a"):
                    gateway.pins.approve(
                        pin.upstream, pin.tool, actor=actor, digest=pin.offered_digest
                    )
                    console.print(f"approved {pin.upstream}.{pin.tool}")
                elif choice.startswith("r"):
                    gateway.pins.reject(pin.upstream, pin.tool, actor=actor)
                    console.print(f"rejected {pin.upstream}.{pin.tool}")
        finally:
            gateway.close()


def _show(pin: object) -> None:
    from keel.mcp.pins import PinState

    assert isinstance(pin, PinState)
    console.rule(f"{pin.upstream}.{pin.tool} — {pin.status}")
    offered = pin.offered
    console.print("description:", repr(offered.get("description")), highlight=False)
    console.print("input schema:", json.dumps(offered.get("inputSchema")), highlight=False)
    if pin.findings:
        for finding in pin.findings:
            console.print(f"[red]finding[/]: {finding}", highlight=False)
    console.print(
        f"offered digest {pin.offered_digest}; approved digest {pin.approved_digest}",
        highlight=False,
    )
