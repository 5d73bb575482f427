"""Durable workflows: runs that replay their journal, wait for people and timers, and survive
crashes without repeating an effect.

A workflow is an ``async`` function ``(run: Run, input) -> result``. Each governed call it makes
through ``run.tool`` / ``run.model`` is a *step* with a deterministic id (its position in the
workflow's sequence of calls). Resuming a run re-executes the function from the top: steps with a
recorded outcome return it without executing, and the first step without one executes for real.

Crash safety, step by step:

1. ``started`` is committed to the journal before the step runs;
2. the gateway executes it with the idempotency key ``<run_id>/<step_id>`` (the tool receives it)
   and commits the audit record and the idempotency outcome together;
3. ``succeeded`` / ``failed`` is committed to the journal.

A crash after 1 leaves a ``started`` step: on resume the same call is made again with the same
key. If 2 committed, the gateway replays the recorded outcome (no second effect). If it did not,
a read runs again (harmless), a tool that honours keys dedupes, and a tool that does neither finds
its durable in-flight claim: Keel asks the tool's reconcile hook whether the effect happened, and
without one parks the run for a person — it never blindly repeats an irreversible call.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from keel.canonical import canonical_json, check_limits, digest, parse_json
from keel.core import Effect, new_id
from keel.errors import (
    ApprovalRequired,
    IdempotencyInFlight,
    InternalError,
    KeelError,
    KillSwitchEngaged,
    ModelError,
    RateLimited,
    StoreError,
    UsageError,
)
from keel.gateway import CallRequest
from keel.runtime.journal import JournalEntry, RunRecord, RunStore
from keel.runtime.models import ModelOutcome
from keel.runtime.retry import RetryPolicy
from keel.store import RUNS_CHANNEL
from keel.tools import ToolContext

if TYPE_CHECKING:
    from keel.app import Agent, App

__all__ = [
    "NonDeterminism",
    "Run",
    "Runtime",
    "StepFailed",
    "Worker",
    "WorkflowDef",
]

log = logging.getLogger("keel.runtime")

MAX_STATE_BYTES = 10 * 1024


class NonDeterminism(KeelError):
    """The workflow asked for a different step than its journal holds at that position."""

    code = "nondeterminism"


class StepFailed(KeelError):
    """A step failed (now, or in an earlier execution of this run); ``context`` has the error."""

    code = "step_failed"


class _Suspend(Exception):  # control flow: never escapes the runtime
    def __init__(self, reason: str, wake_at: _dt.datetime | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wake_at = wake_at


class _Stop(Exception):  # control flow: the run ends in ``status``
    def __init__(self, status: str, reason: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.error = error


WorkflowFn = Callable[["Run", Any], Awaitable[Any]]


@dataclass(frozen=True)
class WorkflowDef:
    """A registered workflow and the identity its runs act as."""

    name: str
    fn: WorkflowFn
    agent: str
    scopes: tuple[str, ...]
    roles: tuple[str, ...] = ()
    max_step_attempts: int = 3
    description: str = ""


@dataclass
class _Execution:
    record: RunRecord
    steps: dict[str, JournalEntry]
    agent: Agent
    position: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    retries: int = 0


class Run:
    """What a workflow sees: governed steps, durable sleep, escalation and a small state.

    Not thread-safe: one Run per execution of one run, used by its workflow coroutine.
    """

    def __init__(self, runtime: Runtime, execution: _Execution, definition: WorkflowDef) -> None:
        self._rt = runtime
        self._ex = execution
        self._def = definition

    @property
    def run_id(self) -> str:
        return self._ex.record.run_id

    @property
    def tenant(self) -> str:
        return self._ex.record.tenant

    @property
    def workflow(self) -> str:
        return self._def.name

    @property
    def state(self) -> dict[str, Any]:
        """A small JSON goal state (≤ 10 KB), saved when the run waits or ends."""
        return self._ex.state

    @property
    def replaying(self) -> bool:
        """True while steps are being answered from the journal."""
        return str(self._ex.position) in self._ex.steps

    # -- steps -----------------------------------------------------------------------------------

    async def tool(
        self, name: str, arguments: Mapping[str, Any] | None = None, *, tainted: bool = False
    ) -> Any:
        """Call a tool through the gateway, as this run's agent; returns the tool's result."""
        args = dict(arguments or {})

        async def execute(step_id: str, approval_id: str | None) -> Any:
            request = CallRequest(
                tool=name,
                arguments=args,
                token=self._ex.agent.token,
                run_id=self.run_id,
                step_id=step_id,
                workflow=self.workflow,
                tainted=tainted,
                approval_id=approval_id,
            )
            result = await asyncio.to_thread(self._rt.app.gateway.call, request)
            return result.value

        with self._step_span("tool", name):
            return await self._step("tool", name, args, execute)

    async def model(
        self,
        request: Mapping[str, Any],
        *,
        tier: str | None = None,
        task_class: str | None = None,
        risk: Effect | None = None,
        sensitivity: str | None = None,
        tainted: bool = False,
    ) -> dict[str, Any]:
        """A routed, governed, metered model call; returns the response in dict form."""
        data = dict(request)

        async def execute(step_id: str, approval_id: str | None) -> Any:
            caller = self._rt.app.model_caller()

            def complete() -> ModelOutcome:
                return caller.complete(
                    lambda: self._ex.agent.token,
                    data,
                    tier=tier,
                    task_class=task_class,
                    risk=risk,
                    sensitivity=sensitivity,
                    run_id=self.run_id,
                    step_id=step_id,
                    workflow=self.workflow,
                    tainted=tainted,
                )

            outcome = await asyncio.to_thread(complete)
            return outcome.response.to_dict()

        target = str(data.get("model") or tier or task_class or "model")
        with self._step_span("model", target):
            value: dict[str, Any] = await self._step("model", target, data, execute)
        return value

    async def sleep(self, duration: float | _dt.timedelta) -> None:
        """Wait durably: the run is suspended, costs nothing and survives restarts."""
        seconds = duration.total_seconds() if isinstance(duration, _dt.timedelta) else duration
        if seconds < 0:
            raise UsageError("run.sleep needs a duration of zero or more")
        step_id, entry = self._next("sleep", "sleep", {"seconds": seconds})
        now = self._rt.clock.now()
        if entry is None:
            wake = now + _dt.timedelta(seconds=seconds)
            self._rt.runs.begin_step(
                self.run_id,
                step_id,
                int(step_id),
                "sleep",
                "sleep",
                _digest("sleep", "sleep", {"seconds": seconds}),
            )
            self._rt.runs.finish_step(self.run_id, step_id, "sleeping", wake_at=wake)
            raise _Suspend("timer", wake)
        if entry.status == "succeeded":
            return
        assert entry.wake_at is not None
        if now < entry.wake_at:
            raise _Suspend("timer", entry.wake_at)
        self._rt.runs.finish_step(self.run_id, step_id, "succeeded")

    def escalate(self, reason: str) -> NoReturn:
        """Hand the run to a person: it ends ``escalated`` with the reason, recorded."""
        raise _Stop("escalated", reason)

    def phase(self, name: str) -> AbstractContextManager[object]:
        """``with run.phase("plan"):`` — a named phase of an agent loop (plan, retrieve, decide,
        act, verify, respond): its steps nest under a span of that name when tracing is on."""
        return self._rt.app.telemetry.phase_span(name, run_id=self.run_id)

    def _step_span(self, kind: str, target: str) -> AbstractContextManager[object]:
        """The next step's span (none for a step answered from the journal) and log ids."""
        step_id = str(self._ex.position)
        entry = self._ex.steps.get(step_id)
        return self._rt.app.telemetry.step_span(
            run_id=self.run_id,
            step_id=step_id,
            kind=kind,
            target=target,
            replayed=entry is not None and entry.status in ("succeeded", "failed"),
        )

    # -- the step protocol -----------------------------------------------------------------------

    def _next(
        self, kind: str, target: str, arguments: Mapping[str, Any]
    ) -> tuple[str, JournalEntry | None]:
        position = self._ex.position
        self._ex.position += 1
        step_id = str(position)
        entry = self._ex.steps.get(step_id)
        if entry is not None:
            wanted = _digest(kind, target, arguments)
            if (entry.kind, entry.target, entry.call_digest) != (kind, target, wanted):
                raise NonDeterminism(
                    f"step {step_id} of run {self.run_id} was {entry.kind} {entry.target!r} "
                    f"when it ran, but the workflow now asks for {kind} {target!r}"
                    + (" with different arguments" if entry.target == target else "")
                    + "; the code changed under a running workflow",
                    context={"run_id": self.run_id, "step_id": step_id},
                )
        return step_id, entry

    async def _step(
        self,
        kind: str,
        target: str,
        arguments: dict[str, Any],
        execute: Callable[[str, str | None], Awaitable[Any]],
    ) -> Any:
        step_id, entry = self._next(kind, target, arguments)
        runs = self._rt.runs
        approval_id: str | None = None
        if entry is not None:
            if entry.status == "succeeded":
                return self._rt.outcome(entry.outcome_ref)
            if entry.status == "failed":
                raise _replayed_error(entry.error or {})
            if entry.status == "waiting_approval":
                approval_id = self._approval_state(step_id, entry)
        else:
            runs.begin_step(
                self.run_id, step_id, int(step_id), kind, target, _digest(kind, target, arguments)
            )
        attempts = self._def.max_step_attempts
        for attempt in range(1, attempts + 1):
            try:
                value = await execute(step_id, approval_id)
            except ApprovalRequired as exc:
                approval = exc.context.get("approval_id")
                if not approval:
                    self._fail(step_id, exc)
                    raise _Stop("escalated", exc.message, exc.to_dict()) from None
                runs.finish_step(self.run_id, step_id, "waiting_approval", approval_id=approval)
                raise _Suspend("approval") from None
            except KillSwitchEngaged as exc:
                self._fail(step_id, exc)
                raise _Stop("killed", exc.message, exc.to_dict()) from None
            except IdempotencyInFlight as exc:
                return await self._reconcile(step_id, kind, target, arguments, exc, execute)
            except KeelError as exc:
                if attempt < attempts and self._should_retry(kind, target, exc, attempt):
                    delay = self._rt.retry_policy.delay_for(exc, attempt, self._rt.rng)
                    self._ex.retries += 1
                    await asyncio.sleep(min(delay, self._rt.max_inline_delay))
                    continue
                self._fail(step_id, exc)
                raise
            ref = self._rt.store_outcome(value, sensitive=self._sensitive(kind, target))
            runs.finish_step(self.run_id, step_id, "succeeded", outcome_ref=ref)
            return _as_replayed(value)
        raise InternalError("unreachable: step attempts exhausted without a result")

    def _should_retry(self, kind: str, target: str, exc: KeelError, attempt: int) -> bool:
        """Model calls change nothing, so any model failure may be retried (a malformed answer
        is often a sampling accident); tools follow the retry policy's rules for their effect."""
        if kind == "model":
            return isinstance(exc, (ModelError, RateLimited)) or exc.retryable
        spec = self._rt.app.tools.get(target).spec
        return self._rt.retry_policy.should_retry(exc, spec.effect, spec.idempotent, attempt)

    def _sensitive(self, kind: str, target: str) -> bool:
        return kind == "tool" and self._rt.app.tools.get(target).spec.sensitive

    def _approval_state(self, step_id: str, entry: JournalEntry) -> str:
        """The approval a waiting step may now use, or suspend / fail as its request says."""
        approvals = self._rt.approvals
        if approvals is None or entry.approval_id is None:
            raise _Stop("escalated", "the step waits for an approval this Keel cannot check")
        request = approvals.get(entry.approval_id)
        status = str(request.status)
        if status in ("pending", "escalated"):
            raise _Suspend("approval")
        if status in ("approved", "executing", "used"):
            # executing/used: a previous execution got this far; the gateway replays a recorded
            # outcome by its idempotency key, or refuses a second use of the approval.
            return entry.approval_id
        denial = getattr(request, "denial", None)
        why = getattr(denial, "note", None) or status
        failure = StepFailed(
            f"step {step_id} ({entry.target}) was not approved: {why}",
            code=f"approval_{status}",
            context={"run_id": self.run_id, "step_id": step_id, "approval_id": entry.approval_id},
        )
        self._fail(step_id, failure)
        raise failure

    async def _reconcile(
        self,
        step_id: str,
        kind: str,
        target: str,
        arguments: dict[str, Any],
        exc: IdempotencyInFlight,
        execute: Callable[[str, str | None], Awaitable[Any]],
    ) -> Any:
        """The step was started by an execution that died: find out what happened."""
        tool = self._rt.app.tools.get(target) if kind == "tool" else None
        hook = tool.spec.reconcile if tool is not None else None
        if hook is None:
            error = {
                "code": "outcome_unknown",
                "message": f"step {step_id} ({target}) may have run before a crash and the tool "
                "neither honours idempotency keys nor has a reconcile hook; a person must check",
            }
            self._rt.runs.finish_step(self.run_id, step_id, "failed", error=error)
            raise _Stop("parked", error["message"], error)
        context = ToolContext(
            call_id=new_id(),
            tool=target,
            tenant=self.tenant,
            agent_id=self._def.agent,
            idempotency_key=f"{self.run_id}/{step_id}",
            run_id=self.run_id,
            step_id=step_id,
        )
        found = await asyncio.to_thread(hook, arguments, context)
        self._rt.record_reconcile(self._ex.record, step_id, target, found is not None)
        if found is not None:
            ref = self._rt.store_outcome(found)
            self._rt.runs.finish_step(self.run_id, step_id, "succeeded", outcome_ref=ref)
            return _as_replayed(found)
        # The system of record says it never happened: release the stale claim, run it now.
        self._rt.app.idempotency.release_stale(self.tenant, f"{self.run_id}/{step_id}")
        value = await execute(step_id, None)
        self._rt.runs.finish_step(
            self.run_id, step_id, "succeeded", outcome_ref=self._rt.store_outcome(value)
        )
        return _as_replayed(value)

    def _fail(self, step_id: str, exc: KeelError) -> None:
        error = exc.to_dict()
        error["class"] = type(exc).__name__
        self._rt.runs.finish_step(self.run_id, step_id, "failed", error=error)


