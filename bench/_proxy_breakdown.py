"""Where a proxied call's time goes: each layer timed in process, for ``bench/proxy.py --breakdown``.

Every layer runs ``calls`` times after a warm-up, in this process, with no HTTP server: the CPU
time per call is ``time.process_time()`` (all threads, so the route's thread-pool hop counts) and
the wall time ``time.perf_counter()``. The layers of a model call, each containing the previous:
the bare ``httpx`` POST to the upstream, Keel's ``OpenAIProvider.complete``, the governed call
(``ModelCaller.acomplete``: the gateway with token, policy, rate limit, caps, audit), then the
whole ``POST /v1/chat/completions`` route driven through the ASGI app (FastAPI, body parsing,
redaction, the OpenAI wire format), and the plain forwarder through the same ASGI driver. For
tools: the function, ``App.call`` (sync gateway), ``POST /v1/calls`` through ASGI, and the plain
route. With ``cprofile`` > 0, a cProfile of the ASGI chat route follows (own time, then Keel's
functions by cumulative time). The App is ``bench._proxy_app:app`` on ``$KEEL_CONFIG``.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import sys
import time
from typing import Any

import httpx
from bench._proxy_app import app as keel_app
from bench._proxy_app import plain
from bench._proxy_upstream import lookup_order

from keel.gateway import CallRequest
from keel.models import ModelRequest
from keel.server import create_app

__all__ = ["asgi_post", "breakdown"]


async def asgi_post(app: Any, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One request through an ASGI app in this process: no socket, no HTTP parser."""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    delivered = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the answer is written
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def breakdown(
    *,
    up_port: int,
    key: str,
    agent: str,
    tenant: str,
    chat_body: dict[str, Any],
    tool_body: dict[str, Any],
    calls: int,
    cprofile: int,
) -> None:
    """Print CPU and wall time per call of each layer (see the module docstring)."""
    n = calls
    print(f"\n== where the time goes: each layer in process, {n:,} calls, no HTTP server ==")
    keel = keel_app()
    token = keel.mint_token(agent, tenant=tenant, scopes=["models:invoke", "orders:read"])
    auth = {"Authorization": f"Bearer {token}"}
    chat = json.dumps(chat_body).encode()
    tool = json.dumps(tool_body).encode()
    server, baseline = create_app(keel), plain()
    provider = keel.models.get(chat_body["model"]).provider
    caller = keel.model_caller()
    lines: list[tuple[str, float, float]] = []

    def record(label: str, cpu: float, wall: float) -> None:
        lines.append((label, cpu / n * 1e6, wall / n * 1e6))

    def timed_sync(label: str, fn: Any) -> None:
        for _ in range(min(100, n)):
            fn()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        record(label, time.process_time() - cpu, time.perf_counter() - wall)

    async def timed(label: str, fn: Any) -> None:
        for _ in range(min(100, n)):
            await fn()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            await fn()
        record(label, time.process_time() - cpu, time.perf_counter() - wall)

    async def ok(answer: Any) -> None:
        status, body = await answer
        if status != 200:
            raise SystemExit(f"breakdown: answer {status}: {body[:300]!r}")

    async def model_layers() -> None:
        async with httpx.AsyncClient() as client:
            up = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            url = f"http://127.0.0.1:{up_port}/v1/chat/completions"

            async def bare() -> None:
                (await client.post(url, content=chat, headers=up)).raise_for_status()

            await timed("httpx POST to the upstream (the provider's transport)", bare)
        request = ModelRequest.from_dict(chat_body)
        await timed(
            "keel OpenAIProvider.complete (httpx + request/response)",
            lambda: provider.complete(request),
        )
        await timed(
            "governed model call: ModelCaller.acomplete (gateway)",
            lambda: caller.acomplete(lambda: token, dict(chat_body)),
        )
        await timed(
            "POST /v1/chat/completions via ASGI (route, redaction, gateway)",
            lambda: ok(asgi_post(server, "/v1/chat/completions", auth, chat)),
        )
        await timed(
            "plain forwarder via ASGI (FastAPI + httpx, no governance)",
            lambda: ok(asgi_post(baseline, "/v1/chat/completions", {}, chat)),
        )

    async def tool_layers() -> None:
        await timed(
            "POST /v1/calls via ASGI (sync route: thread hop, gateway)",
            lambda: ok(asgi_post(server, "/v1/calls", auth, tool)),
        )
        await timed(
            "plain async route via ASGI (FastAPI, no governance)",
            lambda: ok(asgi_post(baseline, "/v1/calls", {}, tool)),
        )

    try:
        asyncio.run(model_layers())
        timed_sync("tool function called directly", lambda: lookup_order("ORD-1001"))
        call = CallRequest(tool="orders.lookup", arguments={"order_id": "ORD-1001"}, token=token)
        timed_sync("governed tool call: App.call (gateway, sync)", lambda: keel.call(call))
        asyncio.run(tool_layers())
        print(f"{'layer':66}  {'CPU µs/call':>11}  {'wall µs/call':>12}")
        for label, cpu, wall in lines:
            print(f"{label:66}  {cpu:11,.0f}  {wall:12,.0f}")
        if cprofile:
            profiler = cProfile.Profile()

            async def profiled() -> None:
                for _ in range(min(100, n)):
                    await ok(asgi_post(server, "/v1/chat/completions", auth, chat))
                profiler.enable()
                for _ in range(n):
                    await ok(asgi_post(server, "/v1/chat/completions", auth, chat))
                profiler.disable()

            asyncio.run(profiled())
            print(f"\ncProfile of {n:,} POST /v1/chat/completions via ASGI, top by own time:")
            stats = pstats.Stats(profiler, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(cprofile)
            print("the same, Keel's own functions by cumulative time:")
            stats.sort_stats("cumulative").print_stats("/keel/", cprofile)
    finally:
        keel.close()
