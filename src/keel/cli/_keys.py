"""``keel keys``: operator API keys for the HTTP server (create shows the key once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from keel.cli._common import ConfigOption, console, handle_errors, resolve_config

keys_app = typer.Typer(help="Operator API keys for the HTTP server.", no_args_is_help=True)


@keys_app.command("create")
@handle_errors
def create(
    name: Annotated[str, typer.Option(help="The person (or script) the key belongs to.")],
    role: Annotated[str, typer.Option(help="viewer, approver, operator or admin.")] = "viewer",
    tenant: Annotated[
        str | None, typer.Option(help="Limit the key to one tenant (default: every tenant).")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(help="An approver label a policy may name (repeatable), e.g. finance."),
    ] = None,
    config: Path | None = ConfigOption,
) -> None:
    """Create a key. Its text is printed once and never stored: keep it now."""
    from keel.app import App

    with App(resolve_config(config)) as keel:
        text, key = keel.operator_keys.create(
            name, role, tenant=tenant, labels=tuple(label or ()), created_by="cli"
        )
    console.print(json.dumps({"key": text, **key.to_dict()}), soft_wrap=True)


@keys_app.command("list")
@handle_errors
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    config: Path | None = ConfigOption,
) -> None:
    """List keys (ids, names, roles, tenants; never secrets)."""
    from keel.app import App

    with App(resolve_config(config)) as keel:
        keys = keel.operator_keys.list(include_revoked=all_keys)
    console.print(json.dumps([k.to_dict() for k in keys], indent=2), soft_wrap=True)


@keys_app.command("revoke")
@handle_errors
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from keel keys list).")],
    config: Path | None = ConfigOption,
) -> None:
    """Revoke a key now; the server refuses it on its next use."""
    from keel.app import App

    with App(resolve_config(config)) as keel:
        key = keel.operator_keys.revoke(key_id)
    console.print(f"revoked operator key {key.key_id} ({key.name}) at {key.revoked_at}")
