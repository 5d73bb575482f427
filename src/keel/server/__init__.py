"""The Keel HTTP server (FastAPI + uvicorn): thin routes over the Python API.

``create_app(app)`` builds the ASGI application for a ``keel.App``; ``keel serve`` runs it.
"""

from __future__ import annotations

from keel.server.app import CallBody, create_app
from keel.server.errors import error_body, http_status

__all__ = ["CallBody", "create_app", "error_body", "http_status"]
