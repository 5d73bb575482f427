"""``/mcp``: the streamable-HTTP front door, hardened before the SDK sees a byte.

Every request passes, in order (ATTACKS.md #1–#11):

1. ``Host`` must be an allowed host and ``Origin``, when sent, an allowed origin (DNS-rebinding
   protection): 403 otherwise.
2. The agent token (``Authorization: Bearer``) is verified; a refusal is 401 and an audit record.
   The session id is never authentication: it only selects a session, and the SDK serves a
   session only to the principal that opened it (a foreign or unknown id is 404).
3. A POST body is read up to ``mcp.max_message_bytes`` (413 past it, without reading on), then
   parsed strictly — size, depth, duplicate keys, UTF-8 — and checked as one JSON-RPC 2.0
   message: not a batch, ``jsonrpc: "2.0"``, an id that is a string or an integer, a method on
   the allowlist. Anything else gets the proper JSON-RPC error (``-32700`` parse error,
   ``-32600`` invalid request, ``-32601`` unknown method) and goes no further.
4. Only then does the SDK's session manager serve it (with Keel's handlers, ``keel.mcp.server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from keel.canonical import parse_json
from keel.errors import AuthenticationError, InvalidRequestError, KeelError
from keel.mcp.catalog import McpGateway
from keel.mcp.server import Caller, build_server

__all__ = ["METHODS", "NOTIFICATIONS", "McpHttpApp", "check_message"]

log = logging.getLogger("keel.mcp")

#: Requests a client may send (both protocol eras); anything else is -32601 from Keel.
METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "subscriptions/listen",
    }
)
#: Notifications a client may send.
NOTIFICATIONS = frozenset(
    {
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "notifications/elicitation/complete",
    }
)

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602


class RpcRefusal(Exception):
    """A message refused before it reached the SDK."""

    def __init__(self, code: int, message: str, request_id: Any = None, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.status = status


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) and len(value) <= 256) or (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53
    )


def check_message(raw: bytes, *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """Parse and check one client→server JSON-RPC message; RpcRefusal says why not."""
    try:
        message = parse_json(raw, max_bytes=max_bytes, max_depth=max_depth, what="message")
    except InvalidRequestError as exc:
        if exc.code == "malformed_json" or "UTF-8" in exc.message:
            raise RpcRefusal(PARSE_ERROR, f"parse error: {exc.message}") from None
        status = 413 if exc.code == "payload_too_large" else 400
        raise RpcRefusal(
            INVALID_REQUEST, f"invalid request: {exc.message}", status=status
        ) from None
    if isinstance(message, list):
        raise RpcRefusal(
            INVALID_REQUEST,
            "invalid request: JSON-RPC batches are not accepted (removed in MCP 2025-06-18); "
            "send one message per request",
        )
    if not isinstance(message, dict):
        raise RpcRefusal(INVALID_REQUEST, "invalid request: a JSON-RPC message is an object")
    rid = message.get("id")
    if message.get("jsonrpc") != "2.0":
        raise RpcRefusal(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', _safe_id(rid))
    if "id" in message and not _valid_id(rid):
        raise RpcRefusal(
            INVALID_REQUEST,
            "invalid request: an id is a string or an integer (not null, a "
            "number with a fraction, a boolean, an object or an array)",
        )
    method = message.get("method")
    if method is None:
        if "id" in message and ("result" in message or "error" in message):
            return message  # a response to a request of ours (sampling, elicitation, roots)
        raise RpcRefusal(INVALID_REQUEST, "invalid request: no method", _safe_id(rid))
    if not isinstance(method, str):
        raise RpcRefusal(INVALID_REQUEST, "invalid request: method must be a string", rid)
    if "params" in message and not isinstance(message["params"], dict):
        raise RpcRefusal(INVALID_PARAMS, "invalid params: params must be an object", rid)
    if "id" not in message:
        if method not in NOTIFICATIONS:
            # A notification gets no answer; an unknown one is dropped here, not forwarded.
            raise RpcRefusal(METHOD_NOT_FOUND, f"unknown notification {method[:100]!r}", None, 202)
        return message
    if method not in METHODS:
        raise RpcRefusal(
            METHOD_NOT_FOUND, f"method not found: {method[:100]!r} is not served here", rid, 200
        )
    if method == "tools/call":
        params = message.get("params") or {}
        if not isinstance(params.get("name"), str):
            raise RpcRefusal(INVALID_PARAMS, "invalid params: tools/call needs a name", rid, 200)
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise RpcRefusal(
                INVALID_PARAMS, "invalid params: arguments must be an object", rid, 200
            )
    return message


def _safe_id(value: Any) -> Any:
    return value if _valid_id(value) else None


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    if "*" in allowed:
        return True
    name = host.strip().lower()
    if name.startswith("["):
        name = name[: name.index("]") + 1] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name in {h.lower() for h in allowed}


_LOOPBACK_ORIGINS = ("http://127.0.0.1", "http://localhost", "http://[::1]")


def _origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    origin = origin.strip().lower().rstrip("/")
    if "*" in allowed or origin in {o.lower().rstrip("/") for o in allowed}:
        return True
    for base in _LOOPBACK_ORIGINS:
        if origin == base or (origin.startswith(base + ":") and origin[len(base) + 1 :].isdigit()):
            return True
    return False


class McpHttpApp:
    """The ASGI app served at ``/mcp`` (see the module docstring). ``lifespan()`` must be
    entered while it serves (``keel.server`` does so in its own lifespan)."""

    def __init__(
        self,
        keel: Any,
        gateway: McpGateway,
        *,
        on_refusal: Callable[[str, AuthenticationError], None] | None = None,
        stateless: bool | None = None,
    ) -> None:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        self._keel = keel
        self.gateway = gateway
        config = gateway.config
        self._max = config.max_message_bytes or keel.config.max_payload_bytes
        self._depth = keel.config.max_json_depth
        self._on_refusal = on_refusal
        self.server = build_server(keel, gateway, self._caller)
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            json_response=False,
            stateless=config.stateless_http if stateless is None else stateless,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            session_idle_timeout=config.session_idle_seconds,
            max_request_body_size=self._max + 1,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Serve: upstream connections live on this (the server's) event loop."""
        self.gateway.loop.adopt(asyncio.get_running_loop())
        try:
            async with self.manager.run():
                yield
        finally:
            await self.gateway.aclose()

    def _caller(self, ctx: Any) -> Caller:
        request = getattr(ctx, "request", None)
        scope = getattr(request, "scope", None) or {}
        caller = scope.get("keel.caller")
        if not isinstance(caller, Caller):
            raise AuthenticationError("this MCP request carries no verified agent token")
        return caller

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        config = self.gateway.config
        if not _host_allowed(headers.get("host", ""), config.allowed_hosts):
            await _reply(send, 403, INVALID_REQUEST, "Host header is not allowed here")
            return
        origin = headers.get("origin")
        if origin is not None and not _origin_allowed(origin, config.allowed_origins):
            await _reply(send, 403, INVALID_REQUEST, "Origin is not allowed here")
            return
        if scope["method"] not in ("POST", "GET", "DELETE"):
            await _reply(
                send,
                405,
                INVALID_REQUEST,
                f"method {scope['method']} is not allowed",
                extra=[(b"allow", b"GET, POST, DELETE")],
            )
            return
        try:
            caller = self._authenticate(headers)
        except AuthenticationError as exc:
            if self._on_refusal is not None:
                self._on_refusal(scope.get("path", "/mcp"), exc)
            await _reply(
                send,
                401,
                INVALID_REQUEST,
                exc.message,
                extra=[(b"www-authenticate", b'Bearer realm="keel"')],
            )
            return
        scope = dict(scope)
        scope["keel.caller"] = caller
        scope["user"] = _sdk_user(caller)
        if scope["method"] == "POST":
            try:
                with anyio.fail_after(config.body_timeout_seconds):
                    body = await _read_body(receive, self._max)
            except TimeoutError:
                await _reply(
                    send,
                    408,
                    INVALID_REQUEST,
                    f"the message did not arrive within {config.body_timeout_seconds}s",
                )
                return
            if body is None:
                await _reply(
                    send, 413, INVALID_REQUEST, f"message is larger than {self._max} bytes"
                )
                return
            try:
                message = check_message(body, max_bytes=self._max, max_depth=self._depth)
            except RpcRefusal as refusal:
                if refusal.status == 202:
                    await _empty(send, 202)
                else:
                    await _reply(
                        send,
                        refusal.status,
                        refusal.code,
                        refusal.message,
                        request_id=refusal.request_id,
                    )
                return
            del message
            receive = _replay(body, receive)
        await self.manager.handle_request(scope, receive, send)

    def _authenticate(self, headers: dict[str, str]) -> Caller:
        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(
                "an agent token is required: Authorization: Bearer <token>",
                code="token_missing",
            )
        token = token.strip()
        principal = self._keel.verifier.verify(token)
        session = headers.get("mcp-session-id") or f"token:{principal.token_id or token[-16:]}"
        return Caller(token=token, principal=principal, session=session)


def _sdk_user(caller: Caller) -> Any:
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    principal = caller.principal
    return AuthenticatedUser(
        AccessToken(
            token="keel",  # the SDK compares principals, never this value
            client_id=f"{principal.tenant}/{principal.agent_id}",
            scopes=sorted(principal.scopes),
            subject=principal.on_behalf_of,
            claims={"iss": "keel"},
        )
    )


async def _read_body(receive: Any, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Callable[[], Any]:
    """``receive`` that hands out ``body`` (already read) once, then waits on the real one
    (so the SDK still learns when the client goes away)."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(
    send: Any,
    status: int,
    code: int,
    message: str,
    *,
    request_id: Any = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _empty(send: Any, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def refusal_recorder(keel: Any) -> Callable[[str, AuthenticationError], None]:
    """Record an authentication refusal at /mcp like the HTTP server's other routes do."""

    def record(route: str, error: AuthenticationError) -> None:
        try:
            keel.record_refusal(error, stage="authenticate", route=route)
        except KeelError:
            log.exception("could not record a refused MCP request")

    return record
