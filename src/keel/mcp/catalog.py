"""The MCP gateway's catalog: upstream tools as governed Keel tools, pinned and screened.

``McpGateway`` owns the upstream connections. ``refresh`` reads each upstream's tool list, maps
names (``keel.mcp.names``), screens definitions (``keel.mcp.screen``), records pins
(``keel.mcp.pins``) and keeps the App's tool registry in step: a usable tool is registered as an
``UpstreamTool`` (a ``keel.tools.Tool`` whose contract is the *pinned* definition), a quarantined
or rug-pulled one is disabled there (resolving it is refused with the reason, so a call never
runs). From then on an upstream tool is called like any other Keel tool: through the gateway's
guard chain, from ``tools/call``, ``POST /v1/calls`` or a workflow alike.

Resources and prompts of an upstream are governed the same way: reading a resource is the call
``<alias>.resources.read``, getting a prompt ``<alias>.prompts.get`` (two segments after the
alias, so no upstream tool name can collide with them), each under the upstream's scope and
policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import functools
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from keel.errors import InvalidRequestError, KeelError, UsageError
from keel.mcp._loop import LoopThread
from keel.mcp.arguments import ScreenedArguments
from keel.mcp.config import McpConfig, UpstreamConfig, parse_mcp_config
from keel.mcp.names import keel_names
from keel.mcp.pins import Pins, PinState
from keel.mcp.screen import screen_definition
from keel.mcp.upstream import UpstreamConnection
from keel.net import EgressPolicy
from keel.tools import JSONSchemaValidator, Tool, ToolContext, ToolSpec

__all__ = ["McpGateway", "UpstreamTool"]

log = logging.getLogger("keel.mcp")

TRUNCATED = "[truncated by Keel: the upstream result was {size} bytes, the limit is {limit}]"


@dataclass(frozen=True, slots=True)
class UpstreamEntry:
    """What Keel knows of one upstream tool after the last refresh."""

    name: str  # the Keel name
    upstream: str
    upstream_name: str
    pin: PinState | None
    refused: str | None = None

    @property
    def usable(self) -> bool:
        return self.refused is None and self.pin is not None and self.pin.usable

    def reason(self) -> str:
        if self.refused is not None:
            return self.refused
        if self.pin is None:
            return "not yet seen"
        if self.pin.status == "changed":
            return (
                f"upstream {self.upstream} changed the definition of {self.upstream_name} after "
                "it was approved (a rug pull?): disabled until an operator re-approves it with "
                "`keel mcp tools review`"
            )
        if self.pin.status == "pending":
            why = "; ".join(self.pin.findings) or "new tools need review on this upstream"
            return f"quarantined until an operator reviews it ({why})"
        if self.pin.status == "rejected":
            return "rejected by an operator"
        return "not usable"


class UpstreamTool(Tool):
    """An upstream MCP tool as a Keel tool: the pinned contract, invoked over the connection."""

    is_async = True

    def __init__(
        self,
        spec: ToolSpec,
        *,
        connection: UpstreamConnection,
        upstream_name: str,
        loop: LoopThread,
        max_result_bytes: int,
        kind: str = "tool",
    ) -> None:
        self.spec = spec
        self._connection = connection
        self._upstream_name = upstream_name
        self._loop = loop
        self._max = max_result_bytes
        self._kind = kind

    @property
    def upstream(self) -> str:
        return self._connection.alias

    @property
    def trusted_output(self) -> bool:
        return self._connection.config.trusted_output

    async def ainvoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        timeout = self.spec.timeout.total_seconds()
        if self._kind == "resource":
            coro = self._connection.request("resources/read", uri=arguments["uri"])
        elif self._kind == "prompt":
            coro = self._connection.request(
                "prompts/get", name=arguments["name"], arguments=arguments.get("arguments")
            )
        else:
            coro = self._connection.call_tool(self._upstream_name, arguments, timeout)
        body = await self._loop.arun(coro)
        return _bounded(body, self._max)

    def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run(self.ainvoke(arguments, context))
        raise UsageError(
            f"tool {self.spec.name} is async and the sync API was called inside an event loop; "
            "use the async API (acall)"
        )


def _bounded(body: dict[str, Any], limit: int) -> dict[str, Any]:
    """``body`` if its JSON is within ``limit`` bytes, else its text cut to fit with a marker
    (structured content and binary parts dropped)."""
    size = len(json.dumps(body, ensure_ascii=False).encode("utf-8"))
    if size <= limit:
        return body
    marker = TRUNCATED.format(size=size, limit=limit)
    budget = max(0, limit - len(marker) - 256)
    texts: list[dict[str, Any]] = []
    for item in body.get("content") or ():
        if isinstance(item, dict) and item.get("type") == "text" and budget > 0:
            text = str(item.get("text", ""))
            encoded = text.encode("utf-8")[:budget]
            budget -= len(encoded)
            texts.append({"type": "text", "text": encoded.decode("utf-8", "ignore")})
    texts.append({"type": "text", "text": marker})
    out: dict[str, Any] = {"content": texts, "truncated": True}
    if "contents" in body:  # a resource read
        out = {"contents": [{"uri": "keel:truncated", "text": marker}], "truncated": True}
    return out


def _which(command: str) -> str:
    if "/" in command:
        return command
    found = shutil.which(command)
    if found is None:
        sibling = Path(sys.executable).with_name(command)
        if sibling.exists():
            return str(sibling)
    return found or command


class McpGateway:
    """Upstream connections, the catalog of their tools and its sync with the tool registry."""

    def __init__(
        self,
        config: McpConfig,
        *,
        registry: Any,
        pins: Pins,
        resolve_secret: Callable[[str], str],
        egress: EgressPolicy | None = None,
        max_json_depth: int = 64,
    ) -> None:
        self.egress = egress or EgressPolicy()
        self.config = config
        self.registry = registry
        self.pins = pins
        self.loop = LoopThread()
        self._depth = max_json_depth
        self.connections: dict[str, UpstreamConnection] = {}
        self._entries: dict[str, UpstreamEntry] = {}
        self._listed_at: dict[str, float] = {}
        self._stale: set[str] = set()
        self._refreshing: dict[str, asyncio.Future[None]] = {}
        self._resources: dict[str, dict[str, str]] = {}
        for alias, upstream in config.upstreams.items():
            if upstream.command is not None:
                argv = upstream.argv()
                upstream = upstream.model_copy(
                    update={"command": [_which(argv[0]), *argv[1:]], "args": []}
                )
            self.connections[alias] = UpstreamConnection(
                alias,
                upstream,
                resolve_secret=resolve_secret,
                on_list_changed=functools.partial(self._stale.add, alias),
            )

    @classmethod
    def from_app(cls, keel: Any) -> McpGateway:
        """The gateway for ``keel`` (a ``keel.App``), configured by its ``mcp:`` settings."""
        config = parse_mcp_config(keel.config.mcp)
        pins = Pins(keel.store, keel.audit, keel.clock)
        return cls(
            config,
            registry=keel.tools,
            pins=pins,
            resolve_secret=_secret_resolver(keel),
            egress=keel.egress,
            max_json_depth=keel.config.max_json_depth,
        )

    # -- catalog -------------------------------------------------------------------------------

    def entries(self) -> list[UpstreamEntry]:
        return sorted(self._entries.values(), key=lambda e: e.name)

    def entry(self, name: str) -> UpstreamEntry | None:
        return self._entries.get(name)

    def upstream_of(self, name: str) -> str | None:
        alias = name.split(".", 1)[0]
        return alias if alias in self.connections else None

    async def refresh(self, alias: str | None = None, *, force: bool = False) -> None:
        """Re-read upstream tool lists that are stale (or all, with ``force``). An upstream that
        cannot be reached keeps its last catalog (its tools then fail when called). Runs on the
        gateway's loop thread, whoever awaits it."""
        if not self.connections:
            return
        await self.loop.arun(self._refresh(alias, force))

    async def _refresh(self, alias: str | None, force: bool) -> None:
        aliases = [alias] if alias is not None else list(self.connections)
        now = time.monotonic()
        due = [
            a
            for a in aliases
            if force
            or a in self._stale
            or now - self._listed_at.get(a, -1e9) >= self.config.refresh_seconds
        ]
        if due:
            await asyncio.gather(*(self._refresh_one(a) for a in due), return_exceptions=True)

    async def _refresh_one(self, alias: str) -> None:
        pending = self._refreshing.get(alias)
        if pending is not None:
            await asyncio.shield(pending)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._refreshing[alias] = future
        try:
            connection = self.connections[alias]
            self._stale.discard(alias)
            try:
                offered = await connection.list_tools()
            except KeelError as exc:
                log.warning("could not list the tools of upstream %s: %s", alias, exc.message)
                self._listed_at[alias] = time.monotonic() - self.config.refresh_seconds + 1
                raise
            await asyncio.to_thread(self._apply, alias, offered)
            self._listed_at[alias] = time.monotonic()
        finally:
            self._refreshing.pop(alias, None)
            future.set_result(None)

    def refresh_sync(self, alias: str | None = None, *, force: bool = True) -> None:
        """``refresh`` for code outside an event loop (CLI, tests)."""
        self.loop.run(self.refresh(alias, force=force), timeout=120)

    def _apply(self, alias: str, offered: list[dict[str, Any]]) -> None:
        connection = self.connections[alias]
        config = connection.config
        by_name = {str(t.get("name")): t for t in offered if isinstance(t, Mapping)}
        accepted, refused = keel_names(alias, by_name)
        seen: set[str] = set()
        for upstream_name, why in refused.items():
            name = f"{alias}.?{upstream_name!a}"
            log.warning("upstream %s: tool %a refused: %s", alias, upstream_name, why)
            self._entries[name] = UpstreamEntry(name, alias, upstream_name, None, refused=why)
            seen.add(name)
        for name, upstream_name in accepted.items():
            seen.add(name)
            override = config.override(upstream_name)
            definition = dict(by_name[upstream_name])
            findings = screen_definition(definition)
            try:
                spec = self._spec(name, definition, config, upstream_name)
            except (UsageError, InvalidRequestError) as exc:
                self._entries[name] = UpstreamEntry(
                    name, alias, upstream_name, None, refused=exc.message
                )
                self._disable(name, exc.message)
                continue
            pin = self.pins.observe(
                alias,
                upstream_name,
                definition,
                findings,
                auto_approve=config.approve_new_tools == "auto",
            )
            entry = UpstreamEntry(name, alias, upstream_name, pin)
            self._entries[name] = entry
            if entry.usable and not override.hidden:
                self._register(
                    UpstreamTool(
                        spec,
                        connection=connection,
                        upstream_name=upstream_name,
                        loop=self.loop,
                        max_result_bytes=self.config.max_result_bytes,
                    )
                )
            else:
                self._disable(name, entry.reason() if not override.hidden else "hidden by config")
        for name in [n for n, e in self._entries.items() if e.upstream == alias and n not in seen]:
            self._entries.pop(name)
            self._disable(name, f"upstream {alias} no longer offers this tool")
        self._register_pass_through(alias, connection)

    def _spec(
        self, name: str, definition: Mapping[str, Any], config: UpstreamConfig, upstream_name: str
    ) -> ToolSpec:
        override = config.override(upstream_name)
        schema = definition.get("inputSchema") or {"type": "object"}
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(f"{name}: inputSchema is not an object")
        output = definition.get("outputSchema")
        return ToolSpec(
            name=name,
            description=str(definition.get("description") or ""),
            arguments=ScreenedArguments(
                JSONSchemaValidator(schema), egress=self.egress, roots=config.path_roots
            ),
            scope=override.scope or config.scope or f"mcp:{config_alias(name)}",
            effect=override.effect or config.effect,
            result_schema=None,
            timeout=_dt.timedelta(seconds=override.timeout_seconds or config.timeout_seconds),
            idempotent=bool(override.idempotent),
            cost_usd=override.cost_usd if override.cost_usd is not None else config.cost_usd,
            tags=("mcp", f"mcp:{config_alias(name)}"),
            metadata={
                "upstream": config_alias(name),
                "upstream_tool": upstream_name,
                "title": definition.get("title"),
                "output_schema": output if isinstance(output, Mapping) else None,
                "annotations": definition.get("annotations"),
                "trusted_output": config.trusted_output,
            },
        )

    def _register_pass_through(self, alias: str, connection: UpstreamConnection) -> None:
        config = connection.config
        specs: list[tuple[str, str, dict[str, Any], bool]] = [
            (
                f"{alias}.resources.read",
                "resource",
                {
                    "type": "object",
                    "properties": {"uri": {"type": "string", "maxLength": 4096}},
                    "required": ["uri"],
                },
                config.resources,
            ),
            (
                f"{alias}.prompts.get",
                "prompt",
                {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 256},
                        "arguments": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                    },
                    "required": ["name"],
                },
                config.prompts,
            ),
        ]
        for name, kind, schema, enabled in specs:
            if not enabled or name in self.registry:
                continue
            spec = ToolSpec(
                name=name,
                description=f"Read an MCP {kind} of upstream {alias}.",
                arguments=JSONSchemaValidator(schema),
                scope=config.scope or f"mcp:{alias}",
                effect="read",
                timeout=_dt.timedelta(seconds=config.timeout_seconds),
                cost_usd=Decimal("0"),
                tags=("mcp", f"mcp:{alias}", f"mcp-{kind}"),
                metadata={"upstream": alias, "trusted_output": config.trusted_output},
            )
            self._register(
                UpstreamTool(
                    spec,
                    connection=connection,
                    upstream_name=name,
                    loop=self.loop,
                    max_result_bytes=self.config.max_result_bytes,
                    kind=kind,
                )
            )

    def _register(self, tool: Tool) -> None:
        self.registry.replace(tool)

    def _disable(self, name: str, reason: str) -> None:
        with contextlib.suppress(InvalidRequestError):  # such a name was never registered
            self.registry.disable(name, reason)

    # -- pass-through listings ---------------------------------------------------------------

    async def list_upstream(self, alias: str, method: str) -> dict[str, Any]:
        """An upstream's resources or prompts listing (the caller has checked visibility)."""
        connection = self.connections[alias]
        return await self.loop.arun(connection.request(method))

    async def aclose(self) -> None:
        """Close the upstream connections from the loop they live on (a served gateway)."""
        await asyncio.gather(
            *(c.close() for c in self.connections.values()), return_exceptions=True
        )
        self.loop.release()

    def close(self) -> None:
        async def shutdown() -> None:
            await asyncio.gather(
                *(c.close() for c in self.connections.values()), return_exceptions=True
            )

        self.loop.close(shutdown())


def _secret_resolver(keel: Any) -> Callable[[str], str]:
    secrets = getattr(keel, "secrets", None)
    if secrets is not None:
        resolve: Callable[[str], str] = secrets.resolve
        return resolve

    def unavailable(ref: str) -> str:
        raise UsageError(f"secret {ref!r} cannot be resolved: this Keel has no secret store")

    return unavailable


def config_alias(name: str) -> str:
    return name.split(".", 1)[0]
