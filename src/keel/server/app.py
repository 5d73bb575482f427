"""The Keel HTTP server: an ASGI app over one ``keel.App``. Routes are thin; rules live below.

``create_app(keel_app)`` builds the FastAPI application; ``keel serve`` runs it with uvicorn.

Routes (this module):

- ``GET /healthz`` — the process answers (liveness).
- ``GET /readyz`` — the store answers a read (readiness); 503 otherwise.
- ``POST /v1/calls`` — a remote agent's governed tool call through the full guard chain. The
  agent authenticates with its token (``Authorization: Bearer <token>``). ``Idempotency-Key``
  follows the IETF draft / Stripe semantics: the same key with the same body replays the
  recorded response (``Idempotent-Replayed: true``, the tool does not run again), the same key
  with a different body is 422, and the same key while the first request still runs is 409.

Every error leaves through ``keel.server.errors``: one status mapping, one JSON body shape.
Request bodies are parsed strictly (size and depth limits from the config, duplicate keys
refused) before anything else looks at them.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keel.app import App
from keel.errors import KeelError
from keel.gateway import CallRequest, CallResult
from keel.server._http import ERRORS, body_dependency, parse_body
from keel.server.agents import AgentAuth
from keel.server.audit import audit_router
from keel.server.auth import OperatorAuth
from keel.server.budgets import budgets_router
from keel.server.dashboard import mount_dashboard
from keel.server.errors import error_body, http_status, response_headers
from keel.server.mcp_route import mount_mcp
from keel.server.metrics import TraceContextMiddleware, metrics_router
from keel.server.operators import operator_router
from keel.server.policies import policies_router
from keel.server.proxy import proxy_router
from keel.server.runs import runs_router

__all__ = ["CallBody", "create_app"]

log = logging.getLogger("keel.server")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class CallBody(pydantic.BaseModel):
    """The body of ``POST /v1/calls``."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    tool: str = pydantic.Field(min_length=1, max_length=200, description="The tool's name.")
    arguments: dict[str, Any] = pydantic.Field(default_factory=dict)
    run_id: str | None = pydantic.Field(None, max_length=200)
    step_id: str | None = pydantic.Field(None, max_length=200)
    workflow: str | None = pydantic.Field(None, max_length=200)
    approval_id: str | None = pydantic.Field(
        None, max_length=200, description="An approval granted for exactly this call."
    )
    tainted: bool = pydantic.Field(
        False, description="Untrusted content entered the context that produced this call."
    )
    trace_id: str | None = pydantic.Field(None, max_length=200)


class Verdict(pydantic.BaseModel):
    decision: Literal["allow", "deny", "require_approval", "escalate"]
    rule_id: str
    reason: str
    policy_hash: str


class CallOutcome(pydantic.BaseModel):
    """The answer of ``POST /v1/calls`` when the call ran (or was replayed, cached, shadowed)."""

    call_id: str
    tool: str
    value: Any = None
    verdict: Verdict
    replayed: bool
    cached: bool
    shadow: bool
    cost: dict[str, Any]
    record: dict[str, Any]
    latency_ms: float


