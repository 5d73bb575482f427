"""The ``keel`` command. Each command is a thin layer over the public Python API."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from keel.cli._approvals import approvals_app
from keel.cli._audit import audit_app
from keel.cli._budget import budget_app, forecast_command
from keel.cli._common import (
    ConfigOption,
    StoreOption,
    console,
    handle_errors,
    resolve_config,
)
from keel.cli._keys import keys_app
from keel.cli._mcp import mcp_app
from keel.cli._policy import policy_app
from keel.cli._reconcile import reconcile_command
from keel.cli._runs import runs_app, worker_command
from keel.cli._secrets import secrets_app
from keel.cli._serve import serve_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="keel",
    help="Keel: a governed runtime for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(approvals_app, name="approvals")
app.add_typer(budget_app, name="budget")
app.command("forecast")(forecast_command)
app.command("worker")(worker_command)
app.command("serve")(serve_command)
app.add_typer(keys_app, name="keys")
app.add_typer(mcp_app, name="mcp")
app.add_typer(secrets_app, name="secret")
app.command("reconcile")(reconcile_command)
app.add_typer(runs_app, name="runs")
token_app = typer.Typer(help="Agent tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.command()
def version() -> None:
    """Print Keel's version."""
    from keel import __version__

    console.print(__version__)


@app.command()
@handle_errors
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Folder for the demo's store, keys and shop.")
    ] = Path("keel-demo"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")] = False,
) -> None:
    """Run the support-agent demo: 50 tickets through the real gateway, offline, on SQLite."""
    from keel.demo.runner import run_demo

    report = run_demo(directory, console=console, quiet=quiet)
    if report.audit is None or not report.audit.ok:
        raise typer.Exit(1)


