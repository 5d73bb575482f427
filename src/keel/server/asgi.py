"""The ASGI entry point uvicorn imports: ``uvicorn --factory keel.server.asgi:build``.

``KEEL_APP`` names your App uvicorn-style (``package.module:app``, an ``App`` or a function
returning one: that is where tools and workflows are registered); without it a plain App is
built from the config file in ``KEEL_CONFIG`` (else ``./keel.yaml``, else defaults). Each uvicorn
worker process builds its own App on the shared store.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from keel.app import App, import_app
from keel.configfile import load_config
from keel.server.app import create_app

__all__ = ["build"]


def build() -> FastAPI:
    """A fresh server application for this process (its App is closed at shutdown)."""
    spec = os.environ.get("KEEL_APP")
    if spec:
        keel = import_app(spec)
    else:
        path = os.environ.get("KEEL_CONFIG")
        keel = App(load_config(Path(path) if path else None))
    # Several worker processes share clients with no session affinity: a handshake-era MCP
    # session opened on one would be unknown on the others, so /mcp keeps none.
    several = int(os.environ.get("KEEL_SERVE_WORKERS", "1")) > 1
    api = create_app(keel, mcp_stateless=True if several else None)
    api.router.on_shutdown.append(keel.close)
    return api
