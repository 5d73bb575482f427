"""Runs and their journals in the store: states, leases, steps and their outcomes.

A run moves ``pending → running → waiting (approval | timer) → completed | failed | escalated |
cancelled | killed | parked``. ``parked`` means a person must look (an unknown outcome that cannot
be reconciled, or code that no longer matches its journal). Every transition is appended to the
audit log in the same transaction.

The journal holds one row per step: ``started`` is written (and committed) before an effectful
step runs, so a crash leaves proof that it may have happened; ``succeeded`` / ``failed`` with the
outcome after; ``waiting_approval`` / ``sleeping`` while the run waits.

Concurrency: run rows are changed in keyed store transactions (see ``keel.store.base``), so
workers on many machines claim and finish runs side by side on PostgreSQL. A claim picks its row
with ``FOR UPDATE SKIP LOCKED`` (two workers never wait for, or take, the same run); a transition
reads the row ``FOR UPDATE`` before checking the lease owner. Whatever makes a run runnable
notifies ``RUNS_CHANNEL`` so that idle workers wake at once instead of polling.

Leases and wake-up times are judged by one clock for every process: on PostgreSQL the database
server's (``clock_timestamp()``), so a worker whose machine clock is wrong can neither steal a
live run, nor keep a dead one, nor delay a timer; on SQLite (one machine) the App's clock. An
App given a clock that is not a ``SystemClock`` (a test's ``FrozenClock``) always uses it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from keel.audit import AuditEntry, AuditLog
from keel.canonical import canonical_json, parse_json
from keel.core import Clock, SystemClock, new_id
from keel.errors import InvalidRequestError
from keel.store import RUNS_CHANNEL, Store, Transaction

__all__ = [
    "FINAL_STATES",
    "JournalEntry",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "StepStatus",
]

RunStatus = Literal[
    "pending",
    "running",
    "waiting",
    "completed",
    "failed",
    "escalated",
    "cancelled",
    "killed",
    "parked",
]
StepStatus = Literal["started", "succeeded", "failed", "waiting_approval", "sleeping"]
FINAL_STATES: Final = frozenset({"completed", "failed", "escalated", "cancelled", "killed"})

_RUN_COLUMNS = (
    "run_id, workflow, tenant, agent, on_behalf_of, status, input, state, result, error, "
    "wake_at, deadline, lease_owner, lease_expires, attempts, parent_run, created_at, updated_at"
)
_STEP_COLUMNS = (
    "run_id, step_id, position, kind, target, call_digest, status, outcome_ref, error, "
    "approval_id, wake_at, started_at, finished_at"
)


def _ts(value: _dt.datetime) -> str:
    return value.astimezone(_dt.UTC).isoformat(timespec="microseconds")


def _parse_ts(value: str | None) -> _dt.datetime | None:
    return None if value is None else _dt.datetime.fromisoformat(value)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    workflow: str
    tenant: str
    agent: str
    on_behalf_of: str | None
    status: RunStatus
    input: Any
    state: Any
    result: Any
    error: dict[str, Any] | None
    wake_at: _dt.datetime | None
    deadline: _dt.datetime | None
    lease_owner: str | None
    lease_expires: _dt.datetime | None
    attempts: int
    parent_run: str | None
    created_at: _dt.datetime
    updated_at: _dt.datetime

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> RunRecord:
        (
            run_id,
            workflow,
            tenant,
            agent,
            obo,
            status,
            input_,
            state,
            result,
            error,
            wake_at,
            deadline,
            owner,
            lease,
            attempts,
            parent,
            created,
            updated,
        ) = row
        return cls(
            run_id=run_id,
            workflow=workflow,
            tenant=tenant,
            agent=agent,
            on_behalf_of=obo,
            status=status,
            input=parse_json(input_, what="run input"),
            state=None if state is None else parse_json(state, what="run state"),
            result=None if result is None else parse_json(result, what="run result"),
            error=None if error is None else parse_json(error, what="run error"),
            wake_at=_parse_ts(wake_at),
            deadline=_parse_ts(deadline),
            lease_owner=owner,
            lease_expires=_parse_ts(lease),
            attempts=int(attempts),
            parent_run=parent,
            created_at=_dt.datetime.fromisoformat(created),
            updated_at=_dt.datetime.fromisoformat(updated),
        )

    def cursor(self) -> tuple[str, str]:
        """Where a page of :meth:`RunStore.find` that ends with this run continues."""
        return _ts(self.created_at), self.run_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "tenant": self.tenant,
            "agent": self.agent,
            "on_behalf_of": self.on_behalf_of,
            "status": self.status,
            "input": self.input,
            "state": self.state,
            "result": self.result,
            "error": self.error,
            "wake_at": None if self.wake_at is None else self.wake_at.isoformat(),
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class JournalEntry:
    run_id: str
    step_id: str
    position: int
    kind: str
    target: str
    call_digest: str
    status: StepStatus
    outcome_ref: str | None
    error: dict[str, Any] | None
    approval_id: str | None
    wake_at: _dt.datetime | None
    started_at: _dt.datetime
    finished_at: _dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary of the step, as surfaces show it (no outcome, only its status)."""
        return {
            "step": self.step_id,
            "kind": self.kind,
            "target": self.target,
            "status": self.status,
            "approval_id": self.approval_id,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
        }

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JournalEntry:
        (
            run_id,
            step_id,
            position,
            kind,
            target,
            digest,
            status,
            ref,
            error,
            approval,
            wake_at,
            started,
            finished,
        ) = row
        return cls(
            run_id=run_id,
            step_id=step_id,
            position=int(position),
            kind=kind,
            target=target,
            call_digest=digest,
            status=status,
            outcome_ref=ref,
            error=None if error is None else parse_json(error, what="step error"),
            approval_id=approval,
            wake_at=_parse_ts(wake_at),
            started_at=_dt.datetime.fromisoformat(started),
            finished_at=_parse_ts(finished),
        )