def create_app(keel: App, *, mcp_stateless: bool | None = None) -> FastAPI:
    """The ASGI application serving ``keel``. The caller owns ``keel`` (and closes it).

    ``mcp_stateless``: serve ``/mcp`` without server-side sessions (several worker processes);
    default: the config's ``mcp.stateless_http``."""
    config = keel.config
    max_bytes = config.max_payload_bytes
    api = FastAPI(
        title="Keel",
        version="0.1.0",
        description="A governed runtime for AI agents: every tool and model call passes one "
        "chokepoint for identity, policy, budget and approvals, and leaves an audit record.",
    )

    @api.exception_handler(KeelError)
    async def keel_error(_request: Request, exc: KeelError) -> JSONResponse:
        return JSONResponse(
            error_body(exc), status_code=http_status(exc), headers=response_headers(exc)
        )

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # No route, wrong method: the same body shape as every other error.
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        body = {
            "error": {
                "code": code,
                "message": str(exc.detail),
                "retryable": False,
                "context": {},
            }
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg')}"
            for error in exc.errors()[:10]
        )
        body = {
            "error": {
                "code": "invalid_request",
                "message": f"the request is not valid: {problems}",
                "retryable": False,
                "context": {
                    "fields": [
                        ".".join(str(p) for p in error.get("loc", ()))
                        for error in exc.errors()[:10]
                    ]
                },
            }
        }
        return JSONResponse(body, status_code=400)

    @api.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving a request")
        body = {
            "error": {
                "code": "internal_error",
                "message": "Keel failed to serve this request; the server log has the details",
                "retryable": False,
                "context": {},
            }
        }
        return JSONResponse(body, status_code=500)

    agents = AgentAuth(keel)

    @api.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["operations"], responses={503: ERRORS[503]})
    def readyz() -> dict[str, Any]:
        """Readiness: the store answers a read."""
        keel.store.read_one("SELECT 1")
        return {"status": "ready", "store": keel.store.dialect}

    @api.post(
        "/v1/calls",
        tags=["calls"],
        response_model=CallOutcome,
        responses=ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": CallBody.model_json_schema()}},
            },
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 255},
                },
            ],
        },
    )
    def call(request: Request, raw: bytes = body_dependency(max_bytes)) -> JSONResponse:
        """A governed tool call: authenticate, policy, budget, approvals, execute, record."""
        token = agents.token(request, raw)
        body = parse_body(raw, CallBody, max_bytes, config.max_json_depth)
        key = request.headers.get("idempotency-key")
        result = keel.call(
            CallRequest(
                tool=body.tool,
                arguments=body.arguments,
                token=token,
                run_id=body.run_id,
                step_id=body.step_id,
                workflow=agents.workflow(token, body.workflow),
                idempotency_key=key if key else None,
                tainted=body.tainted,
                trace_id=body.trace_id,
                approval_id=body.approval_id,
            )
        )
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return JSONResponse(_outcome(result), headers=headers)

    auth = OperatorAuth(keel)
    api.include_router(operator_router(keel, auth))
    api.include_router(runs_router(keel, auth))
    api.include_router(proxy_router(keel, agents))
    api.include_router(policies_router(keel, auth))
    api.include_router(budgets_router(keel, auth))
    api.include_router(audit_router(keel, auth))
    api.include_router(metrics_router(keel))
    mount_mcp(api, keel, stateless=mcp_stateless)
    mount_dashboard(api, keel)
    api.add_middleware(TraceContextMiddleware, telemetry=keel.telemetry)
    _document_errors(api)
    return api


def _document_errors(api: FastAPI) -> None:
    """Make the OpenAPI document say what the server answers: a request whose parameters fail
    validation gets 400 with Keel's error body (see ``invalid`` above), not FastAPI's 422."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        schema = build()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
                auto = responses.get("422", {})
                ref = str(auto.get("content", {}).get("application/json", {}).get("schema", {}))
                if "HTTPValidationError" in ref:
                    del responses["422"]
                    responses.setdefault("400", _ERROR_400)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


_ERROR_400: dict[str, Any] = {
    "description": "malformed request (a parameter or the body is not valid)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def _outcome(result: CallResult) -> dict[str, Any]:
    verdict = result.verdict
    return {
        "call_id": result.call_id,
        "tool": result.tool,
        "value": result.value,
        "verdict": {
            "decision": verdict.decision,
            "rule_id": verdict.rule_id,
            "reason": verdict.reason,
            "policy_hash": verdict.policy_hash,
        },
        "replayed": result.replayed,
        "cached": result.cached,
        "shadow": result.shadow,
        "cost": result.cost.to_record(),
        "record": {"chain": result.record_chain, "seq": result.record_seq},
        "latency_ms": round(result.latency_ms, 3),
    }
