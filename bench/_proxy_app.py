"""The servers ``bench/proxy.py`` starts: Keel's App with the bench tool, and a plain baseline.

- ``app`` — for ``keel serve --app bench._proxy_app:app``: the App built from the config file
  named by ``$KEEL_CONFIG`` (``models:`` with the fake upstream, the bench policy), with the tool
  ``orders.lookup`` (scope ``orders:read``) registered. ``import_app`` calls it once per server
  process.
- ``plain`` — for ``uvicorn --factory bench._proxy_app:plain``: the same server stack as
  ``keel serve`` (FastAPI on uvicorn, httpx to the upstream) with no governance at all: it
  forwards ``POST /v1/chat/completions`` to ``$BENCH_UPSTREAM_URL`` with the upstream key, and
  answers ``POST /v1/calls`` by calling the same tool function. It shows how much of Keel's cost
  is the server stack and how much is governance.

Both need the repository root on ``sys.path`` (``bench/proxy.py`` sets ``PYTHONPATH``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from bench._proxy_upstream import lookup_order
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

__all__ = ["app", "plain"]


def app() -> Any:
    """A keel App from ``$KEEL_CONFIG`` with the bench tool registered."""
    from keel import App
    from keel.configfile import load_config

    keel = App(load_config(Path(os.environ["KEEL_CONFIG"])))
    keel.tool("orders.lookup", scope="orders:read", effect="read")(lookup_order)
    return keel


def plain() -> FastAPI:
    """A FastAPI app: an ungoverned forwarder and tool endpoint on Keel's server stack."""
    upstream = os.environ["BENCH_UPSTREAM_URL"].rstrip("/")
    headers = {
        "Authorization": f"Bearer {os.environ['BENCH_UPSTREAM_KEY']}",
        "Content-Type": "application/json",
    }
    api = FastAPI()
    clients: dict[str, httpx.AsyncClient] = {}

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        client = clients.get("c")
        if client is None:
            client = clients["c"] = httpx.AsyncClient(timeout=60.0)
        answer = await client.post(
            f"{upstream}/chat/completions", content=await request.body(), headers=headers
        )
        return Response(answer.content, answer.status_code, media_type="application/json")

    @api.post("/v1/calls")
    async def call(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"tool": body["tool"], "value": lookup_order(**body["arguments"])})

    return api
