"""``keel secret``: stored secrets for HTTP tools and upstreams (values never on the command line).

``set`` reads the value from standard input (a hidden prompt on a terminal) or ``--from-file``,
never from an argument, so it stays out of shell history and process listings. ``list`` shows
names and dates only; no command ever prints a value.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from keel.cli._common import ConfigOption, console, handle_errors, resolve_config
from keel.errors import UsageError

if TYPE_CHECKING:
    from keel.secrets import SecretStore

secrets_app = typer.Typer(
    help="Secrets kept encrypted in the store (for {secret:NAME} in tool headers).",
    no_args_is_help=True,
)

_NameArgument = Annotated[str, typer.Argument(help="The secret's name, e.g. crm_token.")]


@contextmanager
def _secret_store(config: Path | None) -> Iterator[SecretStore]:
    from keel.secrets import SecretStore, default_key_path
    from keel.store import open_store

    settings = resolve_config(config)
    home = Path(settings.home)
    store = open_store(settings.store_url)
    try:
        yield SecretStore(store, default_key_path(home))
    finally:
        store.close()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment
        return "cli"


def _read_value(from_file: Path | None) -> str:
    if from_file is not None:
        try:
            data = from_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {str(from_file)!r}: {exc.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{str(from_file)!r} is not UTF-8 text") from None
    elif sys.stdin.isatty():
        text = typer.prompt("Value", hide_input=True, confirmation_prompt=True)
    else:
        text = sys.stdin.read()
    value = text.rstrip("\r\n")
    if not value:
        raise UsageError("the secret's value is empty; pipe it in or pass --from-file")
    return value


@secrets_app.command("set")
@handle_errors
def set_secret(
    name: _NameArgument,
    from_file: Annotated[
        Path | None,
        typer.Option("--from-file", help="Read the value from this file instead of stdin."),
    ] = None,
    config: Path | None = ConfigOption,
) -> None:
    """Store (or replace) a secret; the value comes from stdin or --from-file."""
    from keel.secrets import check_name

    check_name(name)
    value = _read_value(from_file)
    with _secret_store(config) as secrets:
        info = secrets.put(name, value, actor=_actor())
        key_id = secrets.key_id
    console.print(f"stored secret {info.name} (master key {key_id}) at {info.updated_at}")


@secrets_app.command("list")
@handle_errors
def list_secrets(config: Path | None = ConfigOption) -> None:
    """List stored secrets: names, when and by whom they were last set (never values)."""
    with _secret_store(config) as secrets:
        rows = [info._asdict() for info in secrets.names()]
    console.print(json.dumps(rows, indent=2), soft_wrap=True)


@secrets_app.command("delete")
@handle_errors
def delete_secret(name: _NameArgument, config: Path | None = ConfigOption) -> None:
    """Delete a stored secret; tools that reference it fail until it is set again."""
    with _secret_store(config) as secrets:
        secrets.delete(name, actor=_actor())
    console.print(f"deleted secret {name}")
