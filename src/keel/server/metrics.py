"""``GET /metrics`` (Prometheus) and the trace context of incoming requests.

- ``GET /metrics`` — the App's metrics in the Prometheus text format (``keel.telemetry.metrics``).
  Open by default, like most exporters (it shows counts, tool names and breaker targets, no
  arguments or results); with ``metrics_require_key: true`` it needs an operator API key of role
  ``viewer`` or above that covers every tenant (the metrics span all tenants). Not served when
  metrics are off (``telemetry_metrics: false``).
- ``TraceContextMiddleware`` — honours the caller's W3C ``traceparent`` / ``tracestate``: the
  request runs in that trace, so the trace id in the audit records of its calls is the caller's;
  with tracing on, a server span covers the request (named by its route once routed).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.app import App
from keel.errors import AuthorizationError
from keel.server._http import ERRORS
from keel.server.auth import OperatorAuth
from keel.telemetry import Telemetry
from keel.telemetry.metrics import CONTENT_TYPE

__all__ = ["TraceContextMiddleware", "metrics_router"]

_TRACE_HEADERS = (b"traceparent", b"tracestate")


def metrics_router(keel: App) -> APIRouter:
    """The ``/metrics`` route over ``keel``'s metrics registry (none when metrics are off)."""
    router = APIRouter(tags=["operations"])
    metrics = keel.telemetry.metrics
    if metrics is None:
        return router
    auth = OperatorAuth(keel) if keel.config.metrics_require_key else None

    @router.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"},
            401: ERRORS[401],
            403: ERRORS[403],
        },
    )
    def prometheus(request: Request) -> Response:
        """Prometheus metrics: calls by verdict and tool, latency, spend, approvals, runs,
        breakers, cache."""
        if auth is not None:
            key = auth.key_of(request)
            if not key.allows("viewer") or key.tenant is not None:
                raise AuthorizationError(
                    "metrics cover every tenant: this needs a viewer key for all tenants; "
                    f"key {key.key_id} is {key.role!r} for tenant {key.tenant!r}",
                    code="role_required",
                    context={"needed": "viewer", "key_id": key.key_id},
                )
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router


class TraceContextMiddleware:
    """ASGI middleware: the request runs in the caller's trace (``traceparent``), and with
    tracing on under a server span. Costs a header scan when neither applies."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self._app = app
        self._telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name in _TRACE_HEADERS
        }
        if not headers and not self._telemetry.tracing.enabled:
            await self._app(scope, receive, send)
            return
        method = str(scope.get("method", "GET"))
        with self._telemetry.request_span(headers, method) as span:
            status: dict[str, Any] = {}

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            await self._app(scope, receive, sending)
            if "code" in status:
                span.set_attribute("http.response.status_code", int(status["code"]))
            route = getattr(scope.get("route"), "path", None)
            if isinstance(route, str):
                span.set_attribute("http.route", route)
                span.update_name(f"{method} {route}")