def _as_replayed(value: Any) -> Any:
    """Exactly what a replay returns (the canonical JSON form), so code that formats a step's
    value cannot behave differently the second time."""
    return parse_json(canonical_json(value), max_bytes=2**31, max_depth=512)


def _replayed_error(error: Mapping[str, Any]) -> KeelError:
    """The failure a step recorded, raised again exactly as the workflow first saw it: same
    class (when it is one of Keel's), code, message and context — so replay cannot diverge."""
    import keel.errors as errors_module

    cls = getattr(errors_module, str(error.get("class", "")), None)
    if cls is None:
        cls = StepFailed if error.get("class") == "StepFailed" else None
    if not (isinstance(cls, type) and issubclass(cls, KeelError)):
        cls = StepFailed
    message = str(error.get("message", "the step failed"))
    kwargs: dict[str, Any] = {
        "code": error.get("error") or error.get("code"),
        "retryable": False,
        "context": dict(error.get("context") or {}),
    }
    if cls is errors_module.RateLimited:
        return errors_module.RateLimited(message, retry_after=0.0, **kwargs)
    try:
        return cls(message, **kwargs)
    except TypeError:
        return StepFailed(message, **kwargs)


def _digest(kind: str, target: str, arguments: Mapping[str, Any]) -> str:
    return digest({"kind": kind, "target": target, "arguments": dict(arguments)})


