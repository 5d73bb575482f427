"""Structured logs: JSON lines that carry the run, step and trace they belong to, secrets redacted.

    handler.setFormatter(JsonFormatter(redactor=app.redactor))
    {"ts": "2026-01-05T10:00:00.123456+00:00", "level": "info", "logger": "keel.runtime",
     "message": "...", "run_id": "run_…", "step_id": "2", "trace_id": "4bf9…", "span_id": "00f0…"}

The ids come from the *log context* (``log_context`` / ``bind_log_context``: the runtime binds
``run_id``, ``workflow`` and ``step_id`` while it executes a run) and from the current
OpenTelemetry span. Context variables follow ``asyncio`` tasks and ``asyncio.to_thread``, so a
tool running for a step logs with that step's ids. The formatter reads them when it formats:
use it on a handler that formats on the emitting thread (``StreamHandler``, ``FileHandler``).

Every line passes through ``keel.audit.Redactor`` (message, exception text and ``extra=`` fields):
an API key, a bearer token or a card number never reaches the log. ``keel serve --log-format
json`` (or ``log_format: json`` in the config) installs this formatter for uvicorn's and Keel's
loggers (:func:`log_config`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any, Literal

from opentelemetry import trace

from keel.audit import Redactor

__all__ = [
    "JsonFormatter",
    "bind_log_context",
    "log_config",
    "log_context",
    "log_fields",
    "reset_log_context",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})
_FIELDS: ContextVar[Mapping[str, str]] = ContextVar("keel_log_fields", default=_EMPTY)

#: Attributes every ``LogRecord`` has (and uvicorn's ``color_message``): not ``extra=`` fields.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message", "taskName"}
)


def bind_log_context(**fields: str | None) -> Token[Mapping[str, str]]:
    """Add ``fields`` (None values are dropped) to the log context of this task or thread;
    returns the token for :func:`reset_log_context`."""
    merged = {**_FIELDS.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _FIELDS.set(MappingProxyType(merged))


def reset_log_context(token: Token[Mapping[str, str]]) -> None:
    _FIELDS.reset(token)


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """``with log_context(run_id=..., step_id=...):`` — log lines inside carry these fields."""
    token = bind_log_context(**fields)
    try:
        yield
    finally:
        _FIELDS.reset(token)


def log_fields() -> Mapping[str, str]:
    """The log context of the current task or thread (read-only)."""
    return _FIELDS.get()


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line; see the module docstring. Thread-safe.

    Without a ``redactor`` one is made with a random salt: secrets are still replaced, but the
    markers do not match those in audit records (pass the App's ``redactor`` for that).
    """

    def __init__(self, *, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor or Redactor(salt=secrets.token_bytes(32))

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        free: dict[str, Any] = {"message": record.getMessage()}  # what may hold a secret
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                free[key] = _jsonable(value)
        if record.exc_info:
            free["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            free["stack"] = self.formatStack(record.stack_info)
        data.update(self._redactor.redact(free))
        data.update(_FIELDS.get())
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            data["trace_id"] = trace.format_trace_id(context.trace_id)
            data["span_id"] = trace.format_span_id(context.span_id)
        return json.dumps(data, ensure_ascii=False, default=str)


def _jsonable(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth < 8 and isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if depth < 8 and isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


def log_config(
    log_format: Literal["text", "json"], *, redactor: Redactor | None = None
) -> dict[str, Any] | None:
    """A ``logging.config.dictConfig`` document for ``keel serve``: uvicorn's loggers and
    ``keel.*`` write JSON lines (stderr; access lines to stdout). None for ``text`` (uvicorn's
    own format). Levels are left to uvicorn's ``log_level``."""
    if log_format == "text":
        return None
    stream = {"class": "logging.StreamHandler", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "redactor": redactor}},
        "handlers": {
            "default": {**stream, "stream": "ext://sys.stderr"},
            "access": {**stream, "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "keel": {"handlers": ["default"], "level": "INFO", "propagate": False},
        },
    }