@token_app.command("mint")
@handle_errors
def token_mint(
    agent: Annotated[str, typer.Option(help="Agent id (the token's subject).")],
    tenant: Annotated[str, typer.Option(help="Tenant the agent acts in.")],
    scope: Annotated[list[str], typer.Option("--scope", "-s", help="Scope to grant (repeat).")],
    role: Annotated[list[str] | None, typer.Option("--role", help="Role (repeat).")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds (60–900).")] = 600,
    on_behalf_of: Annotated[str | None, typer.Option(help="The human the agent acts for.")] = None,
    run: Annotated[str | None, typer.Option(help="Bind the token to a run id.")] = None,
    config: Path | None = ConfigOption,
) -> None:
    """Mint a short-lived signed agent token (prints it on stdout)."""
    from keel.identity import KeySet, TokenIssuer

    cfg = resolve_config(config)
    Path(cfg.home).mkdir(parents=True, exist_ok=True)
    keys = KeySet.load_or_create(Path(cfg.home) / "keys.json")
    token = TokenIssuer(keys, issuer=cfg.token_issuer).mint(
        agent,
        tenant,
        roles=role or [],
        scopes=scope,
        audience=cfg.token_audience,
        on_behalf_of=on_behalf_of,
        run_id=run,
        ttl=_dt.timedelta(seconds=ttl),
    )
    sys.stdout.write(token + "\n")


@token_app.command("revoke")
@handle_errors
def token_revoke(
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")],
    jti: Annotated[
        str | None,
        typer.Option(help="Token id to revoke (the 'jti' claim; see `keel token inspect`)."),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(help="Revoke every token of this agent minted until now."),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="With --agent: only its tokens in this tenant.")
    ] = None,
    actor: Annotated[str, typer.Option(help="Who is revoking (recorded).")] = "cli",
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """Revoke an agent token (--jti) or all of an agent's tokens (--agent), in every process
    sharing the store; prints the revocation as JSON."""
    from keel.app import App

    if (jti is None) == (agent is None):
        raise typer.BadParameter("pass exactly one of --jti and --agent", param_hint="--jti")
    with App(resolve_config(config, store)) as keel_app:
        revocation = keel_app.revoke_token(
            jti, agent=agent, tenant=tenant, reason=reason, actor=actor
        )
    sys.stdout.write(json.dumps(revocation.to_dict(), indent=2) + "\n")


@token_app.command("inspect")
@handle_errors
def token_inspect(token: Annotated[str, typer.Argument(help="The token text.")]) -> None:
    """Print a token's claims WITHOUT verifying it (to find its 'jti' for `keel token revoke`)."""
    from keel.identity import unverified_claims

    sys.stdout.write(json.dumps(unverified_claims(token), indent=2, sort_keys=True) + "\n")


@token_app.command("keygen")
@handle_errors
def token_keygen(
    agent: Annotated[str, typer.Option(help="The agent that will sign its requests.")],
    kid: Annotated[str | None, typer.Option(help="Key id (default: the key's thumbprint).")] = None,
) -> None:
    """Make an Ed25519 request-signing key for an agent: prints the private key (give it to the
    agent) and the `agent_signing_keys` entry for keel.yaml, as JSON."""
    import json

    from keel.identity import SigningKey

    key = SigningKey.generate(kid)
    jwk = key.to_jwk()
    sys.stdout.write(
        json.dumps(
            {
                "kid": key.kid,
                "agent": agent,
                "private_key": jwk["d"],
                "config": {
                    "agent_signing_keys": {key.kid: {"agent": agent, "public_key": jwk["x"]}}
                },
            },
            indent=2,
        )
        + "\n"
    )


def _kill_switches(config: Path | None, store: str | None):  # type: ignore[no-untyped-def]
    from keel.app import App

    return App(resolve_config(config, store))


@app.command()
@handle_errors
def kill(
    scope: Annotated[
        str | None, typer.Argument(help="global | tenant | agent | workflow | tool")
    ] = None,
    target: Annotated[str | None, typer.Argument(help="What to stop (not for global).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why (recorded).")] = None,
    actor: Annotated[str, typer.Option(help="Who is flipping it (recorded).")] = "cli",
    list_: Annotated[bool, typer.Option("--list", help="List engaged switches.")] = False,
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """Engage a kill switch: the next matching call is denied, in every process."""
    with _kill_switches(config, store) as keel_app:
        if list_ or scope is None:
            switches = keel_app.kill_switches.list()
            if not switches:
                console.print("no kill switch engaged")
            for s in switches:
                console.print(
                    f"{s.scope:9} {s.target:30} by {s.actor} at {s.updated_at}: {s.reason}"
                )
            return
        if not reason:
            raise typer.BadParameter("--reason is required", param_hint="--reason")
        switch = keel_app.kill_switches.engage(scope, target or "*", reason=reason, actor=actor)
        console.print(f"[red]engaged[/] kill switch {switch.scope} {switch.target}")


@app.command()
@handle_errors
def unkill(
    scope: Annotated[str, typer.Argument(help="global | tenant | agent | workflow | tool")],
    target: Annotated[str | None, typer.Argument(help="What to release.")] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "released",
    actor: Annotated[str, typer.Option(help="Who is releasing it (recorded).")] = "cli",
    config: Path | None = ConfigOption,
    store: str | None = StoreOption,
) -> None:
    """Release a kill switch."""
    with _kill_switches(config, store) as keel_app:
        switch = keel_app.kill_switches.release(scope, target or "*", reason=reason, actor=actor)
        console.print(f"[green]released[/] kill switch {switch.scope} {switch.target}")


@db_app.command("status")
@handle_errors
def db_status(config: Path | None = ConfigOption, store: str | None = StoreOption) -> None:
    """Show the store (password hidden), its backend, schema version and pending migrations."""
    from keel.errors import SchemaVersionError
    from keel.store import SCHEMA_VERSION, open_store
    from keel.store._schema import MIGRATIONS

    cfg = resolve_config(config, store)
    try:
        with open_store(cfg.store_url, migrate=False) as s:
            url, backend, version = s.display_url, s.dialect, s.schema_version()
    except SchemaVersionError as exc:
        if exc.context.get("found", 0) > SCHEMA_VERSION:
            raise
        url, backend = str(exc.context.get("url", "")), cfg.store_url.split(":", 1)[0]
        version = int(exc.context.get("found", 0))
    pending = [number for number, _name, _sql in MIGRATIONS if number > version]
    console.print_json(
        json.dumps(
            {
                "store": url,
                "backend": backend,
                "schema": version,
                "latest": SCHEMA_VERSION,
                "pending": pending,
                "up_to_date": not pending,
            }
        )
    )


@db_app.command("migrate")
@handle_errors
def db_migrate(config: Path | None = ConfigOption, store: str | None = StoreOption) -> None:
    """Apply pending migrations."""
    from keel.store import open_store

    cfg = resolve_config(config, store)
    with open_store(cfg.store_url, migrate=True) as s:
        console.print(f"{s.display_url}: schema version {s.schema_version()}", soft_wrap=True)


def main() -> None:
    app()
