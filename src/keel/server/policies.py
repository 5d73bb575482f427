"""Policy routes, for operator API keys: list and show the loaded policies, validate a policy
document without loading it, and explain how the loaded policies decide a call.

Every route needs ``viewer`` or above. A key limited to one tenant sees the policies whose scope
admits its tenant (another tenant's policy is "not found") and explains calls in its tenant only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from fastapi import APIRouter, Query

from keel.app import App
from keel.core import Call, Effect, Principal
from keel.errors import AuthorizationError, ConfigError, InvalidRequestError, NotFoundError
from keel.identity import OperatorKey
from keel.policy import CompiledPolicy, load_policy
from keel.server._http import NOT_FOUND, OPERATOR_RESPONSES, body_dependency, parse_body
from keel.server.auth import OperatorAuth
from keel.tools import check_model_name, check_tool_name

__all__ = ["ExplainBody", "explain_call", "policies_router", "visible_policies"]

_NAME = pydantic.Field(min_length=1, max_length=200)


class PolicySummary(pydantic.BaseModel):
    name: str = pydantic.Field(description="The policy's name (its id: unique among loaded ones).")
    version: str
    source: str = pydantic.Field(description="Where it was loaded from (a path, or <policy>).")
    hash: str = pydantic.Field(description="sha256 of the normalized document.")
    autonomy: str
    shadow: bool
    scope: dict[str, list[str]]
    rule_count: int = pydantic.Field(description="How many rule ids its verdicts can name.")


class PolicyList(pydantic.BaseModel):
    policies: list[PolicySummary]


class PolicyDetail(PolicySummary):
    rule_ids: list[str] = pydantic.Field(description="Every rule id its verdicts can name.")
    document: dict[str, Any] = pydantic.Field(description="The normalized document.")


class PolicyProblem(pydantic.BaseModel):
    message: str = pydantic.Field(description="<file>:<line>: key '<dotted.key>': <problem>")
    file: str | None = None
    line: int | None = None
    column: int | None = None
    key: str | None = None


class PolicyCheck(pydantic.BaseModel):
    """The answer of ``POST /v1/policies/validate``."""

    ok: bool
    policy: PolicySummary | None = pydantic.Field(None, description="When ok: what it would load.")
    errors: list[PolicyProblem]


class ExplainBody(pydantic.BaseModel):
    """A call to explain: who (an agent token, or agent and tenant), what, and in which context."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    kind: Literal["tool", "model"] = "tool"
    tool: str = pydantic.Field(min_length=1, max_length=200, description="Tool or model name.")
    arguments: dict[str, Any] = pydantic.Field(default_factory=dict)
    token: str | None = pydantic.Field(
        None, min_length=1, max_length=8192, description="An agent token: who calls."
    )
    agent: str | None = pydantic.Field(None, min_length=1, max_length=200)
    tenant: str | None = pydantic.Field(None, min_length=1, max_length=200)
    roles: list[Annotated[str, _NAME]] = pydantic.Field(default_factory=list, max_length=100)
    scopes: list[Annotated[str, _NAME]] = pydantic.Field(default_factory=list, max_length=100)
    on_behalf_of: str | None = pydantic.Field(None, max_length=200)
    run_id: str | None = pydantic.Field(None, max_length=200)
    workflow: str | None = pydantic.Field(None, max_length=200)
    tainted: bool = False
    effect: Literal["read", "reversible", "irreversible"] | None = pydantic.Field(
        None,
        description="For a target this server does not register (default: irreversible); a "
        "registered tool's declared effect always applies.",
    )

    @pydantic.model_validator(mode="after")
    def _who(self) -> ExplainBody:
        if (self.token is None) == (self.agent is None or self.tenant is None):
            raise ValueError("give either an agent token, or agent and tenant (not both)")
        if self.token is not None and (self.agent or self.tenant or self.roles or self.scopes):
            raise ValueError("with a token, agent, tenant, roles and scopes come from the token")
        return self


class Explanation(pydantic.BaseModel):
    """The verdict the loaded policies give the call, and every rule that matched."""

    verdict: Literal["allow", "deny", "require_approval", "escalate"]
    rule_id: str
    reason: str
    policy_hash: str
    approvals_required: int
    approvers: list[str]
    escalate_to: str | None
    shadow: bool
    registered: bool = pydantic.Field(description="The target is registered on this server.")
    call: dict[str, Any]
    policies: list[dict[str, Any]]
    matched: list[dict[str, Any]]


