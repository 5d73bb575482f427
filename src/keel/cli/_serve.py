"""``keel serve``: the HTTP server (FastAPI on uvicorn) over your App.

One worker runs the App in this process. With ``--workers N`` uvicorn starts N processes; each
imports ``keel.server.asgi:build``, which builds the App named by ``--app`` (or a plain one from
the config): they share the store and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from keel.cli._common import ConfigOption, handle_errors
from keel.cli._runs import AppOption, load_app


@handle_errors
def serve_command(
    app_spec: str | None = AppOption,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    config: Path | None = ConfigOption,
) -> None:
    """Serve the REST API: /v1/calls, /healthz, /readyz and the OpenAPI document at /docs."""
    import uvicorn

    from keel.server import create_app

    if workers == 1:
        keel = load_app(app_spec, config)
        try:
            uvicorn.run(create_app(keel), host=host, port=port, log_level=log_level)
        finally:
            keel.close()
        return
    if app_spec:
        os.environ["KEEL_APP"] = app_spec
    if config is not None:
        os.environ["KEEL_CONFIG"] = str(config.resolve())
    uvicorn.run(
        "keel.server.asgi:build",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