class Runtime:
    """Submits, executes and inspects runs of the App's workflows. Thread-safe."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.clock = app.clock
        self.runs = RunStore(app.store, app.audit, app.clock)
        self.approvals: Any = getattr(app, "approvals", None)
        self.retry_policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=2.0)
        #: Longer retry waits would hold the worker; a later issue makes them durable timers.
        self.max_inline_delay = 2.0
        self.rng = random.Random()

    # -- outcomes (content-addressed payloads when available) ------------------------------------

    def store_outcome(self, value: Any, *, sensitive: bool = False) -> str:
        """Store a step's outcome once, content-addressed; encrypted when ``sensitive``."""
        return str(self.app.payloads.put(value, sensitive=sensitive))

    def outcome(self, ref: str | None) -> Any:
        return None if ref is None else self.app.payloads.get(ref)

    # -- submitting and inspecting ---------------------------------------------------------------

    def submit(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        on_behalf_of: str | None = None,
        tenant: str | None = None,
        deadline: _dt.datetime | None = None,
    ) -> RunRecord:
        definition = self.app.workflow_def(workflow)
        check_limits(input, what="run input")
        return self.runs.create(
            workflow,
            tenant=tenant or self.app.workflow_tenant(workflow),
            agent=definition.agent,
            input=input,
            on_behalf_of=on_behalf_of,
            run_id=run_id,
            deadline=deadline,
        )

    def get(self, run_id: str) -> RunRecord:
        return self.runs.get(run_id)

    def steps(self, run_id: str) -> list[JournalEntry]:
        return sorted(self.runs.steps(run_id).values(), key=lambda e: e.position)

    def cancel(self, run_id: str, *, reason: str) -> None:
        record = self.runs.get(run_id)
        if record.status in ("completed", "failed", "cancelled", "killed", "escalated"):
            raise UsageError(f"run {run_id} already ended ({record.status})")
        self.runs.transition(run_id, "cancelled", reason=reason)

    def retry(self, run_id: str, *, reason: str = "re-driven by an operator") -> RunRecord:
        """Re-drive a failed, parked or escalated run: failed steps run again through the full
        guard chain (policy, budget and kill switch are checked anew); completed steps replay."""
        record = self.runs.get(run_id)
        if record.status not in ("failed", "parked", "escalated", "killed"):
            raise UsageError(f"run {run_id} is {record.status}; only ended runs can be retried")
        failed = [s.step_id for s in self.steps(run_id) if s.status == "failed"]
        with self.app.store.write() as tx:
            for step_id in failed:
                self.app.idempotency.forget_failed(tx, record.tenant, f"{run_id}/{step_id}")
            tx.execute("DELETE FROM journal WHERE run_id = ? AND status = 'failed'", (run_id,))
        self.runs.transition(run_id, "pending", reason=reason)
        return self.runs.get(run_id)

    def worker(self, *, worker_id: str | None = None, lease: float = 30.0) -> Worker:
        return Worker(self, worker_id=worker_id, lease=_dt.timedelta(seconds=lease))

    def record_reconcile(self, record: RunRecord, step_id: str, tool: str, found: bool) -> None:
        from keel.audit import AuditEntry

        self.app.audit.record(
            AuditEntry(
                kind="control",
                tenant=record.tenant,
                agent=record.agent,
                run_id=record.run_id,
                step_id=step_id,
                tool=tool,
                decision="reconciled",
                rule_id="run.reconcile",
                body={
                    "action": "run.reconcile",
                    "found_effect": found,
                    "workflow": record.workflow,
                },
            )
        )

    # -- executing ------------------------------------------------------------------------------

    def execute(self, record: RunRecord, owner: str) -> str:
        """Run (or resume) one claimed run until it ends or waits; returns its new status."""
        telemetry = self.app.telemetry
        with telemetry.run_span(
            run_id=record.run_id, workflow=record.workflow, tenant=record.tenant, agent=record.agent
        ) as span:
            status = self._execute(record, owner)
            telemetry.end_run(span, status)
            return status

    def _execute(self, record: RunRecord, owner: str) -> str:
        definition = self.app.workflow_def(record.workflow)
        if record.deadline is not None and self.clock.now() > record.deadline:
            self.runs.transition(
                record.run_id,
                "failed",
                owner=owner,
                reason="run deadline passed",
                error={"code": "deadline_exceeded", "message": "the run's deadline passed"},
            )
            return "failed"
        agent = self.app.agent(
            definition.agent,
            tenant=record.tenant,
            scopes=definition.scopes,
            roles=definition.roles,
            on_behalf_of=record.on_behalf_of,
            run_id=record.run_id,
        )
        execution = _Execution(
            record=record,
            steps=self.runs.steps(record.run_id),
            agent=agent,
            state=dict(record.state or {}),
        )
        run = Run(self, execution, definition)
        try:
            result = asyncio.run(_call(definition.fn, run, record.input))
        except _Suspend as suspend:
            self.runs.transition(
                record.run_id,
                "waiting",
                owner=owner,
                wake_at=suspend.wake_at,
                state=_small_state(run.state),
                reason=f"waiting for {suspend.reason}",
            )
            return "waiting"
        except _Stop as stop:
            self.runs.transition(
                record.run_id,
                stop.status,  # type: ignore[arg-type]
                owner=owner,
                error=stop.error or {"message": stop.reason},
                state=_small_state(run.state),
                reason=stop.reason,
            )
            return stop.status
        except NonDeterminism as exc:
            self.runs.transition(
                record.run_id, "parked", owner=owner, error=exc.to_dict(), reason=exc.message
            )
            return "parked"
        except KeelError as exc:
            self.runs.transition(
                record.run_id,
                "failed",
                owner=owner,
                error=exc.to_dict(),
                state=_small_state(run.state),
                reason=exc.message,
            )
            return "failed"
        except Exception as exc:  # a bug in the workflow code: the run fails with context
            log.exception("workflow %s run %s raised", record.workflow, record.run_id)
            self.runs.transition(
                record.run_id,
                "failed",
                owner=owner,
                error={"code": "workflow_error", "message": f"{type(exc).__name__}: {exc}"},
                reason="the workflow raised",
            )
            return "failed"
        try:
            check_limits(result, what="run result")
        except KeelError as exc:
            self.runs.transition(record.run_id, "failed", owner=owner, error=exc.to_dict())
            return "failed"
        self.runs.transition(
            record.run_id, "completed", owner=owner, result=result, state=_small_state(run.state)
        )
        return "completed"

    def wake_decided(self, since: _dt.datetime | None = None) -> int:
        """Make runs whose approvals were decided (since ``since``) runnable again."""
        if self.approvals is not None and hasattr(self.approvals, "expire_due"):
            self.approvals.expire_due(self.clock.now())
        waiting = self.runs.waiting_on_approvals(since)
        self.runs.wake([run_id for run_id, _ in waiting])
        return len(waiting)


