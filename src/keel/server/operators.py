"""Operator routes: approvals and kill switches, for people holding an operator API key.

Authenticate with ``Authorization: Bearer keel_op_…`` (or ``X-API-Key``). Roles, least to most:
``viewer`` reads, ``approver`` decides approvals, ``operator`` flips kill switches, ``admin``
manages keys (``keel keys``). A key limited to one tenant sees and acts on that tenant only; a
kill switch outside its own tenant needs a key for every tenant. The approval service still
applies its own rules (no self-approval, the policy's approvers, the two-person rule): the key's
name is the person, its labels (and role) are what a policy's ``approvers:`` may name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pydantic
from fastapi import APIRouter

from keel.app import App
from keel.approvals import Operator
from keel.errors import AuthorizationError, InvalidRequestError, NotFoundError
from keel.identity import OperatorKey
from keel.server._http import (
    NOT_FOUND,
    OPERATOR_RESPONSES,
    Reason,
    body_dependency,
    documented_body,
    parse_body,
)
from keel.server.auth import OperatorAuth

__all__ = ["may_switch", "operator_actor", "operator_router"]


class Decision(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    note: str = pydantic.Field("", max_length=2000)


class Switch(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    scope: Literal["global", "tenant", "agent", "workflow", "tool"]
    target: str = pydantic.Field("*", min_length=1, max_length=200)
    reason: str = pydantic.Field(min_length=1, max_length=2000)


class Revoke(pydantic.BaseModel):
    """Revoke one token (``jti``) or an agent's tokens (``agent``, optionally in ``tenant``)."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    jti: str | None = pydantic.Field(None, min_length=1, max_length=200)
    agent: str | None = pydantic.Field(None, min_length=1, max_length=200)
    tenant: str | None = pydantic.Field(None, min_length=1, max_length=200)
    reason: str = pydantic.Field(min_length=1, max_length=2000)