class RunStore:
    """Run rows and journals. Thread-safe; every method is one short transaction."""

    def __init__(self, store: Store, audit: AuditLog, clock: Clock) -> None:
        self.store = store
        self.audit = audit
        self.clock = clock
        pg = store.dialect == "postgresql"
        self._for_update = " FOR UPDATE" if pg else ""
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if pg else ""
        self._db_time = pg and isinstance(clock, SystemClock)

    def _lease_now(self, tx: Transaction) -> _dt.datetime:
        """Now, by the clock leases are judged by (see the module docstring)."""
        if self._db_time:
            row = tx.fetchone("SELECT clock_timestamp()")
            if row is not None and isinstance(row[0], _dt.datetime):
                return row[0]
        return self.clock.now()

    # -- runs ------------------------------------------------------------------------------------

    def create(
        self,
        workflow: str,
        *,
        tenant: str,
        agent: str,
        input: Any,
        on_behalf_of: str | None = None,
        run_id: str | None = None,
        deadline: _dt.datetime | None = None,
        parent_run: str | None = None,
    ) -> RunRecord:
        run_id = run_id or new_id("run_")
        now = _ts(self.clock.now())
        with self.store.write(locks=(f"run:{run_id}",)) as tx:
            if tx.fetchone("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)) is not None:
                raise InvalidRequestError(
                    f"a run with id {run_id!r} already exists", code="run_exists"
                )
            tx.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, 'pending', ?, NULL, NULL, NULL, NULL, ?, NULL, NULL, 0, ?, ?, ?)",
                (
                    run_id,
                    workflow,
                    tenant,
                    agent,
                    on_behalf_of,
                    canonical_json(input),
                    None if deadline is None else _ts(deadline),
                    parent_run,
                    now,
                    now,
                ),
            )
            self._audit(tx, run_id, workflow, tenant, agent, "submitted", None, "pending", {})
            tx.notify(RUNS_CHANNEL)
        return self.get(run_id)

    def get(self, run_id: str) -> RunRecord:
        row = self.store.read_one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        if row is None:
            raise InvalidRequestError(f"no run {run_id!r}", code="unknown_run")
        return RunRecord.from_row(row)

    def find(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        tenant: str | None = None,
        limit: int = 100,
        since: _dt.datetime | None = None,
        until: _dt.datetime | None = None,
        before: tuple[str, str] | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first: of one status, workflow and tenant if given, created in
        ``[since, until)``; ``before`` = ``(created_at, run_id)`` of the last run of the
        previous page continues after it."""
        clauses: list[str] = []
        params: list[str] = []
        for column, value in (("status", status), ("workflow", workflow), ("tenant", tenant)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(_ts(since))
        if until is not None:
            clauses.append("created_at < ?")
            params.append(_ts(until))
        if before is not None:
            clauses.append("(created_at < ? OR (created_at = ? AND run_id < ?))")
            params += [before[0], before[0], before[1]]
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT ?"
        params.append(str(limit))
        with self.store.read() as tx:
            return [RunRecord.from_row(r) for r in tx.fetchall(sql, params)]

    def counts(self, tenant: str | None = None) -> dict[str, int]:
        """Runs per state (of ``tenant`` if given)."""
        with self.store.read() as tx:
            if tenant is None:
                rows = tx.fetchall("SELECT status, COUNT(*) FROM runs GROUP BY status")
            else:
                rows = tx.fetchall(
                    "SELECT status, COUNT(*) FROM runs WHERE tenant = ? GROUP BY status", (tenant,)
                )
        return {str(status): int(n) for status, n in rows}

    def claim(self, owner: str, lease: _dt.timedelta) -> RunRecord | None:
        """Take the oldest runnable run: pending, waiting past its wake time, or running with an
        expired lease (its worker died). Returns None when nothing is runnable."""
        with self.store.write(locks=()) as tx:
            now = self._lease_now(tx)
            now_s = _ts(now)
            row = tx.fetchone(
                "SELECT run_id, status FROM runs WHERE "
                "(status = 'pending') OR "
                "(status = 'waiting' AND wake_at IS NOT NULL AND wake_at <= ?) OR "
                "(status = 'running' AND lease_expires < ?) "
                "ORDER BY created_at LIMIT 1" + self._skip_locked,
                (now_s, now_s),
            )
            if row is None:
                return None
            run_id, before = row
            tx.execute(
                "UPDATE runs SET status = 'running', lease_owner = ?, lease_expires = ?, "
                "attempts = attempts + 1, wake_at = NULL, updated_at = ? WHERE run_id = ?",
                (owner, _ts(now + lease), now_s, run_id),
            )
            found = tx.fetchone(
                "SELECT workflow, tenant, agent FROM runs WHERE run_id = ?", (run_id,)
            )
            assert found is not None
            workflow, tenant, agent = str(found[0]), str(found[1]), str(found[2])
            what = "recovered" if before == "running" else "started"
            self._audit(
                tx, run_id, workflow, tenant, agent, what, before, "running", {"worker": owner}
            )
        return self.get(run_id)

    def next_due(self) -> float | None:
        """Seconds until a run becomes runnable by the clock alone (a timer or a lease running
        out; 0 if one is already due), or None. Indexed reads; what an idle worker sleeps for.
        Measured by the lease clock, so a wrong machine clock cannot make a worker spin."""
        with self.store.read() as tx:
            now = self._lease_now(tx)
            timer = tx.fetchone(
                "SELECT MIN(wake_at) FROM runs WHERE status = 'waiting' AND wake_at IS NOT NULL"
            )
            lease = tx.fetchone("SELECT MIN(lease_expires) FROM runs WHERE status = 'running'")
        due = [_parse_ts(row[0]) for row in (timer, lease) if row is not None and row[0]]
        soonest = min((d for d in due if d is not None), default=None)
        return None if soonest is None else max(0.0, (soonest - now).total_seconds())

    def heartbeat(self, run_id: str, owner: str, lease: _dt.timedelta) -> bool:
        """Extend the lease; False if this worker no longer holds it."""
        with self.store.write(locks=()) as tx:
            changed = tx.execute(
                "UPDATE runs SET lease_expires = ? WHERE run_id = ? AND lease_owner = ? "
                "AND status = 'running'",
                (_ts(self._lease_now(tx) + lease), run_id, owner),
            )
        return changed == 1

    def transition(
        self,
        run_id: str,
        to: RunStatus,
        *,
        owner: str | None = None,
        result: Any = None,
        error: dict[str, Any] | None = None,
        wake_at: _dt.datetime | None = None,
        state: Any = None,
        reason: str = "",
    ) -> bool:
        """Move a run to ``to`` (only if ``owner`` still holds it, when given). Audited.

        ``wake_at`` is a time by this App's clock; it is stored by the lease clock (the same
        delay from now), which is what claims compare it with.
        """
        now = _ts(self.clock.now())
        with self.store.write(locks=()) as tx:
            if wake_at is not None and self._db_time:
                wake_at = self._lease_now(tx) + (wake_at - self.clock.now())
            row = tx.fetchone(
                "SELECT status, lease_owner, workflow, tenant, agent FROM runs WHERE run_id = ?"
                + self._for_update,
                (run_id,),
            )
            if row is None:
                raise InvalidRequestError(f"no run {run_id!r}", code="unknown_run")
            before, lease_owner, workflow, tenant, agent = row
            if owner is not None and lease_owner != owner:
                return False
            tx.execute(
                "UPDATE runs SET status = ?, result = ?, error = ?, wake_at = ?, "
                "state = COALESCE(?, state), lease_owner = NULL, lease_expires = NULL, "
                "updated_at = ? WHERE run_id = ?",
                (
                    to,
                    None if result is None else canonical_json(result),
                    None if error is None else canonical_json(error),
                    None if wake_at is None else _ts(wake_at),
                    None if state is None else canonical_json(state),
                    now,
                    run_id,
                ),
            )
            body: dict[str, Any] = {"reason": reason} if reason else {}
            if error is not None:
                body["error"] = error
            self._audit(tx, run_id, workflow, tenant, agent, to, before, to, body)
            if to in ("pending", "waiting") and (to == "pending" or wake_at is not None):
                tx.notify(RUNS_CHANNEL)
        return True

    def wake(self, run_ids: list[str]) -> None:
        """Make waiting runs runnable now (an approval was decided)."""
        if not run_ids:
            return
        with self.store.write(locks=()) as tx:
            now = _ts(self._lease_now(tx))  # claims compare wake_at with the lease clock
            for run_id in sorted(run_ids):  # one lock order
                tx.execute(
                    "UPDATE runs SET wake_at = ? WHERE run_id = ? AND status = 'waiting'",
                    (now, run_id),
                )
            tx.notify(RUNS_CHANNEL)

    def waiting_on_approvals(self, since: _dt.datetime | None = None) -> list[tuple[str, str]]:
        """``(run_id, approval_id)`` of runs waiting on an approval that has been decided.

        With ``since``, only approvals decided at or after it are looked at: one range scan of
        the ``decided_at`` index, then an indexed lookup per decision, so the cost follows the
        number of recent decisions, not the number of runs or approvals in the store.
        """
        decided = ("approved", "denied", "expired", "used")
        waiting = (
            "SELECT j.run_id FROM journal j JOIN runs r ON r.run_id = j.run_id "
            "WHERE j.approval_id = ? AND j.status = 'waiting_approval' "
            "AND r.status = 'waiting' AND r.wake_at IS NULL"
        )
        found: list[tuple[str, str]] = []
        with self.store.read() as tx:
            if since is None:  # a worker's first look: one join over everything waiting
                rows = tx.fetchall(
                    "SELECT j.run_id, j.approval_id FROM approvals a "
                    "JOIN journal j ON j.approval_id = a.approval_id "
                    "JOIN runs r ON r.run_id = j.run_id "
                    "WHERE a.status IN ('approved', 'denied', 'expired', 'used') "
                    "AND j.status = 'waiting_approval' AND r.status = 'waiting' "
                    "AND r.wake_at IS NULL"
                )
                return [(str(a), str(b)) for a, b in rows]
            rows = tx.fetchall(
                "SELECT approval_id, status FROM approvals WHERE decided_at >= ?",
                (_ts(since),),
            )
            for approval_id, status in rows:
                if status not in decided:
                    continue
                for (run_id,) in tx.fetchall(waiting, (approval_id,)):
                    found.append((str(run_id), str(approval_id)))
        return found

    # -- journal ---------------------------------------------------------------------------------

    def steps(self, run_id: str) -> dict[str, JournalEntry]:
        with self.store.read() as tx:
            rows = tx.fetchall(
                f"SELECT {_STEP_COLUMNS} FROM journal WHERE run_id = ? ORDER BY position",
                (run_id,),
            )
        return {row[1]: JournalEntry.from_row(row) for row in rows}

    def steps_of(self, run_ids: Iterable[str]) -> dict[str, list[JournalEntry]]:
        """The steps of several runs at once (in order), in one read per 500 runs."""
        wanted = sorted(set(run_ids))
        found: dict[str, list[JournalEntry]] = {run_id: [] for run_id in wanted}
        with self.store.read() as tx:
            for first in range(0, len(wanted), 500):
                chunk = wanted[first : first + 500]
                marks = ", ".join("?" for _ in chunk)
                rows = tx.fetchall(
                    f"SELECT {_STEP_COLUMNS} FROM journal WHERE run_id IN ({marks}) "
                    "ORDER BY run_id, position",
                    chunk,
                )
                for row in rows:
                    found[row[0]].append(JournalEntry.from_row(row))
        return found

    def begin_step(
        self,
        run_id: str,
        step_id: str,
        position: int,
        kind: str,
        target: str,
        call_digest: str,
    ) -> None:
        """Record that a step is about to run (committed before it runs)."""
        with self.store.write(locks=()) as tx:
            tx.execute(
                f"INSERT INTO journal ({_STEP_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, 'started', NULL, NULL, NULL, NULL, ?, NULL) "
                "ON CONFLICT (run_id, step_id) DO NOTHING",
                (run_id, step_id, position, kind, target, call_digest, _ts(self.clock.now())),
            )

    def finish_step(
        self,
        run_id: str,
        step_id: str,
        status: StepStatus,
        *,
        outcome_ref: str | None = None,
        error: dict[str, Any] | None = None,
        approval_id: str | None = None,
        wake_at: _dt.datetime | None = None,
    ) -> None:
        finished = status in ("succeeded", "failed")
        with self.store.write(locks=()) as tx:
            tx.execute(
                "UPDATE journal SET status = ?, outcome_ref = ?, error = ?, "
                "approval_id = COALESCE(?, approval_id), wake_at = ?, finished_at = ? "
                "WHERE run_id = ? AND step_id = ?",
                (
                    status,
                    outcome_ref,
                    None if error is None else canonical_json(error),
                    approval_id,
                    None if wake_at is None else _ts(wake_at),
                    _ts(self.clock.now()) if finished else None,
                    run_id,
                    step_id,
                ),
            )

    # -- audit -----------------------------------------------------------------------------------

    def _audit(
        self,
        tx: Transaction,
        run_id: str,
        workflow: str,
        tenant: str,
        agent: str,
        what: str,
        before: str | None,
        after: str,
        body: dict[str, Any],
    ) -> None:
        self.audit.append(
            tx,
            AuditEntry(
                kind="control",
                tenant=tenant,
                agent=agent,
                run_id=run_id,
                tool=f"run:{workflow}",
                decision=after,
                rule_id=f"run.{what}",
                body={
                    "action": f"run.{what}",
                    "workflow": workflow,
                    "from": before,
                    "to": after,
                    **body,
                },
            ),
        )
