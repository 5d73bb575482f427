"""The reconciliation job: does the world hold what Keel recorded?

``reconcile(app)`` walks the journal. For every ``succeeded`` tool step whose tool has a reconcile
hook (``ToolSpec.reconcile``), it asks the hook whether the effect exists in the system of record,
with the ``ToolContext`` the runtime uses (idempotency key ``<run_id>/<step_id>``), and compares
the answer with the outcome the journal recorded. Findings:

* ``missing`` - Keel says the effect happened; the system of record does not have it;
* ``differs`` - both have it, but the outcomes differ (canonical JSON, or only the chosen
  top-level keys per tool, see ``keys``);
* ``error`` - the hook raised or answered with something that is not JSON, or the recorded
  outcome cannot be read. The job goes on with the next step;
* ``open`` - not drift but a question for an operator: a step whose outcome Keel does not know,
  ``started`` and never finished (its run crashed and waits for a worker, or was parked), or
  ``failed`` with ``outcome_unknown`` (parked for a person). Where the tool has a hook, the hook is
  asked too and its answer is reported (``found``). Steps of runs that a live worker holds are
  in progress, not open, and are skipped.

Drift is ``missing`` + ``differs`` + ``error``. The job records one audit ``control`` entry per
drift finding (``rule_id="reconcile.drift"``, on the run and step) and one for the job with its
counts (``rule_id="reconcile.job"``, ``tool="reconcile"``, ``decision`` ``clean`` or ``drift``).
Audit entries hold digests and key names, never the outcomes themselves.

Arguments. The journal keeps a digest of each step's arguments, not the arguments. The hook gets
them from the step's audit ``call`` record: exact when redaction changed nothing (the record's
``args_digest`` matches), else their redacted form; ``{}`` when the step has no call record (an
earlier reconcile resolved it). Findings say which (``arguments``). Hooks should look effects up
by ``context.idempotency_key``, which is always exact.

Memory is bounded: the journal is read in pages of ``page_size`` rows by primary key, outside any
transaction while hooks run; call records are read one run at a time; at most ``max_findings``
findings are kept in the report (the counts are always exact, ``truncated`` says some were left
out). Hooks are called one at a time from the calling thread; a hook that hangs holds the job up.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import json
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from keel.audit import AuditEntry, query
from keel.audit.query import MAX_LIMIT
from keel.canonical import canonical_json, digest, sha256_hex
from keel.core import new_id
from keel.errors import KeelError, UsageError
from keel.tools import Tool, ToolContext

if TYPE_CHECKING:
    from keel.app import App

__all__ = ["Finding", "FindingKind", "ReconcileReport", "reconcile"]

FindingKind = Literal["missing", "differs", "error", "open"]
ArgumentsSource = Literal["exact", "redacted", "unavailable"]

DRIFT_KINDS: Final = frozenset({"missing", "differs", "error"})

_SELECT: Final = (
    "SELECT j.run_id, j.step_id, j.kind, j.target, j.status, j.outcome_ref, j.error, "
    "r.workflow, r.tenant, r.agent, r.on_behalf_of, r.status, r.lease_expires "
    "FROM journal j JOIN runs r ON r.run_id = j.run_id"
)
_OPEN: Final = (
    "(j.status = 'started' AND j.kind IN ('tool', 'model')) OR "
    "(j.status = 'failed' AND j.error LIKE '%\"outcome_unknown\"%')"
)


@dataclass(frozen=True)
class Finding:
    """One step where what Keel recorded and what the world holds need a person's look.

    ``recorded`` and ``observed`` are the compared outcomes, redacted (both ``None`` for tools
    marked sensitive, and where there is nothing to show). ``keys`` names the top-level outcome
    keys that differ. ``found`` is the hook's answer for an ``open`` step (``None``: not asked).
    """

    kind: FindingKind
    run_id: str
    step_id: str
    workflow: str
    tenant: str
    tool: str
    run_status: str
    step_status: str
    message: str
    keys: tuple[str, ...] = ()
    recorded: Any = None
    observed: Any = None
    arguments: ArgumentsSource = "exact"
    found: bool | None = None

    @property
    def drift(self) -> bool:
        return self.kind in DRIFT_KINDS

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "workflow": self.workflow,
            "tenant": self.tenant,
            "tool": self.tool,
            "run_status": self.run_status,
            "step_status": self.step_status,
            "message": self.message,
            "keys": list(self.keys),
            "recorded": self.recorded,
            "observed": self.observed,
            "arguments": self.arguments,
            "found": self.found,
        }


@dataclass
class ReconcileReport:
    """What one run of the job checked and found. ``ok`` means no drift (open steps aside)."""

    job_id: str
    started_at: _dt.datetime
    since: _dt.datetime | None
    workflow: str | None
    tenant: str | None
    tools: tuple[str, ...]
    finished_at: _dt.datetime | None = None
    checked: int = 0
    matched: int = 0
    missing: int = 0
    differs: int = 0
    errors: int = 0
    open: int = 0
    findings: list[Finding] = field(default_factory=list)
    truncated: bool = False

    @property
    def drift(self) -> int:
        return self.missing + self.differs + self.errors

    @property
    def ok(self) -> bool:
        return self.drift == 0

    def counts(self) -> dict[str, int]:
        return {
            "checked": self.checked,
            "matched": self.matched,
            "missing": self.missing,
            "differs": self.differs,
            "errors": self.errors,
            "open": self.open,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "since": None if self.since is None else self.since.isoformat(),
            "workflow": self.workflow,
            "tenant": self.tenant,
            "tools": list(self.tools),
            "ok": self.ok,
            **self.counts(),
            "findings": [f.to_dict() for f in self.findings],
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class _Step:
    run_id: str
    step_id: str
    kind: str
    target: str
    status: str
    outcome_ref: str | None
    error: str | None
    workflow: str
    tenant: str
    agent: str
    on_behalf_of: str | None
    run_status: str
    lease_expires: str | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> _Step:
        run_id, step_id, kind, target, status, ref, error, workflow, tenant, agent, obo = row[:11]
        return cls(
            run_id=str(run_id),
            step_id=str(step_id),
            kind=str(kind),
            target=str(target),
            status=str(status),
            outcome_ref=ref,
            error=error,
            workflow=str(workflow),
            tenant=str(tenant),
            agent=str(agent),
            on_behalf_of=obo,
            run_status=str(row[11]),
            lease_expires=row[12],
        )


def reconcile(
    app: App,
    *,
    since: _dt.datetime | None = None,
    workflow: str | None = None,
    tenant: str | None = None,
    keys: Mapping[str, Collection[str]] | None = None,
    max_findings: int = 1000,
    page_size: int = 500,
) -> ReconcileReport:
    """Check recorded effects against their systems of record; report and audit the drift.

    ``since`` keeps steps that finished (or, unfinished, started) at or after it; ``workflow``
    and ``tenant`` keep the runs of one workflow / tenant. ``keys`` maps a tool name to the
    top-level outcome keys to compare for it (others: the whole outcome). Blocks; not meant to
    run concurrently with itself on one store (it is safe, but the drift would be reported
    twice).
    """
    if max_findings < 0 or page_size < 1:
        raise UsageError("reconcile needs max_findings >= 0 and page_size >= 1")
    hooked = {t.spec.name: t for t in app.tools if t.spec.reconcile is not None}
    report = ReconcileReport(
        job_id=new_id("reconcile_"),
        started_at=app.clock.now(),
        since=since,
        workflow=workflow,
        tenant=tenant,
        tools=tuple(sorted(hooked)),
    )
    job = _Job(app, report, hooked, keys or {}, max_findings)
    for step in _journal(app, hooked, since, workflow, tenant, page_size):
        job.check(step)
    report.finished_at = app.clock.now()
    app.audit.record(
        AuditEntry(
            kind="control",
            tenant=tenant,
            tool="reconcile",
            decision="clean" if report.ok else "drift",
            rule_id="reconcile.job",
            body={
                "action": "reconcile.job",
                "job_id": report.job_id,
                "since": None if since is None else since.isoformat(),
                "workflow": workflow,
                "tools": list(report.tools),
                **report.counts(),
            },
        )
    )
    return report


def _journal(
    app: App,
    hooked: Mapping[str, Tool],
    since: _dt.datetime | None,
    workflow: str | None,
    tenant: str | None,
    page_size: int,
) -> Iterator[_Step]:
    """The steps to look at, page by page in primary-key order (no transaction held between)."""
    wanted = [_OPEN]
    params: list[Any] = []
    if hooked:
        marks = ", ".join("?" * len(hooked))
        wanted.append(f"(j.status = 'succeeded' AND j.kind = 'tool' AND j.target IN ({marks}))")
        params.extend(sorted(hooked))
    clauses = ["(j.run_id, j.step_id) > (?, ?)", "(" + " OR ".join(wanted) + ")"]
    if since is not None:
        clauses.append("COALESCE(j.finished_at, j.started_at) >= ?")
        params.append(since.astimezone(_dt.UTC).isoformat(timespec="microseconds"))
    for column, value in (("r.workflow", workflow), ("r.tenant", tenant)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    sql = f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY j.run_id, j.step_id LIMIT ?"
    cursor: tuple[str, str] = ("", "")
    while True:
        with app.store.read() as tx:
            rows = tx.fetchall(sql, [*cursor, *params, page_size])
        for row in rows:
            yield _Step.from_row(row)
        if len(rows) < page_size:
            return
        cursor = (str(rows[-1][0]), str(rows[-1][1]))


class _Job:
    def __init__(
        self,
        app: App,
        report: ReconcileReport,
        hooked: Mapping[str, Tool],
        keys: Mapping[str, Collection[str]],
        max_findings: int,
    ) -> None:
        self.app = app
        self.report = report
        self.hooked = hooked
        self.keys = keys
        self.max_findings = max_findings
        self._args_run: str | None = None
        self._args: dict[tuple[str, str], tuple[Any, ArgumentsSource]] = {}

    # -- one step --------------------------------------------------------------------------------

    def check(self, step: _Step) -> None:
        if step.status == "succeeded":
            self._check_effect(step)
        elif not self._in_progress(step):
            self._report_open(step)

    def _check_effect(self, step: _Step) -> None:
        report = self.report
        tool = self.hooked[step.target]
        report.checked += 1
        arguments, source = self._arguments(step)
        try:
            recorded = None if step.outcome_ref is None else self.app.payloads.get(step.outcome_ref)
        except KeelError as exc:
            message = f"the recorded outcome cannot be read: {exc.message}"
            self._drift(step, "error", message, source)
            return
        try:
            observed = _jsonable(_ask(tool, arguments, self._context(step)))
        except Exception as exc:
            self._drift(step, "error", f"the reconcile hook failed: {_describe(exc)}", source)
            return
        if observed is None:
            self._drift(
                step,
                "missing",
                "Keel recorded this effect but the system of record does not have it",
                source,
                recorded=recorded,
            )
            return
        chosen = self.keys.get(step.target)
        differing = _differing(recorded, observed, chosen)
        if differing is None:
            report.matched += 1
            return
        listed = f" in {', '.join(differing)}" if differing else ""
        self._drift(
            step,
            "differs",
            f"the system of record holds a different outcome than Keel recorded{listed}",
            source,
            keys=differing,
            recorded=_project(recorded, chosen),
            observed=_project(observed, chosen),
        )

    def _in_progress(self, step: _Step) -> bool:
        """A started step of a run that a live worker holds: running now, not a question."""
        if step.status != "started" or step.run_status != "running" or not step.lease_expires:
            return False
        return _dt.datetime.fromisoformat(step.lease_expires) > self.app.clock.now()

    def _report_open(self, step: _Step) -> None:
        self.report.open += 1
        if step.status == "started":
            what = "started but never finished (the process running it stopped)"
        else:
            what = "parked: it may have run before a crash and nothing could prove whether"
        found: bool | None = None
        tool = self.hooked.get(step.target) if step.kind == "tool" else None
        if tool is not None:
            arguments, _ = self._arguments(step)
            try:
                found = _ask(tool, arguments, self._context(step)) is not None
            except Exception as exc:
                what += f"; the reconcile hook failed: {_describe(exc)}"
            else:
                what += "; the system of record " + ("has" if found else "does not have")
                what += " the effect"
        self._keep(
            Finding(
                kind="open",
                run_id=step.run_id,
                step_id=step.step_id,
                workflow=step.workflow,
                tenant=step.tenant,
                tool=step.target,
                run_status=step.run_status,
                step_status=step.status,
                message=f"step {step.step_id} ({step.kind} {step.target}) {what}",
                found=found,
            )
        )

    def _drift(
        self,
        step: _Step,
        kind: FindingKind,
        message: str,
        source: ArgumentsSource,
        *,
        keys: tuple[str, ...] = (),
        recorded: Any = None,
        observed: Any = None,
    ) -> None:
        report = self.report
        if kind == "missing":
            report.missing += 1
        elif kind == "differs":
            report.differs += 1
        else:
            report.errors += 1
        redact = self.app.redactor.redact
        message = str(redact(message))
        body: dict[str, Any] = {
            "action": "reconcile.drift",
            "job_id": report.job_id,
            "workflow": step.workflow,
            "drift": kind,
            "message": message,
            "arguments": source,
        }
        if keys:
            body["keys"] = list(keys)
        if kind == "differs":
            body["recorded_digest"] = digest(recorded)
            body["observed_digest"] = digest(observed)
        self.app.audit.record(
            AuditEntry(
                kind="control",
                tenant=step.tenant,
                agent=step.agent,
                run_id=step.run_id,
                step_id=step.step_id,
                tool=step.target,
                decision=kind,
                rule_id="reconcile.drift",
                body=body,
            )
        )
        shown = not self.hooked[step.target].spec.sensitive
        self._keep(
            Finding(
                kind=kind,
                run_id=step.run_id,
                step_id=step.step_id,
                workflow=step.workflow,
                tenant=step.tenant,
                tool=step.target,
                run_status=step.run_status,
                step_status=step.status,
                message=message,
                keys=keys,
                recorded=redact(recorded) if shown else None,
                observed=redact(observed) if shown else None,
                arguments=source,
            )
        )

    def _keep(self, finding: Finding) -> None:
        if len(self.report.findings) < self.max_findings:
            self.report.findings.append(finding)
        else:
            self.report.truncated = True

    # -- what the hook is given ------------------------------------------------------------------

    def _context(self, step: _Step) -> ToolContext:
        return ToolContext(
            call_id=new_id(),
            tool=step.target,
            tenant=step.tenant,
            agent_id=step.agent,
            idempotency_key=f"{step.run_id}/{step.step_id}",
            run_id=step.run_id,
            step_id=step.step_id,
            on_behalf_of=step.on_behalf_of,
        )

    def _arguments(self, step: _Step) -> tuple[Any, ArgumentsSource]:
        """The step's arguments from its audit call record (cached for the current run)."""
        if self._args_run != step.run_id:
            self._args_run = step.run_id
            self._args = {}
        cache_key = (step.target, step.step_id)
        if cache_key not in self._args:
            # Loading a run's records for a tool answers every later step of that tool in it.
            for found_step, found in _call_arguments(self.app, step.run_id, step.target):
                self._args.setdefault((step.target, found_step), found)
            self._args.setdefault(cache_key, ({}, "unavailable"))
        return self._args[cache_key]