def operator_router(keel: App, auth: OperatorAuth) -> APIRouter:
    """The operator routes over ``keel``."""
    router = APIRouter(prefix="/v1", tags=["operators"], responses=OPERATOR_RESPONSES)
    config = keel.config
    read_body = body_dependency(config.max_payload_bytes)
    viewer, approver = auth.needs("viewer"), auth.needs("approver")
    switcher = auth.needs("operator")

    def operator(key: OperatorKey) -> Operator:
        return Operator(key.name, frozenset({*key.labels, key.role}), key.tenant)

    @router.get("/approvals")
    def list_approvals(
        status: str | None = None,
        tenant: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
        key: OperatorKey = viewer,
    ) -> dict[str, Any]:
        """Approval requests, newest first (a tenant key sees its tenant's only)."""
        if key.tenant is not None:
            tenant = key.tenant
        requests = keel.approvals.list(
            status,  # type: ignore[arg-type]  # checked by the service
            tenant,
            limit,
            run_id=run_id,
        )
        return {"approvals": [r.to_dict() for r in requests]}

    @router.get("/approvals/{approval_id}", responses=NOT_FOUND)
    def show_approval(approval_id: str, key: OperatorKey = viewer) -> dict[str, Any]:
        """One request, with the exact (redacted) arguments it would approve."""
        with _found(approval_id):
            return keel.approvals.get(approval_id, tenant=key.tenant).to_dict()

    @router.post(
        "/approvals/{approval_id}/approve",
        responses=NOT_FOUND,
        openapi_extra=documented_body(Decision, required=False),
    )
    def approve(
        approval_id: str, raw: bytes = read_body, key: OperatorKey = approver
    ) -> dict[str, Any]:
        """Approve as the key's person (refused: self-approval, not among the approvers…)."""
        body = parse_body(raw or b"{}", Decision, config.max_payload_bytes, config.max_json_depth)
        with _found(approval_id):
            return keel.approvals.approve(approval_id, operator(key), note=body.note).to_dict()

    @router.post(
        "/approvals/{approval_id}/deny", responses=NOT_FOUND, openapi_extra=documented_body(Reason)
    )
    def deny(
        approval_id: str, raw: bytes = read_body, key: OperatorKey = approver
    ) -> dict[str, Any]:
        """Deny, with a reason the requester sees."""
        body = parse_body(raw, Reason, config.max_payload_bytes, config.max_json_depth)
        with _found(approval_id):
            return keel.approvals.deny(approval_id, operator(key), reason=body.reason).to_dict()

    @router.get("/kill-switches")
    def list_switches(key: OperatorKey = viewer) -> dict[str, Any]:
        """Engaged kill switches."""
        switches = keel.kill_switches.list()
        if key.tenant is not None:
            switches = [s for s in switches if s.scope == "tenant" and s.target == key.tenant]
        return {"kill_switches": [_switch(s) for s in switches]}

    def flip(raw: bytes, key: OperatorKey, engage: bool) -> dict[str, Any]:
        body = parse_body(raw, Switch, config.max_payload_bytes, config.max_json_depth)
        may_switch(key, body.scope, body.target)
        act = keel.kill_switches.engage if engage else keel.kill_switches.release
        return _switch(act(body.scope, body.target, reason=body.reason, actor=operator_actor(key)))

    @router.post("/kill-switches/engage", openapi_extra=documented_body(Switch))
    def engage(raw: bytes = read_body, key: OperatorKey = switcher) -> dict[str, Any]:
        """Stop calls now, for everything (``global``) or one tenant, agent, workflow or tool."""
        return flip(raw, key, engage=True)

    @router.post("/kill-switches/release", openapi_extra=documented_body(Switch))
    def release(raw: bytes = read_body, key: OperatorKey = switcher) -> dict[str, Any]:
        """Release a kill switch."""
        return flip(raw, key, engage=False)

    @router.post("/revocations", openapi_extra=documented_body(Revoke))
    def revoke(raw: bytes = read_body, key: OperatorKey = switcher) -> dict[str, Any]:
        """Revoke one agent token (``jti``, a key for every tenant) or every token an agent was
        given until now (``agent``; a tenant key: in its tenant), on every replica."""
        body = parse_body(raw, Revoke, config.max_payload_bytes, config.max_json_depth)
        if (body.jti is None) == (body.agent is None):
            raise InvalidRequestError("name exactly one of 'jti' and 'agent'")
        tenant = body.tenant
        if key.tenant is not None:
            if body.jti is not None or (tenant is not None and tenant != key.tenant):
                raise AuthorizationError(
                    f"key {key.key_id} is limited to tenant {key.tenant!r}: it may revoke that "
                    "tenant's agents only",
                    code="role_required",
                )
            tenant = key.tenant
        revocation = keel.revoke_token(
            body.jti, agent=body.agent, tenant=tenant, reason=body.reason, actor=operator_actor(key)
        )
        return revocation.to_dict()

    return router


def may_switch(key: OperatorKey, scope: str, target: str) -> None:
    """A tenant key may flip its own tenant's switch only (the REST route and the dashboard)."""
    if key.tenant is None or (scope == "tenant" and target == key.tenant):
        return
    raise AuthorizationError(
        f"key {key.key_id} acts for tenant {key.tenant!r} only: it may switch "
        f"'tenant {key.tenant}', nothing wider",
        code="tenant_mismatch",
        context={"key_id": key.key_id, "tenant": key.tenant},
    )


def operator_actor(key: OperatorKey) -> str:
    return f"{key.name} (operator key {key.key_id})"


def _switch(switch: Any) -> dict[str, Any]:
    return {
        "scope": switch.scope,
        "target": switch.target,
        "reason": switch.reason,
        "actor": switch.actor,
        "updated_at": switch.updated_at,
    }


@contextmanager
def _found(approval_id: str) -> Iterator[None]:
    """An approval that does not exist, or is another tenant's, is 404 on operator routes (the
    same answer for both: no existence oracle)."""
    try:
        yield
    except AuthorizationError as exc:
        if exc.code != "approval_not_found":
            raise
        raise NotFoundError(f"no approval {approval_id!r}", code="approval_not_found") from None
