"""``keel policy check|explain``."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from keel.canonical import parse_json
from keel.cli._common import console, err_console, handle_errors
from keel.core import Call, Effect, Principal
from keel.errors import ConfigError, InvalidRequestError, KeelError
from keel.tools import check_tool_name

__all__ = ["call_from_json", "policy_app"]

policy_app = typer.Typer(help="Check and explain policy documents.", no_args_is_help=True)

_EFFECTS = ("read", "reversible", "irreversible")


def call_from_json(data: Any, source: str) -> tuple[Call, Effect, _dt.datetime | None]:
    """Build a Call from the JSON accepted by ``keel policy explain --call``.

    ``{"tool": "billing.refund", "arguments": {...}, "agent": "support-bot", "tenant": "acme",
    "roles": [...], "scopes": [...], "workflow": "support", "tainted": false,
    "effect": "irreversible", "time": "2026-01-01T12:00:00Z"}``. ``effect`` defaults to
    ``irreversible`` (the most cautious); ``time`` defaults to now.
    """
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{source}: the call must be a JSON object")
    known = {
        "tool",
        "arguments",
        "agent",
        "tenant",
        "roles",
        "scopes",
        "workflow",
        "tainted",
        "effect",
        "time",
        "on_behalf_of",
        "run_id",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidRequestError(
            f"{source}: unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}"
        )
    for field in ("tool", "agent", "tenant"):
        if not isinstance(data.get(field), str):
            raise InvalidRequestError(f"{source}: field {field!r} (a string) is required")
    arguments = data.get("arguments", {})
    if not isinstance(arguments, dict):
        raise InvalidRequestError(f"{source}: 'arguments' must be an object")
    effect = data.get("effect", "irreversible")
    if effect not in _EFFECTS:
        raise InvalidRequestError(f"{source}: 'effect' must be one of {', '.join(_EFFECTS)}")
    when = None
    if data.get("time") is not None:
        try:
            when = _dt.datetime.fromisoformat(str(data["time"]))
        except ValueError:
            raise InvalidRequestError(f"{source}: 'time' is not an ISO-8601 time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
    principal = Principal(
        agent_id=data["agent"],
        tenant=data["tenant"],
        roles=frozenset(data.get("roles", [])),
        scopes=frozenset(data.get("scopes", [])),
        on_behalf_of=data.get("on_behalf_of"),
        run_id=data.get("run_id"),
    )
    call = Call(
        kind="tool",
        target=check_tool_name(data["tool"]),
        arguments=arguments,
        principal=principal,
        run_id=data.get("run_id"),
        workflow=data.get("workflow"),
        tainted=bool(data.get("tainted", False)),
    )
    return call, effect, when


@policy_app.command("check")
def check(files: Annotated[list[Path], typer.Argument(help="Policy YAML files.")]) -> None:
    """Validate policy files; errors name the file, line and key. Exit 2 if any is broken."""
    from keel.policy import load_policy

    failed = False
    for path in files:
        try:
            policy = load_policy(path)
        except KeelError as exc:
            failed = True
            err_console.print(f"[red]✗[/] {exc.message}", highlight=False)
            continue
        console.print(f"[green]✓[/] {path}: policy {policy.name!r} ok ({policy.hash})")
    if failed:
        raise typer.Exit(2)


@policy_app.command("explain")
@handle_errors
def explain(
    files: Annotated[list[Path], typer.Argument(help="Policy YAML files.")],
    call: Annotated[Path, typer.Option("--call", help="Call JSON file ('-' for stdin).")],
) -> None:
    """Print the decision for a call as JSON: verdict, rule id, reason, policy hash."""
    from keel.policy import PolicySet, load_policy

    policies = [load_policy(path) for path in files]
    if str(call) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = call.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {call}: {exc.strerror}") from None
    parsed, effect, when = call_from_json(parse_json(text, what=str(call)), str(call))
    result = PolicySet(policies).explain(parsed, effect, when or _dt.datetime.now(_dt.UTC))
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
