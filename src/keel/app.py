"""The composition root: one ``App`` builds Keel's parts from a config and wires the gateway.

    app = App(KeelConfig(store_url="sqlite:///keel.db"))
    app.load_policy("policies/support.yaml")

    @app.tool("orders.lookup", scope="orders:read")
    def lookup(order_id: str) -> dict: ...

    agent = app.agent("support-bot", tenant="acme", scopes=["orders:read"])
    result = agent.call("orders.lookup", {"order_id": "A-1"})

Nothing here is global: construct as many Apps as you like (each owns its store connection).
Keys, the redaction salt and the audit anchor file live in ``config.home``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib
import inspect
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic

from keel.approvals import Approvals
from keel.audit import AuditEntry, AuditLog, Redactor, VerifyReport, verify_chain
from keel.config import KeelConfig
from keel.core import Call, Clock, Effect, Principal, SystemClock, Verdict
from keel.errors import ConfigError, InvalidRequestError, KeelError, UsageError
from keel.gateway import (
    ApprovalGuard,
    AuthenticateGuard,
    CallRequest,
    CallResult,
    Gateway,
    Guard,
    IdempotencyGuard,
    IdempotencyKeys,
    KillSwitches,
    KillSwitchGuard,
    LedgerGuard,
    LimitsCache,
    PolicyGuard,
    RateLimitGuard,
    ResolveGuard,
    ResponseCacheGuard,
    ScopeGuard,
)
from keel.gateway.breaker import CircuitBreakerGuard
from keel.identity import (
    KeySet,
    OperatorKeys,
    Revocation,
    StoredRevocations,
    TokenIssuer,
    TokenVerifier,
)
from keel.ledger import Ledger, RateLimiter
from keel.models import ModelRequest, Provider, ResponseCache, Router
from keel.net import EgressPolicy
from keel.policy import CompiledPolicy, Limits, PolicySet, load_policy
from keel.runtime import ModelCaller, ModelCatalog, ModelOutcome, ModelTarget, Targets
from keel.runtime.engine import Runtime, WorkflowDef
from keel.runtime.modelconfig import ModelSettings, build_prices, build_providers
from keel.runtime.payloads import Payloads, load_or_create_key
from keel.secrets import SecretStore, default_key_path
from keel.store import Store, Transaction, open_store
from keel.telemetry import StateSources, Telemetry
from keel.tools import (
    FunctionTool,
    ReconcileHook,
    Tool,
    ToolRegistry,
    check_tool_name,
    load_http_tools,
)

__all__ = ["Agent", "App", "import_app"]

F = TypeVar("F", bound=Callable[..., Any])
W = TypeVar("W", bound=Callable[..., Any])

# Audit chains on PostgreSQL unless the config says otherwise: appends to different chains
# (different runs) take different locks, so gateway replicas do not queue behind one head.
_PG_AUDIT_PARTITIONS = 8


class _Policies:
    """The active policy set; swapped atomically when policies are loaded."""

    def __init__(self) -> None:
        self._documents: list[CompiledPolicy] = []
        self._set = PolicySet([])
        self._lock = threading.Lock()

    def add(self, policy: CompiledPolicy) -> None:
        with self._lock:
            documents = [d for d in self._documents if d.name != policy.name] + [policy]
            self._set = PolicySet(documents)
            self._documents = documents

    @property
    def documents(self) -> tuple[CompiledPolicy, ...]:
        return tuple(self._documents)

    def evaluate(self, call: Call, effect: Effect, now: _dt.datetime) -> Verdict:
        return self._set.evaluate(call, effect, now)

    def explain(self, call: Call, effect: Effect, now: _dt.datetime) -> dict[str, Any]:
        return self._set.explain(call, effect, now)

    def limits_for(
        self,
        principal: Principal,
        workflow: str | None,
        kind: Literal["tool", "model"],
        target: str,
    ) -> Limits:
        return self._set.limits_for(principal, workflow, kind, target)


def _secret_file(path: Path, size: int = 32) -> bytes:
    if path.exists():
        data = path.read_bytes()
        if len(data) < 16:
            raise ConfigError(f"{path} is too short to be a secret ({len(data)} bytes)")
        return data
    data = secrets.token_bytes(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return data


class App:
    """A Keel instance: store, keys, policies, audit log, tools and the gateway.

    Thread-safe once built; register tools and load policies before serving calls (loading a
    policy later is safe and takes effect on the next call).
    """

    def __init__(
        self,
        config: KeelConfig | None = None,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        extra_guards: Sequence[Guard] = (),
        breaker: CircuitBreakerGuard | None = None,
    ) -> None:
        self.config = config or KeelConfig()
        self.clock: Clock = clock or SystemClock()
        home = Path(self.config.home)
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.store: Store = store or open_store(self.config.store_url)
        self.keys = KeySet.load_or_create(home / "keys.json")
        self.issuer = TokenIssuer(self.keys, issuer=self.config.token_issuer, clock=self.clock)
        # Token revocations live in the store: one made by any process sharing it is in force
        # here within the kill-switch refresh period (ATTACKS.md #19). Audited like a switch.
        self.revocations = StoredRevocations(
            self.store,
            self.clock,
            refresh_seconds=self.config.kill_switch_refresh_seconds,
            record=self._audit_revocation,
            flush=lambda: self.audit.flush(),
        )
        self.verifier = TokenVerifier(
            self.keys,
            issuer=self.config.token_issuer,
            audience=self.config.token_audience,
            clock=self.clock,
            leeway=_dt.timedelta(seconds=self.config.token_leeway_seconds),
            revocations=self.revocations,
        )
        self.redactor = Redactor(salt=_secret_file(home / "redaction.salt"))
        self.audit = AuditLog(
            self.store,
            self.clock,
            signer=self.keys,
            checkpoint_every=self.config.audit_checkpoint_every,
            checkpoint_path=home / "audit-anchor.jsonl" if self.config.audit_anchor_file else None,
            partitions=self.config.audit_partitions
            or (_PG_AUDIT_PARTITIONS if self.store.dialect == "postgresql" else 1),
        )
        self.tools = ToolRegistry()
        # Credentials for tools and upstream MCP servers: env:/file: references, or sealed in
        # the store under the master key (<home>/secrets.key or KEEL_MASTER_KEY).
        self.secrets = SecretStore(self.store, default_key_path(home), now=self.clock.now)
        # Where tools may send requests: public addresses, plus what egress_allow names (SSRF).
        self.egress = EgressPolicy(self.config.egress_allow)
        for http_tool in load_http_tools(
            self.config.http_tools,
            secrets=self.secrets,
            egress=self.egress,
            max_response_bytes=self.config.max_payload_bytes,
        ):
            self.tools.register(http_tool)
        self._providers: dict[str, Provider] = {}
        self._workflows: dict[str, tuple[WorkflowDef, str]] = {}
        self.payloads = Payloads(self.store, key=load_or_create_key(home / "payload.key"))
        model_settings = ModelSettings.parse(self.config.models)
        self.models = ModelCatalog(build_prices(model_settings))
        for name, provider in build_providers(model_settings).items():
            self.add_provider(provider, name=name)
        for model_name, entry in model_settings.models.items():
            self.add_model(
                model_name,
                self._providers[entry.provider],
                provider_model=entry.provider_model,
                self_hosted=entry.self_hosted,
            )
        self.router: Router | None = model_settings.router_config()
        self.model_cache = ResponseCache(
            self.store,
            self.clock,
            _dt.timedelta(seconds=model_settings.cache_ttl_seconds),
            cache_nondeterministic=model_settings.cache_nondeterministic,
        )
        self.kill_switches = KillSwitches(
            self.store,
            self.audit,
            self.clock,
            refresh_seconds=self.config.kill_switch_refresh_seconds,
        )
        self.idempotency = IdempotencyKeys(
            self.store,
            retention=_dt.timedelta(seconds=self.config.idempotency_retention_seconds),
        )
        self.ledger = Ledger(self.store, self.clock)
        self.rate_limiter = RateLimiter(self.store, self.clock)
        self._policies = _Policies()
        for path in self.config.policy_paths:
            self.load_policy(path)
        limits = LimitsCache(self._policies)
        self.breaker = breaker or CircuitBreakerGuard(self.clock)
        self.approvals = Approvals(self.store, self.audit, self.clock)
        self.operator_keys = OperatorKeys(self.store, self.clock)
        self.telemetry = Telemetry.from_config(
            self.config,
            redactor=self.redactor,
            sources=StateSources(
                clock=self.clock,
                store=self.store,
                ledger=self.ledger,
                runs=lambda: self.runtime.runs.counts(),
                breakers=self.breaker.states,
                cache=self.model_cache.stats,
            ),
        )
        self.gateway = Gateway(
            store=self.store,
            audit=self.audit,
            redactor=self.redactor,
            clock=self.clock,
            observer=self.telemetry.observer,
            guards=[
                AuthenticateGuard(self.verifier),
                ResolveGuard(
                    Targets(self.tools, self.models),
                    max_bytes=self.config.max_payload_bytes,
                    max_depth=self.config.max_json_depth,
                ),
                KillSwitchGuard(self.kill_switches),
                ScopeGuard(),
                PolicyGuard(self._policies, self.clock),
                ResponseCacheGuard(self.model_cache),
                RateLimitGuard(self.rate_limiter, limits),
                LedgerGuard(self.ledger, limits),
                self.breaker,
                *extra_guards,
                IdempotencyGuard(self.idempotency, self.clock),
                ApprovalGuard(self.approvals, self.redactor.redact),
            ],
        )

    # -- tools -------------------------------------------------------------------------------

    def tool(
        self,
        name: str,
        *,
        scope: str,
        effect: Effect = "read",
        description: str | None = None,
        arguments_schema: Mapping[str, Any] | type[pydantic.BaseModel] | None = None,
        timeout: float = 30.0,
        idempotent: bool = False,
        reconcile: ReconcileHook | None = None,
        cost_usd: Decimal | str | int = 0,
        sensitive: bool = False,
    ) -> Callable[[F], F]:
        """Decorator: register a sync or async function as a governed tool."""

        def register(fn: F) -> F:
            self.tools.register(
                FunctionTool(
                    fn,
                    name=name,
                    scope=scope,
                    effect=effect,
                    description=description,
                    arguments_schema=arguments_schema,
                    timeout=timeout,
                    idempotent=idempotent,
                    reconcile=reconcile,
                    cost_usd=cost_usd,
                    sensitive=sensitive,
                )
            )
            return fn

        return register

    def register(self, tool: Tool) -> Tool:
        return self.tools.register(tool)

    # -- models ------------------------------------------------------------------------------

    def add_provider(self, provider: Provider, *, name: str | None = None) -> Provider:
        """Make a provider available by name (config providers are added at start)."""
        self._providers[name or provider.name] = provider
        return provider

    def add_model(
        self,
        name: str,
        provider: Provider,
        *,
        provider_model: str | None = None,
        self_hosted: bool = False,
        timeout: float = 120.0,
    ) -> ModelTarget:
        """Configure a model that agents may call (subject to policy ``models.allow``)."""
        return self.models.add(
            name,
            provider,
            provider_model=provider_model,
            self_hosted=self_hosted,
            timeout=timeout,
        )

    def use_router(self, router: Router) -> None:
        self.router = router

    # -- workflows ---------------------------------------------------------------------------

    def workflow(
        self,
        name: str,
        *,
        agent: str,
        scopes: Iterable[str],
        roles: Iterable[str] = (),
        tenant: str = "default",
        max_step_attempts: int = 3,
    ) -> Callable[[W], W]:
        """Decorator: register an ``async def flow(run, input)`` as a durable workflow.

        Its runs act as ``agent`` (with ``scopes`` and ``roles``) in ``tenant``; every step goes
        through the gateway with a short-lived token bound to the run.
        """
        check_tool_name(name, what="workflow name")

        def register(fn: W) -> W:
            if name in self._workflows:
                raise UsageError(f"a workflow named {name!r} is already registered")
            self._workflows[name] = (
                WorkflowDef(
                    name=name,
                    fn=fn,
                    agent=agent,
                    scopes=tuple(scopes),
                    roles=tuple(roles),
                    max_step_attempts=max_step_attempts,
                    description=(inspect.getdoc(fn) or "").strip(),
                ),
                tenant,
            )
            return fn

        return register

    def workflow_def(self, name: str) -> WorkflowDef:
        found = self._workflows.get(name)
        if found is None:
            raise InvalidRequestError(
                f"no workflow named {name!r} is registered", code="unknown_workflow"
            )
        return found[0]

    def workflow_tenant(self, name: str) -> str:
        self.workflow_def(name)
        return self._workflows[name][1]

    @property
    def workflows(self) -> list[str]:
        return sorted(self._workflows)

    # -- policies ----------------------------------------------------------------------------

    def load_policy(self, source: str | os.PathLike[str]) -> CompiledPolicy:
        """Load a policy file (or every ``*.yaml``/``*.yml`` in a folder); replaces same-named."""
        path = Path(source)
        if path.is_dir():
            loaded = [
                self.load_policy(p)
                for p in sorted(path.iterdir())
                if p.suffix in (".yaml", ".yml") and p.is_file()
            ]
            if not loaded:
                raise ConfigError(
                    f"no policy files (*.yaml) in {path}", context={"file": str(path)}
                )
            return loaded[-1]
        policy = load_policy(path)
        self._policies.add(policy)
        return policy

    def add_policy(self, text: str, *, source_name: str = "<policy>") -> CompiledPolicy:
        """Load a policy from YAML text."""
        policy = load_policy(text, source_name=source_name)
        self._policies.add(policy)
        return policy

    @property
    def policies(self) -> tuple[CompiledPolicy, ...]:
        return self._policies.documents

    def evaluate(self, call: Call, effect: Effect, now: _dt.datetime | None = None) -> Verdict:
        """The active policies' verdict on ``call`` (no execution, nothing recorded)."""
        return self._policies.evaluate(call, effect, now or self.clock.now())

    def explain(self, call: Call, effect: Effect) -> dict[str, Any]:
        """Like :meth:`evaluate`, as JSON with every matching rule."""
        return self._policies.explain(call, effect, self.clock.now())

    # -- identities and calls ----------------------------------------------------------------

    def mint_token(
        self,
        agent_id: str,
        *,
        tenant: str,
        scopes: Iterable[str],
        roles: Iterable[str] = (),
        on_behalf_of: str | None = None,
        run_id: str | None = None,
        ttl: _dt.timedelta | None = None,
    ) -> str:
        return self.issuer.mint(
            agent_id,
            tenant,
            roles=list(roles),
            scopes=list(scopes),
            audience=self.config.token_audience,
            on_behalf_of=on_behalf_of,
            run_id=run_id,
            ttl=ttl or _dt.timedelta(seconds=self.config.token_ttl_seconds),
        )

    def revoke_token(
        self,
        jti: str | None = None,
        *,
        agent: str | None = None,
        tenant: str | None = None,
        reason: str,
        actor: str,
    ) -> Revocation:
        """Revoke one token (``jti``) or every token of ``agent`` minted until now (optionally
        only in ``tenant``), in every process sharing this store; audited as a ``control``
        record. Tokens of an agent minted afterwards verify again. Pass exactly one of ``jti``
        and ``agent``; UsageError otherwise or on an empty reason."""
        if (jti is None) == (agent is None):
            raise UsageError("revoke_token needs exactly one of jti= (a token) or agent=")
        if jti is not None:
            return self.revocations.revoke_token(jti, tenant=tenant, reason=reason, actor=actor)
        assert agent is not None
        return self.revocations.revoke_agent(agent, tenant=tenant, reason=reason, actor=actor)

    def _audit_revocation(self, tx: Transaction, revocation: Revocation) -> None:
        self.audit.append(
            tx,
            AuditEntry(
                kind="control",
                agent=revocation.target if revocation.kind == "agent" else None,
                tenant=revocation.tenant,
                decision="revoke",
                rule_id=f"revoke:{revocation.kind}",
                body={"action": "token.revoke", **revocation.to_dict()},
            ),
        )

    def agent(
        self,
        agent_id: str,
        *,
        tenant: str,
        scopes: Iterable[str],
        roles: Iterable[str] = (),
        on_behalf_of: str | None = None,
        run_id: str | None = None,
    ) -> Agent:
        """An in-process agent identity that holds a short-lived token and renews it."""
        return Agent(
            self,
            agent_id,
            tenant=tenant,
            scopes=tuple(scopes),
            roles=tuple(roles),
            on_behalf_of=on_behalf_of,
            run_id=run_id,
        )

    def call(self, request: CallRequest) -> CallResult:
        return self.gateway.call(request)

    async def acall(self, request: CallRequest) -> CallResult:
        return await self.gateway.acall(request)

    @functools.cached_property
    def runtime(self) -> Runtime:
        """Durable runs of this App's workflows: submit, inspect, re-drive, and workers."""
        return Runtime(self)

    def model_caller(self) -> ModelCaller:
        return ModelCaller(self.gateway, self.router)

    # -- operations --------------------------------------------------------------------------

    def record_refusal(self, error: KeelError, *, stage: str, route: str) -> None:
        """Record a request refused before it became a call (a surface's authentication, say)
        as a ``deny`` decision; the record's place is added to ``error.context``."""
        entry = AuditEntry(
            kind="decision",
            decision="deny",
            rule_id=f"{stage}:{error.code}",
            body={
                "stage": stage,
                "error": {"code": error.code, "message": error.message},
                "route": route,
            },
        )
        with self.store.write(locks=()) as tx:
            record = self.audit.append(tx, entry)
        self.audit.flush()
        error.context.setdefault("record_seq", record.seq)
        error.context.setdefault("record_chain", record.chain)

    def verify_audit(self) -> VerifyReport:
        """Verify every audit chain, its signed checkpoints and the external anchor file."""
        anchor = self.home / "audit-anchor.jsonl"
        return verify_chain(
            self.store,
            verifier=self.keys,
            checkpoint_path=anchor if anchor.exists() else None,
        )

    def close(self) -> None:
        try:
            self.telemetry.close()  # flushes spans still to export
        finally:
            self.store.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Agent:
    """An agent identity bound to an App; renews its token before it expires. Thread-safe."""

    _RENEW_BEFORE = _dt.timedelta(seconds=60)

    def __init__(
        self,
        app: App,
        agent_id: str,
        *,
        tenant: str,
        scopes: tuple[str, ...],
        roles: tuple[str, ...],
        on_behalf_of: str | None,
        run_id: str | None,
    ) -> None:
        self.app = app
        self.agent_id = agent_id
        self.tenant = tenant
        self.scopes = scopes
        self.roles = roles
        self.on_behalf_of = on_behalf_of
        self.run_id = run_id
        self._lock = threading.Lock()
        self._token = ""
        self._expires: _dt.datetime | None = None

    @property
    def token(self) -> str:
        now = self.app.clock.now()
        if self._expires is None or now + self._RENEW_BEFORE >= self._expires:
            with self._lock:
                if self._expires is None or now + self._RENEW_BEFORE >= self._expires:
                    ttl = _dt.timedelta(seconds=self.app.config.token_ttl_seconds)
                    self._token = self.app.mint_token(
                        self.agent_id,
                        tenant=self.tenant,
                        scopes=self.scopes,
                        roles=self.roles,
                        on_behalf_of=self.on_behalf_of,
                        run_id=self.run_id,
                        ttl=ttl,
                    )
                    self._expires = now + ttl
        return self._token

    def _request(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None,
        *,
        idempotency_key: str | None,
        run_id: str | None,
        step_id: str | None,
        workflow: str | None,
        tainted: bool,
        trace_id: str | None,
        approval_id: str | None = None,
    ) -> CallRequest:
        return CallRequest(
            tool=tool,
            arguments=dict(arguments or {}),
            token=self.token,
            run_id=run_id or self.run_id,
            step_id=step_id,
            workflow=workflow,
            idempotency_key=idempotency_key,
            tainted=tainted,
            trace_id=trace_id,
            approval_id=approval_id,
        )

    def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        run_id: str | None = None,
        step_id: str | None = None,
        workflow: str | None = None,
        tainted: bool = False,
        trace_id: str | None = None,
        approval_id: str | None = None,
    ) -> CallResult:
        """Make a governed call; raises the KeelError that stopped it.

        ``approval_id`` presents the approval a person granted for exactly this call (after an
        ``ApprovalRequired`` named it); it authorizes one execution.
        """
        request = self._request(
            tool,
            arguments,
            idempotency_key=idempotency_key,
            run_id=run_id,
            step_id=step_id,
            workflow=workflow,
            tainted=tainted,
            trace_id=trace_id,
            approval_id=approval_id,
        )
        return self.app.gateway.call(request)

    async def acall(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        run_id: str | None = None,
        step_id: str | None = None,
        workflow: str | None = None,
        tainted: bool = False,
        trace_id: str | None = None,
        approval_id: str | None = None,
    ) -> CallResult:
        """Async form of :meth:`call`."""
        request = self._request(
            tool,
            arguments,
            idempotency_key=idempotency_key,
            run_id=run_id,
            step_id=step_id,
            workflow=workflow,
            tainted=tainted,
            trace_id=trace_id,
            approval_id=approval_id,
        )
        return await self.app.gateway.acall(request)

    def model(
        self,
        request: ModelRequest | Mapping[str, Any],
        *,
        tier: str | None = None,
        task_class: str | None = None,
        risk: Effect | None = None,
        sensitivity: str | None = None,
        verify: Callable[[Any], float] | None = None,
        min_confidence: float = 0.85,
        run_id: str | None = None,
        step_id: str | None = None,
        workflow: str | None = None,
        tainted: bool = False,
    ) -> ModelOutcome:
        """A governed, metered model call, routed when a tier or task class is given.

        ``request`` is a ``keel.models.ModelRequest`` or its dict form (``messages``,
        ``max_tokens``, optional ``model``). Raises the KeelError that stopped it.
        """
        return self.app.model_caller().complete(
            lambda: self.token,
            request,
            tier=tier,
            task_class=task_class,
            risk=risk,
            sensitivity=sensitivity,
            verify=verify,
            min_confidence=min_confidence,
            run_id=run_id or self.run_id,
            step_id=step_id,
            workflow=workflow,
            tainted=tainted,
        )


def import_app(spec: str) -> App:
    """The App named by ``spec``, uvicorn-style: ``package.module:attribute``, where the attribute
    is an ``App`` or a function returning one. The current folder is importable. Raises
    ``UsageError`` naming what is wrong."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--app {spec!r} must look like package.module:app")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--app: cannot import {module_name!r}: {exc}") from None
    target: Any = getattr(module, attribute, None)
    if target is None:
        raise UsageError(f"--app: {module_name!r} has no attribute {attribute!r}")
    app = target() if callable(target) and not isinstance(target, App) else target
    if not isinstance(app, App):
        raise UsageError(f"--app {spec!r} is a {type(app).__name__}, not a keel App")
    return app
