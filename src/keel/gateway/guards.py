"""The guards of the governed call. Each owns one concern; only the Gateway composes them.

A guard's ``before`` runs in chain order: it fills the CallContext, or raises a KeelError to stop
the call (the gateway records the denial). Guards that hold something for the call (an
idempotency claim, a budget reservation) also implement ``after`` (the call executed; runs inside
the transaction that appends the audit record), ``abort`` (the call was stopped later in the
chain) and ``done`` (the record transaction has ended, whatever happened). Guards must be
thread-safe and must not block for long.
"""

from __future__ import annotations

import datetime as _dt
from typing import ClassVar, Literal, Protocol

from keel.canonical import canonical_json, check_depth, sha256_hex
from keel.core import Call, Clock, Cost, Effect, Principal, Verdict
from keel.errors import (
    AuthorizationError,
    InternalError,
    InvalidRequestError,
    KillSwitchEngaged,
    PayloadTooLargeError,
    PolicyDenied,
)
from keel.gateway.context import CallContext
from keel.gateway.idempotency import IdempotencyKeys
from keel.gateway.killswitch import KillSwitches
from keel.models import ModelRequest, ModelResponse, ResponseCache
from keel.store import Transaction
from keel.tools import Tool

__all__ = [
    "AuthenticateGuard",
    "Authenticator",
    "Decider",
    "Guard",
    "IdempotencyGuard",
    "KillSwitchGuard",
    "PolicyGuard",
    "ResolveGuard",
    "Resolver",
    "ResponseCacheGuard",
    "ScopeGuard",
]


class Resolver(Protocol):
    """Finds the executable target of a call: a registered tool, or a configured model."""

    def resolve(self, kind: Literal["tool", "model"], name: object) -> Tool: ...


class Authenticator(Protocol):
    """Turns a presented token into a verified Principal or raises AuthenticationError."""

    def verify(self, token: str) -> Principal: ...


class Decider(Protocol):
    """Decides a call under policy. Must be deterministic and never raise for a valid call."""

    def evaluate(self, call: Call, effect: Effect, now: _dt.datetime) -> Verdict: ...


class Guard:
    """Base class: a guard that passes everything. Override what the concern needs."""

    name = "guard"

    #: True when ``after``/``abort`` are safe in a *keyed* store transaction (see
    #: ``keel.store.base``): each check-and-change they make is one atomic statement or holds a
    #: lock name it takes with ``tx.lock``. The gateway records a call in a keyed transaction
    #: only when every guard that writes in it says so; otherwise in an exclusive one.
    keyed_safe: ClassVar[bool] = False

    #: True when ``before`` may run again while a long call is executing (a stream), to stop
    #: it when its grounds are gone (a kill switch engaged, the agent's token revoked).
    rechecks: ClassVar[bool] = False

    def before(self, ctx: CallContext) -> None:
        """Check or prepare the call; raise a KeelError to stop it."""

    def after(self, ctx: CallContext, tx: Transaction) -> None:
        """The call executed (successfully or not); ``tx`` is the record transaction."""

    def abort(self, ctx: CallContext, tx: Transaction) -> None:
        """The call was stopped after this guard's ``before`` ran; undo what it holds."""

    def done(self, ctx: CallContext) -> None:
        """The call's record transaction has ended (committed or not); release local state."""

    def extend(self, ctx: CallContext, cost: Cost) -> None:
        """A running call needs ``cost`` more than was held for it (a streamed answer outran
        its estimate): hold it too, or raise a KeelError (the caller stops the call)."""


class AuthenticateGuard(Guard):
    name = "authenticate"
    rechecks = True

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    def before(self, ctx: CallContext) -> None:
        ctx.principal = self._auth.verify(ctx.request.token)


