"""Operator authentication for the routes: the key from the request, and role checks."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from keel.app import App
from keel.errors import AuthorizationError, NotFoundError
from keel.identity import OperatorKey

__all__ = ["OperatorAuth", "tenant_filter"]


def tenant_filter(key: OperatorKey, tenant: str | None) -> str | None:
    """The tenant a read by ``key`` is limited to: ``tenant`` (None: all), or the key's own. A
    tenant key asking for another tenant gets "not found", whether that tenant exists or not."""
    if not key.covers(tenant or key.tenant):
        raise NotFoundError(f"no tenant {tenant!r} for this key", code="tenant_not_found")
    return tenant or key.tenant


class OperatorAuth:
    """``Authorization: Bearer keel_op_…`` (or ``X-API-Key``), checked against the store."""

    def __init__(self, keel: App) -> None:
        self._keys = keel.operator_keys

    def key_of(self, request: Request) -> OperatorKey:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        text = value if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
        return self._keys.check(text)

    def needs(self, role: str) -> Any:
        """A FastAPI dependency: the request's key, if its role is ``role`` or above."""

        def check(request: Request) -> OperatorKey:
            key = self.key_of(request)
            if not key.allows(role):
                raise AuthorizationError(
                    f"this needs the {role!r} role; key {key.key_id} has {key.role!r}",
                    code="role_required",
                    context={"needed": role, "role": key.role, "key_id": key.key_id},
                )
            return key

        return Depends(check)
