"""Where an MCP call's time goes in Keel: each layer timed in one process, for ``bench/mcp.py``.

    python -m bench._mcp_breakdown --config KEEL_YAML --calls 300 --warmup 50

Run from ``bench/mcp.py`` after its server has stopped, on the same config and store, while the
fixture upstream still runs. Every layer runs ``--warmup`` untimed times, then ``--calls`` timed
ones; wall time per call (``time.perf_counter``) and CPU time per call of this whole process
(``time.process_time``: all threads, so the gateway's loop thread counts; the upstream is another
process and does not). The layers:

- ``hop_on_loop``: the upstream call Keel makes, ``UpstreamConnection.call_tool`` (the SDK client
  over streamable HTTP to the fixture), timed on the gateway's own loop thread;
- ``hop_from_other_loop``: the same awaited from another event loop, as the guard chain awaits
  it (``LoopThread.arun``: a hand-off to the loop thread and back);
- ``acall_local``: ``keel.acall`` of a local ``async def`` tool: the guard chain alone (token,
  scope, policy, budget and idempotency guards, audit record and commit);
- ``acall_upstream``: ``keel.acall`` of ``fixture.lookup_order``: the guard chain and the hop,
  what ``/mcp``'s ``tools/call`` handler awaits;
- ``handler_call``: Keel's ``tools/call`` handler of the SDK server (``keel.mcp.server``), called
  directly: ``keel.acall`` and the conversion of its result into a ``CallToolResult``, then the
  result dumped to JSON form as the SDK does before writing it;
- ``handler_list``: Keel's ``tools/list`` handler, the same way. The SDK's streamable-HTTP server
  runs it once per ``tools/call`` when the server sets no ``get_tool_input_schema`` (to check
  ``Mcp-Param-*`` headers against the tool's input schema), so it is part of every call's cost;
- ``front_checks``: what ``/mcp`` does before the SDK sees a request: token verification (warm
  cache) and the JSON-RPC message check of a ``tools/call`` body.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from keel import App
from keel.configfile import load_config
from keel.gateway import CallRequest
from keel.mcp import Caller, McpGateway, build_server, check_message

__all__ = ["main"]


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def row(key: str, name: str, latencies: list[float], cpu: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "key": key,
        "name": name,
        "p50_ms": pct(ordered, 0.5) * 1e3,
        "p90_ms": pct(ordered, 0.9) * 1e3,
        "p99_ms": pct(ordered, 0.99) * 1e3,
        "cpu_ms": cpu / len(ordered) * 1e3 if ordered else float("nan"),
    }


async def timed(
    step: Callable[[int], Awaitable[None]], calls: int, warmup: int
) -> tuple[list[float], float]:
    for number in range(warmup):
        await step(number)
    latencies = []
    cpu = time.process_time()
    for number in range(warmup, warmup + calls):
        began = time.perf_counter()
        await step(number)
        latencies.append(time.perf_counter() - began)
    return latencies, time.process_time() - cpu


def expect(value: Any, order: str) -> None:
    structured = value.get("structuredContent") if isinstance(value, dict) else None
    got = (structured or value or {}).get("order_id") if isinstance(value, dict) else None
    if got != order:
        raise SystemExit(f"unexpected result for {order}: {str(value)[:300]}")


def breakdown(config: Path, calls: int, warmup: int) -> dict[str, Any]:
    keel = App(load_config(config))
    gateway = McpGateway.from_app(keel)
    rows: list[dict[str, Any]] = []
    try:

        @keel.tool("bench.lookup_order", scope="mcp:fixture", effect="read")
        async def lookup(order_id: str) -> dict[str, Any]:
            return {"order_id": order_id, "status": "shipped", "total_cents": 4200}

        token = keel.mint_token(
            "bench-mcp", tenant="acme", scopes=["mcp:fixture"], ttl=dt.timedelta(minutes=15)
        )
        gateway.refresh_sync()
        connection = gateway.connections["fixture"]

        async def hop(number: int) -> None:
            order = f"BD-HOP-{number}"
            expect(await connection.call_tool("lookup_order", {"order_id": order}, 30.0), order)

        latencies, cpu = gateway.loop.run(timed(hop, calls, warmup), timeout=600)
        rows.append(
            row(
                "hop_on_loop",
                "upstream hop: SDK client → fixture, on Keel's MCP loop thread",
                latencies,
                cpu,
            )
        )

        async def hop_from_other(number: int) -> None:
            order = f"BD-HOP2-{number}"
            body = await gateway.loop.arun(
                connection.call_tool("lookup_order", {"order_id": order}, 30.0)
            )
            expect(body, order)

        def governed(tool: str, prefix: str, tainted: bool) -> Callable[[int], Awaitable[None]]:
            async def step(number: int) -> None:
                order = f"{prefix}-{number}"
                result = await keel.acall(
                    CallRequest(
                        tool=tool,
                        arguments={"order_id": order},
                        token=token,
                        tainted=tainted,
                        metadata={"via": "mcp"},
                    )
                )
                expect(result.value, order)

            return step

        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "fixture.lookup_order", "arguments": {"order_id": "ORD-1"}},
            }
        ).encode()

        async def front(number: int) -> None:
            keel.verifier.verify(token)
            check_message(
                body, max_bytes=keel.config.max_payload_bytes, max_depth=keel.config.max_json_depth
            )

        import mcp.types as types

        principal = keel.verifier.verify(token)
        caller = Caller(token=token, principal=principal, session="bench-breakdown")
        server = build_server(keel, gateway, lambda ctx: caller)
        on_call = server.get_request_handler("tools/call")
        on_list = server.get_request_handler("tools/list")

        async def handler_call(number: int) -> None:
            order = f"BD-HANDLER-{number}"
            params = types.CallToolRequestParams(
                name="fixture.lookup_order", arguments={"order_id": order}
            )
            result = await on_call.handler(None, params)
            body = (  # Keel's handler answers tools/call with the wire dict itself
                result
                if isinstance(result, dict)
                else result.model_dump(by_alias=True, mode="json", exclude_none=True)
            )
            if body.get("isError"):
                raise SystemExit(f"tools/call handler: {str(body)[:300]}")
            expect(body, order)

        async def handler_list(number: int) -> None:
            result = await on_list.handler(None, types.PaginatedRequestParams())
            body = result.model_dump(by_alias=True, mode="json", exclude_none=True)
            if not any(t["name"] == "fixture.lookup_order" for t in body["tools"]):
                raise SystemExit(f"tools/list handler: no fixture.lookup_order in {body}")

        async def in_main_loop() -> None:
            latencies, cpu = await timed(hop_from_other, calls, warmup)
            rows.append(
                row(
                    "hop_from_other_loop",
                    "same hop awaited from another loop (as keel.acall does)",
                    latencies,
                    cpu,
                )
            )
            latencies, cpu = await timed(
                governed("bench.lookup_order", "BD-LOCAL", False), calls, warmup
            )
            rows.append(
                row(
                    "acall_local",
                    "keel.acall, local async tool (guard chain alone)",
                    latencies,
                    cpu,
                )
            )
            latencies, cpu = await timed(
                governed("fixture.lookup_order", "BD-KEEL", True), calls, warmup
            )
            rows.append(
                row(
                    "acall_upstream",
                    "keel.acall fixture.lookup_order (guard chain + hop)",
                    latencies,
                    cpu,
                )
            )
            latencies, cpu = await timed(handler_call, calls, warmup)
            rows.append(
                row(
                    "handler_call",
                    "Keel's tools/call handler (acall + CallToolResult + dump)",
                    latencies,
                    cpu,
                )
            )
            latencies, cpu = await timed(handler_list, calls, warmup)
            schema_hook = getattr(server, "get_tool_input_schema", None) is not None
            rows.append(
                row(
                    "handler_list",
                    "Keel's tools/list handler (+ dump)"
                    + ("" if schema_hook else ": the SDK runs it on every tools/call"),
                    latencies,
                    cpu,
                )
            )
            latencies, cpu = await timed(front, calls * 10, warmup)
            rows.append(
                row(
                    "front_checks",
                    "/mcp's own checks: token verify (cached) + JSON-RPC check",
                    latencies,
                    cpu,
                )
            )

        asyncio.run(in_main_loop())
        return {
            "calls": calls,
            "warmup": warmup,
            "store": type(keel.store).__name__,
            "tools_listed": len(keel.tools),
            "input_schema_hook": getattr(server, "get_tool_input_schema", None) is not None,
            "rows": rows,
        }
    finally:
        gateway.close()
        keel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(breakdown(args.config, args.calls, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