async def _call(fn: WorkflowFn, run: Run, input: Any) -> Any:
    result = fn(run, input)
    if inspect.isawaitable(result):
        return await result
    return result


def _small_state(state: dict[str, Any]) -> dict[str, Any]:
    if not state:
        return state
    check_limits(state, max_bytes=MAX_STATE_BYTES, what="run state")
    return state


class Worker:
    """Claims runnable runs with a lease and executes them, one at a time.

    Several workers (threads or processes) may share one store: a run is leased to one worker at
    a time; a worker that dies stops renewing its lease and another picks the run up once it
    expires. Heartbeats renew the lease every third of its length while a run executes.
    """

    #: How often (seconds, of the clock's monotonic time) a worker looks for runs whose
    #: approvals were decided. The look scans waiting runs, so it is not done on every claim.
    WAKE_INTERVAL = 0.25
    WAKE_MARGIN = _dt.timedelta(seconds=60)

    def __init__(self, runtime: Runtime, *, worker_id: str | None, lease: _dt.timedelta) -> None:
        self.runtime = runtime
        self.worker_id = worker_id or new_id("worker_")
        self.lease = lease
        self.stop = threading.Event()
        self._woke_at = float("-inf")
        self._decided_since: _dt.datetime | None = None
        #: Seconds between runs of the reconciliation job while serving (0: never).
        self.reconcile_every = 0.0
        self._reconciled_at = float("-inf")
        self._reconciled_since: _dt.datetime | None = None

    def _wake(self) -> int:
        """Wake runs whose approvals were decided since this worker last looked (with a margin
        for clocks of other processes); the first look covers everything."""
        since = self._decided_since
        self._decided_since = self.runtime.clock.now() - self.WAKE_MARGIN
        return self.runtime.wake_decided(since)

    def run_once(self) -> str | None:
        """Claim and execute one runnable run; returns its new status, or None if idle."""
        now = self.runtime.clock.monotonic()
        if now - self._woke_at >= self.WAKE_INTERVAL:
            self._woke_at = now
            self._wake()
        record = self.runtime.runs.claim(self.worker_id, self.lease)
        if record is None:  # idle: look for decided approvals now, not only every interval
            if self._wake():
                record = self.runtime.runs.claim(self.worker_id, self.lease)
            if record is None:
                return None
        done = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(record.run_id, done), daemon=True, name="keel-heartbeat"
        )
        beat.start()
        try:
            return self.runtime.execute(record, self.worker_id)
        finally:
            done.set()
            beat.join()

    def _heartbeat(self, run_id: str, done: threading.Event) -> None:
        interval = self.lease.total_seconds() / 3
        while not done.wait(interval):
            if not self.runtime.runs.heartbeat(run_id, self.worker_id, self.lease):
                return

    def _maybe_reconcile(self) -> None:
        if self.reconcile_every <= 0:
            return
        now = self.runtime.clock.monotonic()
        if now - self._reconciled_at < self.reconcile_every:
            return
        from keel.runtime.reconcile import reconcile

        self._reconciled_at = now
        started = self.runtime.clock.now()
        report = reconcile(self.runtime.app, since=self._reconciled_since)
        self._reconciled_since = started - self.WAKE_MARGIN
        if not report.ok:
            log.warning("reconciliation found drift: %s", report.to_dict())

    def drain(self, *, max_runs: int | None = None) -> dict[str, int]:
        """Execute runnable runs until none is left (or ``max_runs``); counts by outcome."""
        outcomes: dict[str, int] = {}
        executed = 0
        while not self.stop.is_set() and (max_runs is None or executed < max_runs):
            status = self.run_once()
            if status is None:
                break
            outcomes[status] = outcomes.get(status, 0) + 1
            executed += 1
        return outcomes

    #: Longest idle sleep when the store delivers wake-ups (PostgreSQL ``LISTEN``): a worker
    #: still looks this often, for timers, expired leases and decided approvals.
    IDLE_MAX = 5.0

    def serve(self, *, poll: float = 0.2, idle_exit: float | None = None) -> None:
        """Run until ``stop`` is set (or idle for ``idle_exit`` seconds).

        Idle, the worker sleeps until the store signals a runnable run (``RUNS_CHANNEL``), the
        next timer or lease expiry is due, or ``stop`` is set. On PostgreSQL the signal comes
        from any process (``LISTEN/NOTIFY``), so an idle worker sleeps up to ``IDLE_MAX``; on
        SQLite only from this process, so it also looks every ``poll`` seconds.
        """
        store = self.runtime.app.store
        listens = store.dialect == "postgresql"
        clock = self.runtime.clock
        idle_since: float | None = None
        backoff = 0.1
        while not self.stop.is_set():
            try:
                self._maybe_reconcile()
                seen = store.generation(RUNS_CHANNEL)  # before the claim: none falls between
                ran = self.run_once()
            except StoreError as exc:
                if not exc.retryable:
                    raise
                # The database is restarting or unreachable: a run this worker held keeps its
                # lease until it lapses, then any worker resumes it from its journal.
                log.warning("worker %s: store unavailable (%s); retrying", self.worker_id, exc)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if ran is not None:
                idle_since = None
                continue
            now = clock.monotonic()
            idle_since = now if idle_since is None else idle_since
            if idle_exit is not None and now - idle_since >= idle_exit:
                return
            sleep = self.IDLE_MAX if listens else poll
            due = self.runtime.runs.next_due()
            if due is not None:
                sleep = min(sleep, due + 0.01)
            if self.reconcile_every > 0:
                sleep = min(sleep, self.reconcile_every)
            if idle_exit is not None:
                sleep = min(sleep, max(0.0, idle_exit - (now - idle_since)))
            deadline = clock.monotonic() + max(sleep, 0.01)
            # In slices, to notice ``stop`` soon; the slices wait on memory, not the database.
            while not self.stop.is_set():
                left = deadline - clock.monotonic()
                if left <= 0 or store.wait(RUNS_CHANNEL, min(left, 0.25), since=seen):
                    break
