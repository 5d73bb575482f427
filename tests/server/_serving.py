"""One way to serve an App in the HTTP tests: uvicorn in a thread on a real loopback socket."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from keel import App
from keel.server import create_app

__all__ = ["serving"]


@contextlib.contextmanager
def serving(keel: App, *, scheme: str = "http", **options: Any) -> Iterator[str]:
    """``keel`` served by uvicorn on a free loopback port (``options``: more uvicorn settings,
    e.g. TLS); yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(keel), log_level="warning", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started
    try:
        yield f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
