"""Shared CLI plumbing: config loading, error → exit code mapping (the only place it lives)."""

from __future__ import annotations

import datetime as _dt
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from keel.config import KeelConfig
from keel.configfile import load_config
from keel.errors import (
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    InternalError,
    KeelError,
    ToolError,
    UsageError,
)

__all__ = [
    "ConfigOption",
    "StoreOption",
    "console",
    "err_console",
    "exit_code",
    "handle_errors",
    "parse_since",
    "resolve_config",
]

console = Console()
err_console = Console(stderr=True)

ConfigOption = typer.Option(
    None, "--config", "-c", help="Keel config file (default: ./keel.yaml if present)."
)
StoreOption = typer.Option(None, "--store", help="Store URL, e.g. sqlite:///keel.db.")

#: Exit codes by error class, most specific first. 0 = success, 1 = a check failed.
_EXIT_CODES: tuple[tuple[type[KeelError], int], ...] = (
    (UsageError, 2),
    (AuthenticationError, 3),
    (AuthorizationError, 4),
    (ConflictError, 5),
    (ToolError, 6),
    (InternalError, 70),
)


def exit_code(error: KeelError) -> int:
    for cls, code in _EXIT_CODES:
        if isinstance(error, cls):
            return code
    return 1


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Print a KeelError as one readable line (plus its code) and exit with its mapped code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeelError as exc:
            err_console.print(f"[red]error[/] ({exc.code}): {exc.message}", highlight=False)
            raise typer.Exit(exit_code(exc)) from None

    return wrapper  # type: ignore[return-value]


def resolve_config(config: Path | None, store: str | None = None) -> KeelConfig:
    return load_config(config, overrides={"store_url": store})


_RELATIVE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str | None, now: _dt.datetime) -> _dt.datetime | None:
    """``7d``, ``12h``, ``30m`` (relative to now) or an ISO-8601 time (UTC if no zone)."""
    if value is None:
        return None
    match = _RELATIVE.fullmatch(value.strip())
    if match:
        return now - _dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--since {value!r} is neither a duration like 7d/12h/30m nor an ISO-8601 time"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.UTC)
