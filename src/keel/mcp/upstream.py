"""A connection to one upstream MCP server, through the official ``mcp`` SDK client.

The connection is opened lazily (on the first list or call), lives on the gateway's loop thread
(``keel.mcp._loop``) and is re-opened after a failure with exponential backoff (1 s doubling to
60 s); while backing off, calls fail at once with a retryable ``ToolError`` rather than piling
up on a dead server. Keel's own credentials for the upstream (``env``/``headers`` with secret
references) are resolved here, when the connection opens; a caller's token never goes upstream.

The SDK client numbers its own JSON-RPC requests, so the ids an upstream sees are Keel's, never
a caller's (ATTACKS.md #8): responses cannot cross sessions.

Both upstream error shapes are normalized into ``ToolError``: an ``isError`` result (the tool
failed) and a JSON-RPC error (the call failed), with the upstream's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from keel.errors import KeelError, ToolError, ToolTimeout
from keel.mcp.config import UpstreamConfig, fill_secrets

__all__ = ["UpstreamConnection"]

log = logging.getLogger("keel.mcp")

_BACKOFF_START = 1.0
_BACKOFF_MAX = 60.0


class UpstreamUnavailable(ToolError):
    """The upstream could not be reached (or is backing off after a failure)."""

    code = "upstream_unavailable"


class UpstreamConnection:
    """One upstream server. Methods are coroutines run on the gateway's loop thread."""

    def __init__(
        self,
        alias: str,
        config: UpstreamConfig,
        *,
        resolve_secret: Callable[[str], str],
        on_list_changed: Callable[[], None] | None = None,
        errlog: Any = None,
    ) -> None:
        self.alias = alias
        self.config = config
        self._resolve = resolve_secret
        self._on_list_changed = on_list_changed
        self._errlog = errlog
        self._client: Any = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[Any] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def client(self) -> Any:
        """The open SDK client, opening it if needed (UpstreamUnavailable if it cannot be)."""
        if self._client is not None:
            return self._client
        if self._opening is not None:
            return await asyncio.shield(self._opening)
        now = time.monotonic()
        if now < self._retry_at:
            raise UpstreamUnavailable(
                f"upstream {self.alias} is unavailable ({self._last_error}); retrying in "
                f"{self._retry_at - now:.1f}s",
                retryable=True,
                context={"upstream": self.alias},
            )
        loop = asyncio.get_running_loop()
        opening: asyncio.Future[Any] = loop.create_future()
        self._opening = opening
        self._stop = asyncio.Event()
        self._task = loop.create_task(self._serve(opening, self._stop))
        try:
            return await asyncio.wait_for(
                asyncio.shield(opening), self.config.connect_timeout_seconds
            )
        except TimeoutError:
            self._failed(f"no answer within {self.config.connect_timeout_seconds}s")
            self._stop.set()
            raise UpstreamUnavailable(
                f"upstream {self.alias} did not answer within "
                f"{self.config.connect_timeout_seconds}s",
                retryable=True,
                context={"upstream": self.alias},
            ) from None
        except KeelError:
            raise
        except Exception as exc:  # the SDK raises many kinds
            raise UpstreamUnavailable(
                f"upstream {self.alias} could not be started: {_describe(exc)}",
                retryable=True,
                context={"upstream": self.alias},
            ) from None
        finally:
            self._opening = None

    def _failed(self, why: str) -> None:
        self._failures += 1
        delay = min(_BACKOFF_MAX, _BACKOFF_START * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        self._last_error = why
        log.warning("upstream %s failed (%s); next attempt in %.0fs", self.alias, why, delay)

    def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        """The SDK transport for this upstream; an HTTP client it needs is closed by ``stack``."""
        from mcp import StdioServerParameters

        config = self.config
        if config.command is not None:
            argv = config.argv()
            env = {key: fill_secrets(value, self._resolve) for key, value in config.env.items()}
            command = sys.executable if argv[0] in ("python", "python3") else argv[0]
            return StdioServerParameters(
                command=command, args=argv[1:], env=env or None, cwd=config.cwd or None
            )
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = {key: fill_secrets(value, self._resolve) for key, value in config.headers.items()}
        http = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
        )
        stack.push_async_callback(http.aclose)
        assert config.url is not None
        return streamable_http_client(config.url, http_client=http)

    async def _serve(self, opening: asyncio.Future[Any], stop: asyncio.Event) -> None:
        from mcp import Client

        async def on_message(message: Any) -> None:
            method = getattr(getattr(message, "root", message), "method", None)
            if method == "notifications/tools/list_changed" and self._on_list_changed:
                self._on_list_changed()

        try:
            async with contextlib.AsyncExitStack() as stack:
                client = Client(
                    self._transport(stack),
                    mode=self.config.protocol,
                    read_timeout_seconds=self.config.timeout_seconds,
                    message_handler=on_message,
                    cache=None,
                )
                async with client:
                    self._client = client
                    self.connects += 1
                    self._failures = 0
                    if not opening.done():
                        opening.set_result(client)
                    await stop.wait()
        except Exception as exc:  # reported to whoever waits for the connection
            if not opening.done():
                self._failed(_describe(exc))
                opening.set_exception(exc)
            elif not stop.is_set():
                self._failed(_describe(exc))
        except asyncio.CancelledError:
            if not opening.done():
                opening.cancel()
            raise
        finally:
            self._client = None

    def reset(self, why: str) -> None:
        """Drop the connection after a transport failure; the next use re-opens it."""
        if self._stop is not None and not self._stop.is_set():
            self._failed(why)
            self._stop.set()
        self._client = None

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):  # shutting down
                await asyncio.wait_for(self._task, 10)
        self._client = None

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool the upstream offers (all pages), as wire-format dicts."""
        client = await self.client()
        tools: list[dict[str, Any]] = []
        try:
            result = await client.list_tools()
            tools.extend(_dump(tool) for tool in result.tools)
            cursor = getattr(result, "next_cursor", None)
            pages = 1
            while cursor and pages < 100:
                result = await client.session.list_tools(cursor=cursor)
                tools.extend(_dump(tool) for tool in result.tools)
                cursor = getattr(result, "next_cursor", None)
                pages += 1
        except Exception as exc:
            self._raise(exc, "tools/list")
        return tools

    async def call_tool(
        self, name: str, arguments: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Call ``name``; the result in wire form. ToolError for either upstream error shape."""
        client = await self.client()
        try:
            result = await asyncio.wait_for(
                client.call_tool(name, arguments, read_timeout_seconds=timeout), timeout + 1
            )
        except TimeoutError:
            raise ToolTimeout(
                f"upstream {self.alias} did not answer {name} within {timeout}s",
                context={"upstream": self.alias, "tool": name},
            ) from None
        except Exception as exc:
            self._raise(exc, name)
        body = _dump(result)
        if body.get("isError"):
            raise ToolError(
                f"upstream {self.alias} tool {name} failed: {_text_of(body) or 'no details'}",
                code="upstream_tool_error",
                context={"upstream": self.alias, "tool": name, "shape": "isError"},
            )
        return body

    async def request(self, method: str, **params: Any) -> dict[str, Any]:
        """A pass-through request (resources and prompts), result in wire form."""
        client = await self.client()
        try:
            if method == "resources/list":
                result = await client.list_resources()
            elif method == "resources/templates/list":
                result = await client.list_resource_templates()
            elif method == "resources/read":
                result = await client.read_resource(params["uri"])
            elif method == "prompts/list":
                result = await client.list_prompts()
            elif method == "prompts/get":
                result = await client.get_prompt(params["name"], params.get("arguments"))
            else:  # pragma: no cover - the server only passes the methods above
                raise ValueError(method)
        except Exception as exc:
            self._raise(exc, method)
        return _dump(result)

    def _raise(self, exc: Exception, what: str) -> Any:
        from mcp.shared.exceptions import MCPError

        if isinstance(exc, KeelError):
            raise exc
        if isinstance(exc, MCPError) and not _closed(exc):
            raise ToolError(
                f"upstream {self.alias} answered {what} with error {exc.code}: {exc.message}",
                code="upstream_error",
                context={"upstream": self.alias, "rpc_code": exc.code, "shape": "jsonrpc"},
            ) from None
        self.reset(_describe(exc))
        raise UpstreamUnavailable(
            f"upstream {self.alias} failed during {what}: {_describe(exc)}",
            retryable=True,
            context={"upstream": self.alias},
        ) from None


def _closed(exc: Any) -> bool:
    """The SDK reports a dead transport (the process exited, the stream ended) as a JSON-RPC
    error -32000 "Connection closed"; that is a connection to re-open, not an answer."""
    return bool(exc.code == -32000 and "connection closed" in str(exc.message).lower())


def _dump(model: Any) -> dict[str, Any]:
    if isinstance(model, dict):
        return model
    dumped: dict[str, Any] = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


def _text_of(body: dict[str, Any]) -> str:
    parts = [
        str(item.get("text", ""))
        for item in body.get("content") or ()
        if isinstance(item, dict) and item.get("type") == "text"
    ]
    return " ".join(parts)[:500]


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return text.replace(os.linesep, " ")[:300]
