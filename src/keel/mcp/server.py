"""Keel as an MCP server: the handlers behind ``tools/list``, ``tools/call``, resources and
prompts, built on the official SDK's low-level ``Server``.

Who calls is decided before a handler runs: over HTTP by ``keel.mcp.http`` (the request's agent
token, verified, is put in the ASGI scope), over stdio by ``keel mcp`` (one token source for the
process). Every handler then works for that principal only:

- ``tools/list``: Keel's own tools and the upstreams' usable ones, each only if the principal
  holds its scope and no policy rules it out altogether (a rule that depends on arguments keeps
  it listed: the call decides).
- ``tools/call``: one governed call (``keel.App.acall``): identity, kill switch, policy with the
  arguments, budget, rate limit, breaker, idempotency, approval, redaction, audit. Arguments that
  break the tool's schema are a JSON-RPC ``-32602``; a refusal is a tool result with
  ``isError: true`` naming the rule and the audit record; a call that needs approval answers
  with the approval id (``_meta["keel.dev/approval_id"]``), and is resumed by calling again
  with that id in the request's ``_meta``. A client that sent a ``progressToken`` waits up to
  ``mcp.approval_wait_seconds`` for the decision instead, with progress notifications.
- Output of upstream tools is untrusted (ATTACKS.md #25): once a session (or a run, in any
  session) has seen some, its later calls carry ``tainted`` so policies can hold them
  (``when: {tainted: true}``).

Request ``_meta`` keys Keel reads: ``keel.dev/approval_id``, ``keel.dev/idempotency_key``,
``keel.dev/run_id``, ``keel.dev/step_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from keel.core import Call, Principal
from keel.errors import (
    ApprovalRequired,
    InvalidRequestError,
    KeelError,
    PayloadTooLargeError,
    ToolError,
)
from keel.gateway import CallRequest, CallResult
from keel.mcp.catalog import McpGateway, UpstreamTool

__all__ = ["Caller", "build_server"]

META = "keel.dev/"
_SCHEMA_ERRORS = frozenset(
    {"invalid_arguments", "unknown_tool", "invalid_tool_name", "payload_too_large", "too_deep"}
)
_HIDDEN_RULES = frozenset({"default-deny", "tools.deny", "tools.allow"})
_TAINT_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from: the agent token and what it verified to, and the session."""

    token: str
    principal: Principal
    session: str