def policies_router(keel: App, auth: OperatorAuth) -> APIRouter:
    router = APIRouter(prefix="/v1/policies", tags=["policies"], responses=OPERATOR_RESPONSES)
    config = keel.config
    read_body = body_dependency(config.max_payload_bytes)
    viewer = auth.needs("viewer")

    def visible(key: OperatorKey) -> list[CompiledPolicy]:
        return visible_policies(keel, key)

    @router.get("", response_model=PolicyList)
    def list_policies(key: OperatorKey = viewer) -> dict[str, Any]:
        """The loaded policies, in load order."""
        return {"policies": [_summary(p) for p in visible(key)]}

    @router.get("/{name}", response_model=PolicyDetail, responses=NOT_FOUND)
    def show_policy(name: str, key: OperatorKey = viewer) -> dict[str, Any]:
        """One loaded policy: its normalized document and the rule ids it can decide by."""
        policy = next((p for p in visible(key) if p.name == name), None)
        if policy is None:
            raise NotFoundError(f"no policy named {name!r} is loaded", code="policy_not_found")
        return {
            **_summary(policy),
            "rule_ids": list(policy.document.rule_ids()),
            "document": policy.to_dict(),
        }

    @router.post(
        "/validate",
        response_model=PolicyCheck,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    media: {"schema": {"type": "string"}}
                    for media in ("application/yaml", "text/plain")
                },
            }
        },
    )
    def validate(
        raw: bytes = read_body,
        filename: Annotated[
            str, Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
        ] = "<request>",
        _key: OperatorKey = viewer,
    ) -> dict[str, Any]:
        """Check a policy document (the body, YAML text) as loading would; nothing is loaded.

        Errors name the line, column and dotted key (``filename`` names the text in them)."""
        if not raw:
            raise InvalidRequestError("the request body is empty; send the policy's YAML text")
        try:
            policy = load_policy(raw, source_name=filename)  # bytes: always text, never a path
        except ConfigError as exc:
            return {"ok": False, "policy": None, "errors": [_problem(exc)]}
        return {"ok": True, "policy": _summary(policy), "errors": []}

    @router.post(
        "/explain",
        response_model=Explanation,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ExplainBody.model_json_schema()}},
            }
        },
    )
    def explain(raw: bytes = read_body, key: OperatorKey = viewer) -> dict[str, Any]:
        """How the loaded policies decide a call (nothing runs, nothing is recorded)."""
        return explain_call(keel, key, raw)

    return router


def visible_policies(keel: App, key: OperatorKey) -> list[CompiledPolicy]:
    """The loaded policies a key may see (a tenant key: those that cover its tenant)."""
    return [p for p in keel.policies if key.tenant is None or p.covers_tenant(key.tenant)]


def explain_call(keel: App, key: OperatorKey, raw: bytes) -> dict[str, Any]:
    """``raw`` (an ``ExplainBody`` as JSON) explained for ``key``: the REST route and the
    dashboard's "explain this call" share it."""
    config = keel.config
    body = parse_body(raw, ExplainBody, config.max_payload_bytes, config.max_json_depth)
    principal = _principal(keel, body)
    if not key.covers(principal.tenant):
        raise AuthorizationError(
            f"key {key.key_id} acts for tenant {key.tenant!r} only",
            code="tenant_mismatch",
            context={"key_id": key.key_id, "tenant": key.tenant},
        )
    call, effect, registered = _call(keel, body, principal)
    return {**keel.explain(call, effect), "registered": registered}


def _summary(policy: CompiledPolicy) -> dict[str, Any]:
    return {
        "name": policy.name,
        "version": policy.version,
        "source": policy.source,
        "hash": policy.hash,
        "autonomy": policy.autonomy,
        "shadow": policy.shadow,
        "scope": policy.scope.to_dict(),
        "rule_count": len(policy.document.rule_ids()),
    }


def _problem(error: ConfigError) -> dict[str, Any]:
    context = error.context
    return {
        "message": error.message,
        **{name: context.get(name) for name in ("file", "line", "column", "key")},
    }


def _principal(keel: App, body: ExplainBody) -> Principal:
    if body.token is not None:
        return keel.verifier.verify(body.token)
    assert body.agent is not None and body.tenant is not None  # checked by the model
    return Principal(
        agent_id=body.agent,
        tenant=body.tenant,
        roles=frozenset(body.roles),
        scopes=frozenset(body.scopes),
        on_behalf_of=body.on_behalf_of,
        run_id=body.run_id,
    )


def _call(keel: App, body: ExplainBody, principal: Principal) -> tuple[Call, Effect, bool]:
    """The Call a real request would make: a registered target's canonical name, declared
    effect and validated arguments; otherwise the body's effect (irreversible by default)."""
    known = body.tool in (keel.models.names() if body.kind == "model" else keel.tools)
    arguments: dict[str, Any] = body.arguments
    effect: Effect = body.effect or "irreversible"
    if known:
        target = keel.models.get(body.tool) if body.kind == "model" else keel.tools.get(body.tool)
        name = target.spec.name
        arguments = dict(target.spec.arguments.validate(name, arguments))
        effect = target.spec.effect
    else:
        name = check_model_name(body.tool) if body.kind == "model" else check_tool_name(body.tool)
    call = Call(
        kind=body.kind,
        target=name,
        arguments=arguments,
        principal=principal,
        run_id=body.run_id or principal.run_id,
        workflow=body.workflow,
        tainted=body.tainted,
    )
    return call, effect, known
