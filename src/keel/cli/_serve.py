"""``keel serve``: the HTTP server (FastAPI on uvicorn) over your App.

One worker runs the App in this process. With ``--workers N`` uvicorn starts N processes; each
imports ``keel.server.asgi:build``, which builds the App named by ``--app`` (or a plain one from
the config): they share the store and nothing else.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keel.cli._common import ConfigOption, handle_errors, resolve_config
from keel.cli._runs import AppOption, load_app
from keel.errors import UsageError

if TYPE_CHECKING:
    from keel.audit import Redactor


@handle_errors
def serve_command(
    app_spec: str | None = AppOption,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    log_format: Annotated[
        str | None,
        typer.Option(
            help="Log lines as 'text' or 'json' (with run/step/trace ids, secrets redacted). "
            "Default: the config's log_format."
        ),
    ] = None,
    config: Path | None = ConfigOption,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Serve HTTPS with this certificate (PEM).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The certificate's private key.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="Verify client certificates against this CA bundle (mTLS)."),
    ] = None,
    tls_require_client_cert: Annotated[
        bool, typer.Option(help="With --tls-client-ca: refuse connections without a certificate.")
    ] = True,
) -> None:
    """Serve the REST API: /v1/calls, /healthz, /readyz and the OpenAPI document at /docs."""
    if log_format not in (None, "text", "json"):
        raise UsageError(f"--log-format must be 'text' or 'json', not {log_format!r}")
    import uvicorn

    from keel.server import create_app
    from keel.server.tls import uvicorn_tls_options

    tls = uvicorn_tls_options(
        tls_cert, tls_key, tls_client_ca, require_client_cert=tls_require_client_cert
    )

    if workers == 1:
        keel = load_app(app_spec, config)
        try:
            logs = _log_options(log_format or keel.config.log_format, keel.redactor)
            api = create_app(keel)
            uvicorn.run(api, host=host, port=port, log_level=log_level, **tls, **logs)
        finally:
            keel.close()
        return
    os.environ["KEEL_SERVE_WORKERS"] = str(workers)
    if app_spec:
        os.environ["KEEL_APP"] = app_spec
    if config is not None:
        os.environ["KEEL_CONFIG"] = str(config.resolve())
    logs = _log_options(log_format or resolve_config(config).log_format, None)
    settings = uvicorn.Config(
        "keel.server.asgi:build",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        **tls,
        **logs,
    )
    from uvicorn.supervisors import Multiprocess

    # uvicorn's own socket for workers is made without IPPROTO_TCP, so asyncio never sets
    # TCP_NODELAY on its connections and every answer waits ~40 ms for a delayed ACK.
    Multiprocess(settings, sockets=[_listen(host, port)]).run()


def _listen(host: str, port: int) -> socket.socket:
    """A TCP listening socket the worker processes share (TCP_NODELAY on its connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _log_options(log_format: str, redactor: Redactor | None) -> dict[str, Any]:
    """uvicorn's ``log_config`` for ``--log-format`` (text: uvicorn's own). Without the App's
    redactor (several workers) secrets are still masked, with markers of a per-process salt."""
    from keel.telemetry import log_config

    config = log_config("json", redactor=redactor) if log_format == "json" else None
    return {} if config is None else {"log_config": config}