class _Taint:
    """Sessions that have seen untrusted output (bounded; oldest forgotten first)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def mark(self, session: str) -> None:
        with self._lock:
            self._seen[session] = None
            self._seen.move_to_end(session)
            while len(self._seen) > _TAINT_SESSIONS:
                self._seen.popitem(last=False)

    def __contains__(self, session: str) -> bool:
        return session in self._seen


def _meta(params: Any) -> Mapping[str, Any]:
    meta = getattr(params, "meta", None)
    if meta is None:
        return {}
    if isinstance(meta, Mapping):
        return meta
    dumped = meta.model_dump(by_alias=True, exclude_none=True)
    return dumped if isinstance(dumped, Mapping) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)


def build_server(
    keel: Any,
    gateway: McpGateway,
    caller_of: Callable[[Any], Caller],
    *,
    name: str = "keel",
) -> Any:
    """The SDK ``Server`` for ``keel``; ``caller_of(ctx)`` says who sent a request."""
    import mcp.types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    from keel import __version__

    taint = _Taint()
    config = gateway.config

    def visible(principal: Principal, tool: Any) -> bool:
        spec = tool.spec
        if spec.kind != "tool" or not principal.has_scope(spec.scope):
            return False
        upstream = gateway.upstream_of(spec.name)
        if upstream is None and not config.expose_keel_tools:
            return False
        call = Call(kind="tool", target=spec.name, arguments={}, principal=principal)
        verdict = keel.evaluate(call, spec.effect)
        return not (verdict.decision == "deny" and verdict.rule_id in _HIDDEN_RULES)

    def listed(tool: Any) -> dict[str, Any]:
        spec = tool.spec
        entry: dict[str, Any] = {
            "name": spec.name,
            "description": spec.description,
            "inputSchema": dict(spec.arguments.json_schema),
        }
        meta = spec.metadata
        if meta.get("title"):
            entry["title"] = meta["title"]
        output = meta.get("output_schema") or spec.result_schema
        if isinstance(output, Mapping) and output.get("type") == "object":
            entry["outputSchema"] = dict(output)
        annotations = dict(meta.get("annotations") or {})
        annotations["readOnlyHint"] = spec.effect == "read"
        annotations["destructiveHint"] = spec.effect == "irreversible"
        annotations["idempotentHint"] = spec.idempotent
        entry["annotations"] = annotations
        entry["_meta"] = {f"{META}effect": spec.effect, f"{META}scope": spec.scope}
        return entry

    async def on_list_tools(ctx: Any, params: Any) -> Any:
        caller = caller_of(ctx)
        await gateway.refresh()
        tools = [
            listed(tool)
            for tool in keel.tools
            if not any(tag.startswith("mcp-") for tag in tool.spec.tags)
            and visible(caller.principal, tool)
        ]
        return types.ListToolsResult.model_validate({"tools": tools})

    async def governed(
        caller: Caller, name: str, arguments: dict[str, Any], meta: Mapping[str, Any]
    ) -> CallResult:
        if name not in keel.tools and (alias := gateway.upstream_of(name)) is not None:
            await gateway.refresh(alias)
        run_id = _str(meta.get(f"{META}run_id"))
        keys = _taint_keys(caller, run_id)
        request = CallRequest(
            tool=name,
            arguments=arguments,
            token=caller.token,
            run_id=run_id,
            step_id=_str(meta.get(f"{META}step_id")),
            idempotency_key=_str(meta.get(f"{META}idempotency_key")),
            approval_id=_str(meta.get(f"{META}approval_id")),
            tainted=any(key in taint for key in keys),
            metadata={"via": "mcp"},
        )
        result: CallResult = await keel.acall(request)
        tool = keel.tools.get(name) if name in keel.tools else None
        if isinstance(tool, UpstreamTool) and not tool.trusted_output:
            for key in keys:
                taint.mark(key)
        return result

    def refusal(exc: KeelError) -> Any:
        context = {k: v for k, v in exc.context.items() if _jsonable(v)}
        meta = {
            f"{META}error": exc.code,
            f"{META}retryable": exc.retryable,
            **{f"{META}{k}": v for k, v in context.items()},
        }
        if isinstance(exc, ApprovalRequired):
            approval = context.get("approval_id")
            text = (
                f"PENDING APPROVAL — {exc.message}. Approval id: {approval}. The tool has not "
                f"run. Once an operator approves, call it again with the same arguments and "
                f'_meta {{"{META}approval_id": "{approval}"}}.'
            )
            meta[f"{META}status"] = "pending_approval"
        elif isinstance(exc, ToolError):
            text = f"The tool failed ({exc.code}): {exc.message}"
            meta[f"{META}status"] = "failed"
        else:
            text = f"Refused by Keel ({exc.code}): {exc.message}"
            meta[f"{META}status"] = "refused"
        return {
            "content": [{"type": "text", "text": text}],
            "isError": True,
            "_meta": meta,
            "resultType": "complete",
        }

    async def await_approval(ctx: Any, exc: ApprovalRequired, caller: Caller) -> bool:
        """Wait for the decision on ``exc``'s approval (progress notifications meanwhile);
        True once approved."""
        approval_id = exc.context.get("approval_id")
        token = _progress_token(ctx)
        if not approval_id or token is None or config.approval_wait_seconds <= 0:
            return False
        deadline = time.monotonic() + config.approval_wait_seconds
        tick = 0
        while time.monotonic() < deadline:
            # Told first, so a client always hears why its call is held, however soon the
            # decision comes.
            tick += 1
            with contextlib.suppress(Exception):  # the client may not listen; keep waiting
                await ctx.session.report_progress(
                    float(tick), message=f"waiting for approval {approval_id}"
                )
            record = await asyncio.to_thread(
                keel.approvals.get, approval_id, tenant=caller.principal.tenant
            )
            if record.status == "approved":
                return True
            if record.status not in ("pending", "escalated"):
                return False
            await asyncio.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        return False

    async def on_call_tool(ctx: Any, params: Any) -> Any:
        caller = caller_of(ctx)
        name = params.name
        arguments = params.arguments if params.arguments is not None else {}
        meta = dict(_meta(params))
        try:
            try:
                result = await governed(caller, name, dict(arguments), meta)
            except ApprovalRequired as exc:
                if not await await_approval(ctx, exc, caller):
                    raise
                meta[f"{META}approval_id"] = exc.context["approval_id"]
                result = await governed(caller, name, dict(arguments), meta)
        except (InvalidRequestError, PayloadTooLargeError) as exc:
            if exc.code in _SCHEMA_ERRORS or isinstance(exc, PayloadTooLargeError):
                raise MCPError(
                    -32602,
                    exc.message,
                    {"code": exc.code, **{k: v for k, v in exc.context.items() if _jsonable(v)}},
                ) from None
            return refusal(exc)
        except KeelError as exc:
            return refusal(exc)
        return answer(result)

    def answer(result: CallResult) -> Any:
        value = result.value
        meta = {
            f"{META}call_id": result.call_id,
            f"{META}record": {"chain": result.record_chain, "seq": result.record_seq},
            f"{META}replayed": result.replayed,
        }
        tool = keel.tools.get(result.tool) if result.tool in keel.tools else None
        if isinstance(tool, UpstreamTool) and isinstance(value, Mapping) and "content" in value:
            body: dict[str, Any] = {
                k: v for k, v in value.items() if k in ("content", "structuredContent")
            }
            if value.get("truncated"):
                # Partial output is not the tool's result: flagged as an error, so neither a
                # model nor a client's output-schema check mistakes it for the whole answer.
                body.pop("structuredContent", None)
                body["isError"] = True
                meta[f"{META}truncated"] = True
            body["_meta"] = meta
            body["resultType"] = "complete"
            return body
        body = {
            "content": [{"type": "text", "text": _text(value)}],
            "_meta": meta,
            "resultType": "complete",
        }
        if isinstance(value, Mapping):
            body["structuredContent"] = dict(value)
        return body

    def upstreams_for(principal: Principal, kind: str) -> list[str]:
        out = []
        for alias in gateway.connections:
            name = f"{alias}.{kind}"
            if name in keel.tools and visible(principal, keel.tools.get(name)):
                out.append(alias)
        return out

    async def on_list_resources(ctx: Any, params: Any) -> Any:
        caller = caller_of(ctx)
        resources: list[dict[str, Any]] = []
        seen: dict[str, str] = {}
        for alias in upstreams_for(caller.principal, "resources.read"):
            try:
                listing = await gateway.list_upstream(alias, "resources/list")
            except KeelError:
                continue
            for resource in listing.get("resources") or ():
                uri = resource.get("uri")
                if uri in seen and seen[uri] != alias:
                    continue  # two upstreams claim one URI: neither is guessed
                seen[uri] = alias
                resources.append({**resource, "_meta": {f"{META}upstream": alias}})
        gateway_resources.update(seen)
        return types.ListResourcesResult.model_validate({"resources": resources})

    gateway_resources: dict[str, str] = {}

    async def on_read_resource(ctx: Any, params: Any) -> Any:
        caller = caller_of(ctx)
        uri = str(params.uri)
        alias = gateway_resources.get(uri)
        if alias is None:
            allowed = upstreams_for(caller.principal, "resources.read")
            if len(allowed) != 1:
                raise MCPError(-32602, f"unknown resource {uri!r}: list resources first")
            alias = allowed[0]
        try:
            result = await governed(caller, f"{alias}.resources.read", {"uri": uri}, {})
        except KeelError as exc:
            raise MCPError(-32603 if exc.retryable else -32602, exc.message) from None
        value = result.value if isinstance(result.value, Mapping) else {"contents": []}
        return types.ReadResourceResult.model_validate({"contents": value.get("contents", [])})

    async def on_list_prompts(ctx: Any, params: Any) -> Any:
        caller = caller_of(ctx)
        prompts: list[dict[str, Any]] = []
        for alias in upstreams_for(caller.principal, "prompts.get"):
            try:
                listing = await gateway.list_upstream(alias, "prompts/list")
            except KeelError:
                continue
            for prompt in listing.get("prompts") or ():
                prompts.append({**prompt, "name": f"{alias}.{prompt.get('name')}"})
        return types.ListPromptsResult.model_validate({"prompts": prompts})

    async def on_get_prompt(ctx: Any, params: Any) -> Any:
        caller = caller_of(ctx)
        alias, _, prompt = str(params.name).partition(".")
        if alias not in gateway.connections or not prompt:
            raise MCPError(-32602, f"unknown prompt {params.name!r}")
        arguments: dict[str, Any] = {"name": prompt}
        if params.arguments:
            arguments["arguments"] = dict(params.arguments)
        try:
            result = await governed(caller, f"{alias}.prompts.get", arguments, {})
        except KeelError as exc:
            raise MCPError(-32603 if exc.retryable else -32602, exc.message) from None
        value = result.value if isinstance(result.value, Mapping) else {}
        return types.GetPromptResult.model_validate(
            {k: v for k, v in value.items() if k in ("description", "messages")}
        )

    def input_schema(tool_name: str) -> Mapping[str, Any] | None:
        """For the SDK's header checks: the schema of a tool, without listing them all."""
        if tool_name not in keel.tools:
            return None
        return dict(keel.tools.get(tool_name).spec.arguments.json_schema)

    return Server(
        name,
        version=__version__,
        get_tool_input_schema=input_schema,
        instructions="Keel governs every tool call here: policy, budget, approvals and audit.",
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        on_list_resources=on_list_resources,
        on_read_resource=on_read_resource,
        on_list_prompts=on_list_prompts,
        on_get_prompt=on_get_prompt,
    )


def _taint_keys(caller: Caller, run_id: str | None) -> tuple[str, ...]:
    """Where untrusted output is remembered: the session, and the run when there is one (so a
    new session of the same run does not wash it off)."""
    principal = caller.principal
    run = run_id or principal.run_id
    if run is None:
        return (caller.session,)
    return (caller.session, f"run:{principal.tenant}/{run}")


def _progress_token(ctx: Any) -> Any:
    meta = getattr(ctx, "meta", None)
    if isinstance(meta, Mapping):
        return meta.get("progress_token", meta.get("progressToken"))
    return getattr(meta, "progress_token", None)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)
