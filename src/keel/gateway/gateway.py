"""The Gateway: the single chokepoint every governed call passes.

    authenticate → resolve + validate → kill switch → scope → policy → [ledger, rate limit,
    breaker: later guards] → idempotency → approval → execute → after-guards → record

Fail closed: any exception raised inside a guard denies the call; an unexpected one becomes an
``InternalError``. A denied call never reaches the tool. Every call, denied or executed, leaves one
audit record, appended in the same transaction as the guards' ``after`` writes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, NoReturn, Protocol

from keel.audit import AuditEntry, AuditLog, Record
from keel.canonical import canonical_json
from keel.core import Clock, Cost, Principal, Verdict
from keel.errors import (
    ApprovalRequired,
    InternalError,
    KeelError,
    PolicyDenied,
    ToolError,
    UsageError,
)
from keel.gateway.context import CallContext, CallRequest, CallResult
from keel.gateway.guards import Guard
from keel.store import Store
from keel.tools import Tool, ToolContext

__all__ = ["CallObserver", "Gateway", "OpenCall", "Redactor"]

log = logging.getLogger("keel.gateway")


class Redactor(Protocol):
    """Returns a copy of a JSON value with secrets and PII replaced, and keyed digests of
    canonical JSON text (``keel.audit.Redactor``). Thread-safe."""

    def redact(self, value: Any) -> Any: ...

    def digest(self, text: str) -> str: ...


class CallObserver(Protocol):
    """Watches governed calls for telemetry (spans, metrics; ``keel.telemetry`` implements it).

    Thread-safe, cheap, and never raises (the gateway logs and ignores an exception from it).
    ``span(request)`` is entered around :meth:`Gateway.call` / :meth:`Gateway.acall` (None: no
    span). ``trace_id()`` is the current W3C trace id (32 hex digits, or None), recorded when the
    request names none. ``observe`` is called once per call, after its audit record committed,
    with the latency in milliseconds and the error that stopped or failed it (None: it passed).
    """

    def span(self, request: CallRequest) -> AbstractContextManager[object] | None: ...

    def trace_id(self) -> str | None: ...

    def observe(
        self, ctx: CallContext, record: Record, latency_ms: float, error: BaseException | None
    ) -> None: ...


class Gateway:
    """Composes guards around tool execution. Thread-safe; one per Keel instance.

    ``guards`` run in the given order. The gateway itself only sequences them, executes the tool
    and records; every rule lives in a guard. ``observer`` (optional) sees every call for
    telemetry; without one the gateway does no telemetry work at all.
    """

    def __init__(
        self,
        *,
        store: Store,
        audit: AuditLog,
        redactor: Redactor,
        clock: Clock,
        guards: Sequence[Guard],
        observer: CallObserver | None = None,
    ) -> None:
        self._observer = observer
        self._store = store
        self._audit = audit
        self._redactor = redactor
        self._clock = clock
        self._guards = tuple(guards)
        base_after = Guard.after
        base_abort = Guard.abort
        base_done = Guard.done
        self._needs_after = frozenset(g for g in self._guards if type(g).after is not base_after)
        self._needs_abort = frozenset(g for g in self._guards if type(g).abort is not base_abort)
        self._needs_done = tuple(g for g in self._guards if type(g).done is not base_done)
        # The record transaction is keyed (runs beside other replicas' records, see
        # keel.store.base) when every guard writing in it is safe there; else exclusive.
        writers = self._needs_after | self._needs_abort
        self._record_locks: tuple[str, ...] | None = (
            () if all(type(g).keyed_safe for g in writers) else None
        )

    @property
    def guards(self) -> tuple[Guard, ...]:
        return self._guards

    # -- entry points --------------------------------------------------------------------------

    def call(self, request: CallRequest) -> CallResult:
        """Govern and execute ``request`` on this thread. Raises the KeelError that stopped it."""
        observer = self._observer
        if observer is not None:
            span = observer.span(request)
            if span is not None:
                with span:
                    return self._call(request)
        return self._call(request)

    def _call(self, request: CallRequest) -> CallResult:
        ctx, ran = self._before(request)
        if self._executes(ctx):
            tool = ctx.tool
            assert tool is not None and ctx.arguments is not None
            try:
                ctx.result = tool.spec.normalize_result(
                    tool.invoke(ctx.arguments, self._tool_context(ctx))
                )
            except Exception as exc:  # recorded, then re-raised as a KeelError
                ctx.error = _as_tool_error(exc, tool.spec.name)
        return self._finish(ctx, ran)

    async def acall(self, request: CallRequest) -> CallResult:
        """Async form of :meth:`call`; async tools are awaited, sync tools run in a thread."""
        observer = self._observer
        if observer is not None:
            span = observer.span(request)
            if span is not None:
                with span:
                    return await self._acall(request)
        return await self._acall(request)

    async def _acall(self, request: CallRequest) -> CallResult:
        ctx, ran = self._before(request)
        if self._executes(ctx):
            tool = ctx.tool
            assert tool is not None and ctx.arguments is not None
            try:
                ctx.result = tool.spec.normalize_result(
                    await tool.ainvoke(ctx.arguments, self._tool_context(ctx))
                )
            except Exception as exc:
                ctx.error = _as_tool_error(exc, tool.spec.name)
        return self._finish(ctx, ran)

    def open(self, request: CallRequest) -> OpenCall:
        """Govern ``request`` and hand back the call to execute by the caller, piece by piece.

        For results that arrive as a stream: every guard has passed (or this raised the
        KeelError that stopped the call, recorded as for :meth:`call`). The caller runs the
        target, may ask for more budget as it goes (:meth:`OpenCall.extend`), and must end the
        call exactly once with :meth:`OpenCall.finish` or :meth:`OpenCall.fail`, which record
        it. A replayed or cached outcome, or a shadowed call, must not be executed
        (``OpenCall.executes`` is False): finish it with no result.
        """
        ctx, ran = self._before(request)
        return OpenCall(self, ctx, ran)

    @staticmethod
    def _executes(ctx: CallContext) -> bool:
        """Whether the tool runs: not for a replayed key, not in shadow mode."""
        return ctx.replay is None and not ctx.notes.get("shadow")

    # -- pipeline ------------------------------------------------------------------------------

    def _before(self, request: CallRequest) -> tuple[CallContext, list[Guard]]:
        ctx = CallContext(request, self._clock.monotonic())
        ran: list[Guard] = []
        stage = "start"
        try:
            for guard in self._guards:
                stage = guard.name
                guard.before(ctx)
                ran.append(guard)
                if ctx.replay is not None:
                    break
        except Exception as exc:  # fail closed: any guard failure denies
            error = exc if isinstance(exc, KeelError) else _internal(exc, stage)
            self._deny(ctx, ran, error, stage)
            raise error from (None if error is exc else exc)
        verdict = ctx.verdict
        if verdict is not None and verdict.shadow and ctx.replay is None:
            ctx.notes["shadow"] = True
        return ctx, ran

    def _deny(self, ctx: CallContext, ran: list[Guard], error: KeelError, stage: str) -> None:
        verdict = ctx.verdict
        if verdict is None or not isinstance(error, (PolicyDenied, ApprovalRequired)):
            verdict = Verdict(
                decision="deny",
                rule_id=str(error.context.get("rule_id") or f"{stage}:{error.code}"),
                reason=error.message,
                policy_hash=verdict.policy_hash if verdict else "",
            )
        body = self._body(ctx, verdict)
        body["stage"] = stage
        body["error"] = {"code": error.code, "message": error.message}
        entry = self._entry(ctx, "decision", verdict, body)
        try:
            with self._store.write(locks=self._record_locks) as tx:
                for guard in reversed(ran):
                    if guard in self._needs_abort:
                        guard.abort(ctx, tx)
                record = self._audit.append(tx, entry)
        finally:
            self._done(ctx, ran)
        self._audit.flush()
        if self._observer is not None:
            self._observe(ctx, record, error)
        error.context.setdefault("record_seq", record.seq)
        error.context.setdefault("record_chain", record.chain)
        error.context.setdefault("rule_id", verdict.rule_id)

    def _finish(self, ctx: CallContext, ran: list[Guard]) -> CallResult:
        verdict = ctx.verdict
        assert verdict is not None and ctx.call is not None
        latency_ms = (self._clock.monotonic() - ctx.started) * 1000.0
        body = self._body(ctx, verdict)
        body["latency_ms"] = round(latency_ms, 3)
        replay = ctx.replay
        shadow = bool(ctx.notes.get("shadow"))
        if replay is not None:
            if replay.get("cached"):
                body["cached"] = True
                body["cost"] = {"usd": "0"}
            else:
                body["replayed"] = True
                body["replay_of"] = replay.get("call_id")
            body["outcome_ok"] = replay.get("ok")
            kind = "decision"
        elif shadow:
            body["shadow"] = True
            kind = "decision"
        else:
            kind = "call"
            tool = ctx.tool
            assert tool is not None
            assert ctx.arguments is not None
            if ctx.error is None:
                ctx.cost = tool.actual_cost(ctx.arguments, ctx.result)
                body["cost"] = ctx.cost.to_record()
                result_json = canonical_json(ctx.result)
                ctx.result_json = result_json
                body["outcome_digest"] = self._redactor.digest(result_json)
                body["outcome"] = self._redactor.redact(ctx.result)
            else:
                error = ctx.error
                body["error"] = {
                    "code": getattr(error, "code", "tool_error"),
                    "message": self._redactor.redact(str(error)),
                    "retryable": bool(getattr(error, "retryable", False)),
                }
        entry = self._entry(ctx, kind, verdict, body)
        try:
            with self._store.write(locks=self._record_locks) as tx:
                for guard in reversed(ran):
                    if guard in self._needs_after:
                        guard.after(ctx, tx)
                record = self._audit.append(tx, entry)
        finally:
            self._done(ctx, ran)
        self._audit.flush()
        if self._observer is not None:
            self._observe(ctx, record, ctx.error)
        if replay is not None:
            if not replay.get("ok"):
                raise ToolError(
                    str(replay.get("message", "the recorded call failed")),
                    code=str(replay.get("error", "tool_error")),
                    retryable=False,
                    context={
                        "replayed": True,
                        "record_seq": record.seq,
                        "record_chain": record.chain,
                    },
                )
            return CallResult(
                call_id=ctx.call.call_id,
                tool=ctx.call.target,
                value=replay.get("value"),
                verdict=verdict,
                replayed=not replay.get("cached", False),
                cached=bool(replay.get("cached", False)),
                record_seq=record.seq,
                latency_ms=latency_ms,
                record_chain=record.chain,
            )
        if ctx.error is not None:
            error = ctx.error
            if isinstance(error, KeelError):
                error.context.setdefault("record_seq", record.seq)
                error.context.setdefault("record_chain", record.chain)
            raise error
        return CallResult(
            call_id=ctx.call.call_id,
            tool=ctx.call.target,
            value=None if shadow else ctx.result,
            verdict=verdict,
            shadow=shadow,
            cost=ctx.cost,
            record_seq=record.seq,
            latency_ms=latency_ms,
            record_chain=record.chain,
        )

    def _trace_id(self) -> str | None:
        assert self._observer is not None
        try:
            return self._observer.trace_id()
        except Exception:  # telemetry never costs a call its record
            log.exception("the call observer failed; the record has no trace id")
            return None

    def _observe(self, ctx: CallContext, record: Record, error: BaseException | None) -> None:
        observer = self._observer
        assert observer is not None
        try:
            observer.observe(ctx, record, (self._clock.monotonic() - ctx.started) * 1000.0, error)
        except Exception:  # telemetry never changes a call's outcome
            log.exception("the call observer failed; the call itself is unaffected")

    def _done(self, ctx: CallContext, ran: list[Guard]) -> None:
        for guard in self._needs_done:
            if guard in ran:
                guard.done(ctx)

    # -- records -------------------------------------------------------------------------------

    def _body(self, ctx: CallContext, verdict: Verdict) -> dict[str, Any]:
        principal: Principal | None = ctx.principal
        request = ctx.request
        body: dict[str, Any] = {
            "principal": principal.to_record() if principal else None,
            "verdict": verdict.to_record(),
            "trace_id": request.trace_id,
        }
        if request.trace_id is None and self._observer is not None:
            body["trace_id"] = self._trace_id()
        if ctx.tool is not None:
            body["effect"] = ctx.tool.spec.effect
        if ctx.args_json is not None:
            body["args_digest"] = self._redactor.digest(ctx.args_json)
            body["args"] = self._redactor.redact(ctx.arguments)
        if ctx.idempotency_key is not None:
            body["idempotency_key"] = ctx.idempotency_key
        if request.tainted:
            body["tainted"] = True
        if request.metadata:
            body["metadata"] = dict(request.metadata)
        call = ctx.call
        if call is not None:
            if call.kind == "model":
                body["call_kind"] = "model"
            if call.workflow is not None:
                body["workflow"] = call.workflow
        if ctx.notes:
            body["notes"] = {k: v for k, v in ctx.notes.items() if k != "shadow"} or None
        return body

    def _entry(
        self, ctx: CallContext, kind: str, verdict: Verdict, body: dict[str, Any]
    ) -> AuditEntry:
        principal = ctx.principal
        call = ctx.call
        request = ctx.request
        return AuditEntry(
            kind=kind,  # type: ignore[arg-type]
            ts=self._clock.now(),
            tenant=principal.tenant if principal else None,
            agent=principal.agent_id if principal else None,
            run_id=call.run_id if call else request.run_id,
            step_id=request.step_id,
            tool=call.target if call else _printable(request.tool),
            call_id=call.call_id if call else None,
            decision=verdict.decision,
            rule_id=verdict.rule_id,
            body=body,
        )

    @staticmethod
    def _tool_context(ctx: CallContext) -> ToolContext:
        call = ctx.call
        assert call is not None
        principal = call.principal
        return ToolContext(
            call_id=call.call_id,
            tool=call.target,
            tenant=principal.tenant,
            agent_id=principal.agent_id,
            idempotency_key=ctx.idempotency_key,
            run_id=call.run_id,
            step_id=call.step_id,
            on_behalf_of=principal.on_behalf_of,
        )


def _printable(name: object) -> str | None:
    """A tool name as it may be stored in a record of a refused call (escaped, bounded)."""
    if not isinstance(name, str):
        return None
    return name.encode("unicode_escape").decode("ascii")[:200]


def _internal(exc: Exception, stage: str) -> InternalError:
    return InternalError(
        f"guard {stage!r} failed: {type(exc).__name__}: {exc}; the call was denied (fail closed)",
        context={"stage": stage},
    )


def _as_tool_error(exc: Exception, tool: str) -> KeelError:
    if isinstance(exc, KeelError):
        return exc
    return ToolError(
        f"tool {tool} raised {type(exc).__name__}: {exc}",
        retryable=False,
        context={"tool": tool, "exception": type(exc).__name__},
    )


class OpenCall:
    """A governed call whose target the caller executes (see :meth:`Gateway.open`).

    Not thread-safe: one caller drives it. ``executes`` says whether the target may run;
    ``replay`` holds a recorded or cached outcome when it may not. ``extend`` holds more
    budget, ``finish``/``fail`` record the call (the first of them wins; later ones raise).
    """

    __slots__ = ("_ctx", "_ended", "_gateway", "_ran")

    def __init__(self, gateway: Gateway, ctx: CallContext, ran: list[Guard]) -> None:
        self._gateway = gateway
        self._ctx = ctx
        self._ran = ran
        self._ended = False

    @property
    def executes(self) -> bool:
        return Gateway._executes(self._ctx)

    @property
    def replay(self) -> dict[str, Any] | None:
        return self._ctx.replay

    @property
    def tool(self) -> Tool:
        tool = self._ctx.tool
        assert tool is not None
        return tool

    @property
    def arguments(self) -> dict[str, Any]:
        arguments = self._ctx.arguments
        assert arguments is not None
        return arguments

    @property
    def verdict(self) -> Verdict:
        verdict = self._ctx.verdict
        assert verdict is not None
        return verdict

    @property
    def principal(self) -> Principal:
        principal = self._ctx.principal
        assert principal is not None
        return principal

    @property
    def held_usd(self) -> str | None:
        """The budget held for this call so far (a decimal string), None without caps."""
        held = self._ctx.notes.get("reserved_usd")
        return None if held is None else str(held)

    def tool_context(self) -> ToolContext:
        return Gateway._tool_context(self._ctx)

    def note(self, key: str, value: Any) -> None:
        """Add a fact to the call's audit record (``notes``)."""
        self._ctx.notes[key] = value

    def extend(self, cost: Cost) -> None:
        """Hold ``cost`` more for this call on every cap, or raise BudgetExceeded (nothing
        held). The call goes on; the caller decides to stop it."""
        self._check_open()
        for guard in self._ran:
            if type(guard).extend is not Guard.extend:
                guard.extend(self._ctx, cost)

    def recheck(self) -> None:
        """Run again the checks that can change while a call runs (authentication, kill
        switches); raise the KeelError of the first that now refuses. The call is not ended."""
        self._check_open()
        for guard in self._ran:
            if type(guard).rechecks:
                guard.before(self._ctx)

    def finish(self, result: Any = None) -> CallResult:
        """Record the call with ``result`` (the target's answer; ignored when the call did not
        execute) and return its CallResult, as :meth:`Gateway.call` would."""
        self._check_open()
        self._ended = True
        ctx = self._ctx
        if Gateway._executes(ctx):
            assert ctx.tool is not None
            try:
                ctx.result = ctx.tool.spec.normalize_result(result)
            except Exception as exc:
                ctx.error = _as_tool_error(exc, ctx.tool.spec.name)
        return self._gateway._finish(ctx, self._ran)

    def fail(self, error: BaseException) -> NoReturn:
        """Record the call as failed with ``error`` and raise it (as a KeelError)."""
        self._check_open()
        self._ended = True
        ctx = self._ctx
        assert ctx.tool is not None
        ctx.error = (
            _as_tool_error(error, ctx.tool.spec.name)
            if isinstance(error, Exception)
            else (ToolError(f"call {ctx.tool.spec.name} was interrupted", retryable=False))
        )
        self._gateway._finish(ctx, self._ran)
        raise InternalError("a failed call was recorded as a success")  # pragma: no cover

    @property
    def ended(self) -> bool:
        return self._ended

    def _check_open(self) -> None:
        if self._ended:
            raise UsageError("this call has already been recorded")