class ResolveGuard(Guard):
    """Resolve the tool, enforce size/depth limits and validate the arguments; build the Call."""

    name = "resolve"

    def __init__(self, resolver: Resolver, *, max_bytes: int, max_depth: int) -> None:
        self._resolver = resolver
        self._max_bytes = max_bytes
        self._max_depth = max_depth

    def before(self, ctx: CallContext) -> None:
        request = ctx.request
        principal = ctx.principal
        assert principal is not None
        tool = self._resolver.resolve(request.kind, request.tool)
        ctx.tool = tool
        raw = request.arguments
        if not isinstance(raw, dict):
            raise InvalidRequestError(
                f"arguments for {tool.spec.name} must be a JSON object, got {type(raw).__name__}",
                code="invalid_arguments",
            )
        check_depth(raw, max_depth=self._max_depth)
        arguments = tool.spec.arguments.validate(tool.spec.name, raw)
        ctx.arguments = arguments
        args_json = canonical_json(arguments)  # depth was checked on the raw arguments
        try:
            size = len(args_json) if args_json.isascii() else len(args_json.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(
                f"arguments for {tool.spec.name} contain text that is not valid Unicode "
                f"(a lone surrogate {args_json[exc.start]!a})",
                code="invalid_arguments",
            ) from None
        if size > self._max_bytes:
            raise PayloadTooLargeError(
                f"arguments for {tool.spec.name} are {size} bytes; the limit is "
                f"{self._max_bytes} bytes",
                context={"size": size, "limit": self._max_bytes},
            )
        ctx.args_json = args_json
        ctx.fingerprint = sha256_hex(tool.spec.name + "\n" + args_json)
        run_id = request.run_id or principal.run_id
        ctx.call = Call(
            kind=request.kind,
            target=tool.spec.name,
            arguments=arguments,
            principal=principal,
            run_id=run_id,
            step_id=request.step_id,
            workflow=request.workflow,
            idempotency_key=request.idempotency_key,
            tainted=request.tainted,
            metadata=request.metadata,
        )


class KillSwitchGuard(Guard):
    name = "kill_switch"
    rechecks = True

    def __init__(self, switches: KillSwitches) -> None:
        self._switches = switches

    def before(self, ctx: CallContext) -> None:
        assert ctx.call is not None
        switch = self._switches.engaged_for(ctx.call)
        if switch is not None:
            target = "everything" if switch.scope == "global" else f"{switch.scope} {switch.target}"
            raise KillSwitchEngaged(
                f"kill switch engaged for {target}: {switch.reason}",
                context={
                    "rule_id": f"kill:{switch.scope}:{switch.target}",
                    "scope": switch.scope,
                    "target": switch.target,
                    "actor": switch.actor,
                },
            )


class ScopeGuard(Guard):
    """The principal must hold the tool's required scope, whatever policy would say."""

    name = "scope"

    def before(self, ctx: CallContext) -> None:
        assert ctx.principal is not None and ctx.tool is not None
        scope = ctx.tool.spec.scope
        if not ctx.principal.has_scope(scope):
            raise AuthorizationError(
                f"agent {ctx.principal.agent_id} lacks scope {scope!r} needed by "
                f"{ctx.tool.spec.name}",
                code="missing_scope",
                context={"tool": ctx.tool.spec.name, "scope": scope},
            )


class PolicyGuard(Guard):
    name = "policy"

    def __init__(self, decider: Decider, clock: Clock) -> None:
        self._decider = decider
        self._clock = clock

    def before(self, ctx: CallContext) -> None:
        assert ctx.call is not None and ctx.tool is not None
        verdict = self._decider.evaluate(ctx.call, ctx.tool.spec.effect, self._clock.now())
        if not isinstance(verdict, Verdict):
            raise InternalError(f"policy returned {type(verdict).__name__}, not a Verdict")
        ctx.verdict = verdict
        if verdict.decision == "deny":
            raise PolicyDenied(
                verdict.reason,
                context={"rule_id": verdict.rule_id, "policy_hash": verdict.policy_hash},
            )


class IdempotencyGuard(Guard):
    """Claims the call's idempotency key, or short-circuits with the recorded outcome.

    The claim is durable (a commit before the tool runs) only for tools that change the world
    and do not honour idempotency keys; see ``keel.gateway.idempotency``.
    """

    name = "idempotency"
    keyed_safe = True  # complete/release/store: one statement each, on this call's own key

    def __init__(self, keys: IdempotencyKeys, clock: Clock) -> None:
        self._keys = keys
        self._clock = clock

    def before(self, ctx: CallContext) -> None:
        call = ctx.call
        tool = ctx.tool
        assert call is not None
        assert tool is not None
        assert ctx.fingerprint is not None
        key = call.idempotency_key
        if key is None and call.run_id is not None and call.step_id is not None:
            key = f"{call.run_id}/{call.step_id}"
        if key is None:
            return
        tenant = call.principal.tenant
        now = self._clock.now()
        if tool.spec.effect != "read" and not tool.spec.idempotent:
            stored = self._keys.claim(tenant, key, ctx.fingerprint, call.call_id, now)
            ctx.claimed = True
        else:
            # Mark first, then look: a duplicate that finished meanwhile is seen, never re-run.
            self._keys.mark(tenant, key)
            try:
                stored = self._keys.lookup(
                    tenant, key, ctx.fingerprint, now, replay_failures=tool.spec.effect != "read"
                )
            except BaseException:
                self._keys.unmark(tenant, key)
                raise
            if stored is not None:
                self._keys.unmark(tenant, key)
        ctx.idempotency_key = key
        if stored is not None:
            ctx.replay = stored

    def after(self, ctx: CallContext, tx: Transaction) -> None:
        key = ctx.idempotency_key
        if key is None or ctx.replay is not None:
            return
        call = ctx.call
        assert call is not None
        assert ctx.fingerprint is not None
        tenant = call.principal.tenant
        error = ctx.error
        if error is None:
            # Canonical JSON of {"call_id", "ok": true, "value"} reusing the encoded result.
            value_json = ctx.result_json or canonical_json(ctx.result)
            outcome = f'{{"call_id":{canonical_json(call.call_id)},"ok":true,"value":{value_json}}}'
        else:
            retryable = bool(getattr(error, "retryable", False))
            if ctx.claimed and not _proves_not_run(error):
                # A claimed key belongs to a tool that changes the world and ignores keys: after
                # a timeout or a 5xx the effect may have happened, so the same key must not run
                # it again. The failure is replayed as final; reconciliation settles the truth.
                retryable = False
            outcome = canonical_json(
                {
                    "ok": False,
                    "error": getattr(error, "code", "tool_error"),
                    "message": str(error),
                    "retryable": retryable,
                    "call_id": call.call_id,
                }
            )
        if ctx.claimed:
            self._keys.complete(tx, tenant, key, outcome, succeeded=error is None)
        else:
            self._keys.store(
                tx,
                tenant,
                key,
                ctx.fingerprint,
                call.call_id,
                outcome,
                self._clock.now(),
                succeeded=error is None,
            )

    def abort(self, ctx: CallContext, tx: Transaction) -> None:
        key = ctx.idempotency_key
        if key is None or ctx.replay is not None or ctx.call is None:
            return
        if ctx.claimed:
            self._keys.release(tx, ctx.call.principal.tenant, key)

    def done(self, ctx: CallContext) -> None:
        """Called once the call's record is committed (or failed to commit)."""
        key = ctx.idempotency_key
        if key is not None and ctx.call is not None and ctx.replay is None:
            self._keys.unmark(ctx.call.principal.tenant, key)


class ResponseCacheGuard(Guard):
    """Answers a deterministic model call from the response cache (tenant-scoped, with TTL).

    A hit short-circuits the chain before the ledger: it costs nothing and the record says
    ``cached``. A miss is stored after a successful call. Tool calls pass untouched.
    """

    name = "cache"
    keyed_safe = True  # writes nothing in the record transaction

    def __init__(self, cache: ResponseCache) -> None:
        self._cache = cache

    def before(self, ctx: CallContext) -> None:
        call = ctx.call
        assert call is not None
        if call.kind != "model":
            return
        request = ModelRequest.from_dict(call.arguments)
        hit = self._cache.get(call.principal.tenant, request)
        if hit is not None:
            ctx.replay = {"ok": True, "value": hit.to_dict(), "cached": True}

    def after(self, ctx: CallContext, tx: Transaction) -> None:
        call = ctx.call
        if call is None or call.kind != "model" or ctx.error is not None or ctx.replay:
            return
        ctx.notes["cache_put"] = True

    def done(self, ctx: CallContext) -> None:
        # Stored after the record commits (the cache has its own short transaction).
        if ctx.notes.pop("cache_put", False) and ctx.call is not None:
            self._cache.put(
                ctx.call.principal.tenant,
                ModelRequest.from_dict(ctx.call.arguments),
                ModelResponse.from_dict(ctx.result),
            )


def _proves_not_run(error: BaseException) -> bool:
    """The adapter proved the request never reached the system (``context["executed"]``)."""
    context = getattr(error, "context", None)
    return isinstance(context, dict) and context.get("executed") is False
