"""``keel mcp``: the MCP gateway over stdio, for local clients (Claude Desktop, IDEs).

The process speaks for one agent: a token given to it (``--token`` / ``KEEL_AGENT_TOKEN``), or
tokens it mints itself for ``--agent`` with this Keel's keys and renews before they expire.
Every line on stdin is checked like an HTTP body at ``/mcp`` (size, depth, duplicate keys,
JSON-RPC shape, method allowlist: ``keel.mcp.http.check_message``) before the SDK parses it; a
refused line is answered with its JSON-RPC error and never reaches a handler.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO

from keel.mcp.catalog import McpGateway
from keel.mcp.http import RpcRefusal, check_message
from keel.mcp.server import Caller, build_server

__all__ = ["TokenSource", "serve_stdio"]


class TokenSource:
    """The agent token a stdio gateway calls with: fixed, or minted and renewed."""

    def __init__(self, keel: Any, token: str | None = None, mint: Callable[[], str] | None = None):
        if (token is None) == (mint is None):
            raise ValueError("give a token or a way to mint one")
        self._keel = keel
        self._token = token
        self._mint = mint
        self._lock = threading.Lock()
        self._renew_at = 0.0

    def caller(self, session: str) -> Caller:
        with self._lock:
            if self._mint is not None and (self._token is None or time.time() >= self._renew_at):
                self._token = self._mint()
                principal = self._keel.verifier.verify(self._token)
                left = (
                    principal.expires_at.timestamp() - time.time()
                    if principal.expires_at is not None
                    else 300
                )
                self._renew_at = time.time() + max(5.0, left / 2)
            token = self._token
        assert token is not None
        return Caller(token=token, principal=self._keel.verifier.verify(token), session=session)


class _Lines:
    """Lines of a binary stream, each at most ``limit`` bytes (a longer one is skipped to its
    end and reported, never buffered whole)."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    def _next(self) -> bytes | int | None:
        line = self._stream.readline(self._limit + 1)
        if not line:
            return None
        if len(line) > self._limit and not line.endswith(b"\n"):
            skipped = len(line)
            while True:
                more = self._stream.readline(65536)
                skipped += len(more)
                if not more or more.endswith(b"\n"):
                    return skipped
        return line

    async def __aiter__(self) -> AsyncIterator[bytes | int]:
        import anyio

        while True:
            item = await anyio.to_thread.run_sync(self._next, abandon_on_cancel=True)
            if item is None:
                return
            yield item


async def serve_stdio(
    keel: Any,
    gateway: McpGateway,
    tokens: TokenSource,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> None:
    """Serve MCP on stdin/stdout until stdin closes."""
    import anyio
    import mcp.types as types
    from mcp.shared._context_streams import create_context_streams
    from mcp.shared.message import SessionMessage

    limit = gateway.config.max_message_bytes or keel.config.max_payload_bytes
    depth = keel.config.max_json_depth
    session = f"stdio:{os.getpid()}"
    server = build_server(keel, gateway, lambda _ctx: tokens.caller(session))
    source = stdin or sys.stdin.buffer
    sink = stdout or sys.stdout.buffer
    out_lock = threading.Lock()

    def write_line(text: str) -> None:
        with out_lock:
            sink.write(text.encode("utf-8") + b"\n")
            sink.flush()

    def refuse(code: int, message: str, request_id: Any = None) -> None:
        error = types.JSONRPCError(
            jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message)
        )
        write_line(error.model_dump_json(by_alias=True, exclude_unset=True))

    read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_reader = create_context_streams[SessionMessage](0)

    async def reader() -> None:
        async with read_writer:
            async for line in _Lines(source, limit):
                if isinstance(line, int):
                    refuse(-32600, f"message is larger than {limit} bytes ({line} bytes)")
                    continue
                if not line.strip():
                    continue
                try:
                    check_message(line, max_bytes=limit, max_depth=depth)
                except RpcRefusal as refusal:
                    if refusal.status != 202:
                        refuse(refusal.code, refusal.message, refusal.request_id)
                    continue
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except Exception:
                    refuse(-32600, "invalid request: not a JSON-RPC message MCP knows")
                    continue
                await read_writer.send(SessionMessage(message))

    async def writer() -> None:
        async with write_reader:
            async for session_message in write_reader:
                text = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await anyio.to_thread.run_sync(write_line, text)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            await server.run(read_stream, write_stream, server.create_initialization_options())
            tg.cancel_scope.cancel()
    finally:
        gateway.close()