def _call_arguments(
    app: App, run_id: str, tool: str
) -> Iterator[tuple[str, tuple[Any, ArgumentsSource]]]:
    """``(step_id, (arguments, source))`` from the executed calls of ``tool`` in ``run_id``."""
    before: int | None = None
    while True:
        page = query(
            app.store, run_id=run_id, tool=tool, kind="call", limit=MAX_LIMIT, before_seq=before
        )
        for record in page:
            entry = record.entry
            args = entry.body.get("args")
            if entry.step_id is None or not isinstance(args, dict) or entry.body.get("error"):
                continue
            text = canonical_json(args)
            recorded = entry.body.get("args_digest")
            # Records before keyed digests hold a plain SHA-256; both still say "unchanged".
            exact = recorded in (app.redactor.digest(text), "sha256:" + sha256_hex(text))
            yield entry.step_id, (args, "exact" if exact else "redacted")
        if len(page) < MAX_LIMIT:
            return
        before = page[-1].seq


# -- comparing ---------------------------------------------------------------------------------


def _ask(tool: Tool, arguments: Any, context: ToolContext) -> Any:
    hook = tool.spec.reconcile
    assert hook is not None
    answer = hook(arguments, context)
    if inspect.isawaitable(answer):
        answer = asyncio.run(_wait(answer))
    return answer


async def _wait(awaitable: Any) -> Any:
    return await awaitable


def _jsonable(value: Any) -> Any:
    """``value`` as the journal would hold it (JSON types only); raises if it is not JSON."""
    return None if value is None else json.loads(canonical_json(value))


_ABSENT: Final = object()


def _project(value: Any, chosen: Collection[str] | None) -> Any:
    if chosen is None or not isinstance(value, dict):
        return value
    return {k: value[k] for k in sorted(chosen) if k in value}


def _differing(
    recorded: Any, observed: Any, chosen: Collection[str] | None
) -> tuple[str, ...] | None:
    """None when equal (on ``chosen`` keys if given and both are objects), else the top-level
    keys that differ (``()`` when the outcomes are not both objects)."""
    if not (isinstance(recorded, dict) and isinstance(observed, dict)):
        return None if canonical_json(recorded) == canonical_json(observed) else ()
    names = sorted(chosen) if chosen is not None else sorted({*recorded, *observed})
    differing = tuple(
        name
        for name in names
        if _canon(recorded.get(name, _ABSENT)) != _canon(observed.get(name, _ABSENT))
    )
    return differing or None


def _canon(value: Any) -> str | None:
    return None if value is _ABSENT else canonical_json(value)


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeelError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"
