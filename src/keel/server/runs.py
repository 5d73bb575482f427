"""Workflow and run routes, for operator API keys: submit, list, show with steps, cancel, retry.

Reading needs ``viewer``; submitting, cancelling and re-driving need ``operator``. A key limited
to one tenant sees and acts on that tenant's runs only (another tenant's run is "not found").
"""

from __future__ import annotations

from typing import Any

import pydantic
from fastapi import APIRouter

from keel.app import App
from keel.errors import InvalidRequestError, NotFoundError
from keel.identity import OperatorKey
from keel.runtime.journal import RunRecord
from keel.server._http import (
    NOT_FOUND,
    OPERATOR_RESPONSES,
    Reason,
    body_dependency,
    documented_body,
    parse_body,
)
from keel.server.auth import OperatorAuth

__all__ = ["runs_router"]


class Submit(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    input: Any = None
    run_id: str | None = pydantic.Field(None, min_length=1, max_length=200)
    on_behalf_of: str | None = pydantic.Field(None, max_length=200)


def runs_router(keel: App, auth: OperatorAuth) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["runs"], responses=OPERATOR_RESPONSES)
    config = keel.config
    read_body = body_dependency(config.max_payload_bytes)
    viewer, operator = auth.needs("viewer"), auth.needs("operator")

    def visible(run_id: str, key: OperatorKey) -> RunRecord:
        try:
            record = keel.runtime.get(run_id)
        except InvalidRequestError:
            record = None
        if record is None or not key.covers(record.tenant):
            raise NotFoundError(f"no run {run_id!r}", code="unknown_run")
        return record

    @router.get("/workflows")
    def workflows(key: OperatorKey = viewer) -> dict[str, Any]:
        """The workflows this server's App registers."""
        return {
            "workflows": [
                {"name": name, "tenant": keel.workflow_tenant(name)}
                for name in keel.workflows
                if key.covers(keel.workflow_tenant(name))
            ]
        }

    @router.post(
        "/workflows/{name}/runs",
        responses=NOT_FOUND,
        status_code=201,
        openapi_extra=documented_body(Submit, required=False),
    )
    def submit(name: str, raw: bytes = read_body, key: OperatorKey = operator) -> dict[str, Any]:
        """Start a durable run of workflow ``name``; a worker executes it."""
        body = parse_body(raw or b"{}", Submit, config.max_payload_bytes, config.max_json_depth)
        try:
            tenant = keel.workflow_tenant(name)
        except InvalidRequestError:
            tenant = None
        if tenant is None or not key.covers(tenant):
            raise NotFoundError(f"no workflow {name!r}", code="unknown_workflow")
        record = keel.runtime.submit(
            name, body.input, run_id=body.run_id, on_behalf_of=body.on_behalf_of
        )
        return record.to_dict()

    @router.get("/runs")
    def list_runs(
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 100,
        key: OperatorKey = viewer,
    ) -> dict[str, Any]:
        """Runs, newest first."""
        if not 1 <= limit <= 1000:
            raise InvalidRequestError("limit must be between 1 and 1000")
        records = keel.runtime.runs.find(
            status=status, workflow=workflow, tenant=key.tenant, limit=limit
        )
        return {"runs": [r.to_dict() for r in records]}

    @router.get("/runs/{run_id}", responses=NOT_FOUND)
    def show_run(run_id: str, key: OperatorKey = viewer) -> dict[str, Any]:
        """A run and its journal steps."""
        data = visible(run_id, key).to_dict()
        data["steps"] = [step.to_dict() for step in keel.runtime.steps(run_id)]
        return data

    @router.post(
        "/runs/{run_id}/cancel", responses=NOT_FOUND, openapi_extra=documented_body(Reason)
    )
    def cancel(run_id: str, raw: bytes = read_body, key: OperatorKey = operator) -> dict[str, Any]:
        """Cancel a run that has not ended."""
        body = parse_body(raw, Reason, config.max_payload_bytes, config.max_json_depth)
        visible(run_id, key)
        keel.runtime.cancel(run_id, reason=f"{body.reason} (by {key.name}, key {key.key_id})")
        return keel.runtime.get(run_id).to_dict()

    @router.post("/runs/{run_id}/retry", responses=NOT_FOUND, openapi_extra=documented_body(Reason))
    def retry(run_id: str, raw: bytes = read_body, key: OperatorKey = operator) -> dict[str, Any]:
        """Re-drive a failed, parked or escalated run (completed steps replay)."""
        body = parse_body(raw, Reason, config.max_payload_bytes, config.max_json_depth)
        visible(run_id, key)
        reason = f"{body.reason} (by {key.name}, key {key.key_id})"
        return keel.runtime.retry(run_id, reason=reason).to_dict()

    return router
