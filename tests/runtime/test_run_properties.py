"""Properties of the run state machine, and replay of a pinned golden run history.

Property: whatever the workflows (tool steps that fail or not, sleeps, payments that need an
approval) and whatever the interleaving of worker drains, clock jumps, approvals granted or
denied, cancellations, re-drives and workers that die holding a run:

* a step that succeeded is never executed again (replay answers it from the journal); a step of
  an irreversible tool that does not honour idempotency keys is executed again only after an
  operator re-drove its failed run; a tool that honours keys always gets the same key;
* a step that needs an approval never executes before one was granted for it;
* final states are reached once and left only by an explicit re-drive; ``completed`` never;
* every transition is in the audit log, in order, each starting where the last one ended, and
  the chain verifies;
* a run never completes with a step still waiting, nor before its timers were due.

Golden history: ``golden/payout-v1.json`` is a journal recorded once by a real run of the
``golden-payout`` workflow below (then checked by hand and pinned). Loading it and resuming must
return the recorded outcomes without executing a tool or calling a model.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keel import App, KeelConfig
from keel.approvals import Operator
from keel.audit import query
from keel.errors import AuthorizationError, ToolError, UsageError
from keel.testing import FrozenClock, RecordingTool, ScriptedModel
from keel.tools import ToolContext

POLICY = """
policy: run-properties
tools:
  allow: [prop.read, prop.write, prop.keyed, prop.pay]
require_approval_if_over: {prop.pay: 1000}
"""

#: Changes the world and does not honour idempotency keys: never re-called without an operator.
UNKEYED = {"prop.write"}
ENDED = {"completed", "failed", "escalated", "cancelled", "killed", "parked"}
RE_DRIVABLE = {"failed", "parked", "escalated", "killed"}
ALLOWED = {
    (None, "pending"),
    ("pending", "running"),
    ("waiting", "running"),
    ("running", "running"),  # recovered after its worker's lease expired
    *{("running", s) for s in ("waiting", "completed", "failed", "escalated", "killed", "parked")},
    *{(s, "cancelled") for s in ("pending", "running", "waiting", "parked")},
    *{(s, "pending") for s in RE_DRIVABLE},  # an explicit re-drive
}
APPROVER = Operator("ana", frozenset({"approver"}))
ADMIN = Operator("olu", frozenset({"admin"}))


@dataclass(frozen=True)
class Exec:
    """One execution of a tool: which step, whether it succeeded, whether it needed a person."""

    tool: str
    run_id: str
    step_id: str
    ok: bool
    gated: bool
    key: str | None


class World:
    """What happened, in order: executions of tools (``Exec``) and operator actions
    (``("retry", run_id)``, ``("approved", run_id, step_id)``)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.attempts: dict[tuple[str, str], int] = defaultdict(int)

    def execs(self, run_id: str | None = None) -> list[tuple[int, Exec]]:
        return [
            (i, e)
            for i, e in enumerate(self.events)
            if isinstance(e, Exec) and run_id in (None, e.run_id)
        ]

    def tool(self, name: str) -> Any:
        def invoke(arguments: dict[str, Any], ctx: ToolContext) -> Any:
            assert ctx.run_id is not None and ctx.step_id is not None
            key = (ctx.run_id, ctx.step_id)
            self.attempts[key] += 1
            ok = self.attempts[key] > int(arguments.get("fail", 0))
            gated = int(arguments.get("amount", 0)) > 1000
            self.events.append(Exec(name, ctx.run_id, ctx.step_id, ok, gated, ctx.idempotency_key))
            if not ok:
                raise ToolError(f"{name} failed (scripted)", retryable=arguments["retryable"])
            return {"tool": name, "key": ctx.idempotency_key}

        return invoke


def build(directory: Path, store_url: str, clock: FrozenClock, world: World) -> App:
    config = KeelConfig(store_url=store_url, home=directory / "home")
    app = App(config, clock=clock)
    app.add_policy(POLICY)
    for name, effect, keyed in (
        ("prop.read", "read", False),
        ("prop.write", "irreversible", False),
        ("prop.keyed", "irreversible", True),
        ("prop.pay", "irreversible", True),
    ):
        tool = RecordingTool(
            name, scope="prop:use", effect=effect, idempotent=keyed, result=world.tool(name)
        )
        app.register(tool)

    @app.workflow("prop", agent="prop-bot", scopes=["prop:use"], max_step_attempts=2)
    async def flow(run: Any, program: list[list[Any]]) -> int:
        for op in program:
            if op[0] == "sleep":
                await run.sleep(op[1])
            elif op[0] == "pay":
                await run.tool("prop.pay", {"amount": op[1]})
            else:
                await run.tool(op[1], {"fail": op[2], "retryable": op[3]})
        return len(program)

    return app


step = st.one_of(
    st.tuples(
        st.just("tool"),
        st.sampled_from(["prop.read", "prop.write", "prop.keyed"]),
        st.sampled_from([0, 0, 0, 1, 5]),  # fail the first N executions
        st.booleans(),  # retryable
    ),
    st.tuples(st.just("sleep"), st.sampled_from([0, 60, 2 * 86400])),
    st.tuples(st.just("pay"), st.sampled_from([10, 5000])),
)
programs = st.lists(st.lists(step, min_size=1, max_size=4), min_size=1, max_size=3)
operation = st.one_of(
    st.just(("drain", 0)),
    st.just(("drain", 0)),
    st.just(("drain", 0)),
    st.tuples(st.just("advance"), st.sampled_from([1, 61, 3601, 2 * 86400])),
    st.tuples(st.just("approve"), st.integers(0, 3)),
    st.tuples(st.just("deny"), st.integers(0, 3)),
    st.tuples(st.just("retry"), st.integers(0, 2)),
    st.tuples(st.just("retry"), st.integers(0, 2)),
    st.tuples(st.just("cancel"), st.integers(0, 2)),
    st.just(("crash", 0)),  # a worker claims a run and dies holding it
)


class Driver:
    def __init__(self, app: App, clock: FrozenClock, world: World, runs: list[str]) -> None:
        self.app, self.clock, self.world, self.runs = app, clock, world, runs
        self.worker = app.runtime.worker()
        self.ghosts = 0
        self.retries: dict[str, int] = defaultdict(int)

    def open_approvals(self) -> list[tuple[str, str, str]]:
        found = []
        for run_id in self.runs:
            for s in self.app.runtime.steps(run_id):
                if s.status == "waiting_approval" and s.approval_id:
                    status = self.app.approvals.get(s.approval_id).status
                    if status in ("pending", "escalated"):
                        found.append((s.approval_id, run_id, s.step_id))
        return found

    def decide(self, index: int, approve: bool) -> None:
        waiting = self.open_approvals()
        if not waiting:
            return
        approval_id, run_id, step_id = waiting[index % len(waiting)]
        for operator in (APPROVER, ADMIN):  # past its deadline only an admin may decide
            try:
                if approve:
                    self.app.approvals.approve(approval_id, operator)
                else:
                    self.app.approvals.deny(approval_id, operator, reason="not this one")
            except AuthorizationError:
                continue
            event("approved" if approve else "denied")
            if approve:
                self.world.events.append(("approved", run_id, step_id))
            return

    def apply(self, op: str, arg: int) -> None:
        runtime = self.app.runtime
        if op == "drain":
            self.worker.run_once()
        elif op == "advance":
            self.clock.advance(seconds=arg)
        elif op in ("approve", "deny"):
            self.decide(arg, op == "approve")
        elif op == "retry":
            run_id = self.runs[arg % len(self.runs)]
            with contextlib.suppress(UsageError):
                runtime.retry(run_id)
                self.retries[run_id] += 1
                self.world.events.append(("retry", run_id))
                event("re-driven")
        elif op == "cancel":
            with contextlib.suppress(UsageError):
                runtime.cancel(self.runs[arg % len(self.runs)], reason="operator")
        else:
            self.ghosts += 1
            if runtime.runs.claim(f"ghost-{self.ghosts}", _dt.timedelta(seconds=30)):
                event("a worker died holding a run")

    def settle(self) -> None:
        """Let the runs finish: drain, grant what waits for a person, let timers come due,
        re-drive what failed."""
        for _ in range(8):
            self.worker.drain()
            for index, run_id in enumerate(self.runs):
                if self.app.runtime.get(run_id).status == "failed":
                    self.apply("retry", index)
            for _ in self.open_approvals():
                self.decide(0, approve=True)
            self.worker.drain()
            self.clock.advance(days=3)


def check_executions(world: World) -> None:
    by_step: dict[tuple[str, str], list[tuple[int, Exec]]] = defaultdict(list)
    for index, e in world.execs():
        by_step[(e.run_id, e.step_id)].append((index, e))
    for (run_id, step_id), execs in by_step.items():
        where = f"{execs[0][1].tool} {run_id}/{step_id}"
        oks = [i for i, e in execs if e.ok]
        assert len(oks) <= 1, f"{where} succeeded twice"
        assert not oks or oks[0] == execs[-1][0], f"{where} ran again after succeeding"
        assert all(e.key == f"{run_id}/{step_id}" for _, e in execs), f"{where} changed key"
        if execs[0][1].tool in UNKEYED:
            for (before, _), (after, _) in itertools.pairwise(execs):
                assert ("retry", run_id) in world.events[before + 1 : after], f"{where} repeated"
        for i, e in execs:
            if e.gated:
                assert ("approved", run_id, step_id) in world.events[:i], f"{where} not approved"


def check_transitions(app: App, run_id: str, retries: int) -> list[tuple[str | None, str]]:
    records = [
        r
        for r in reversed(query(app.store, run_id=run_id, kind="control", limit=10_000))
        if (r.entry.rule_id or "").startswith("run.") and r.entry.rule_id != "run.reconcile"
    ]
    edges = [(r.entry.body.get("from"), str(r.entry.body["to"])) for r in records]
    assert edges and edges[0] == (None, "pending")
    for (_, before_to), (after_from, _) in itertools.pairwise(edges):
        assert after_from == before_to, f"{run_id}: transitions out of order: {edges}"
    for edge in edges:
        assert edge in ALLOWED, f"{run_id}: transition {edge} is not allowed"
    left = [e for e in edges if e[0] in ENDED]
    assert all(e[1] == "pending" for e in left), f"{run_id}: left an end state: {edges}"
    assert len(left) == retries, f"{run_id}: {len(left)} re-drives recorded, {retries} made"
    assert edges[-1][1] == app.runtime.get(run_id).status
    return edges


#: Examples per backend: PostgreSQL costs more per example (connections, round trips).
EXAMPLES = {"sqlite": 30, "postgres": 20}


def test_the_run_state_machine_holds_under_any_interleaving(
    backend: str, example_store_url: Callable[[], str]
) -> None:
    @settings(
        max_examples=EXAMPLES[backend],
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(programs=programs, ops=st.lists(operation, max_size=18))
    def check(programs: list[list[tuple[Any, ...]]], ops: list[tuple[str, int]]) -> None:
        run_interleaving(example_store_url(), programs, ops)

    check()


def run_interleaving(
    store_url: str, programs: list[list[tuple[Any, ...]]], ops: list[tuple[str, int]]
) -> None:
    world = World()
    clock = FrozenClock()
    with tempfile.TemporaryDirectory() as tmp, build(Path(tmp), store_url, clock, world) as app:
        submitted = clock.now()
        runs = [app.runtime.submit("prop", [list(s) for s in p]).run_id for p in programs]
        driver = Driver(app, clock, world, runs)
        for op, arg in ops:
            driver.apply(op, arg)
        driver.settle()

        check_executions(world)
        for run_id, program in zip(runs, programs, strict=True):
            check_transitions(app, run_id, driver.retries[run_id])
            record = app.runtime.get(run_id)
            event(f"run ended {record.status}")
            if record.status != "completed":
                continue
            steps = app.runtime.steps(run_id)
            assert [s.status for s in steps] == ["succeeded"] * len(program)
            assert record.result == len(program)
            slept = sum(s[1] for s in program if s[0] == "sleep")
            assert record.updated_at - submitted >= _dt.timedelta(seconds=slept)
            for s, spec in zip(steps, program, strict=True):
                oks = [e for _, e in world.execs(run_id) if e.step_id == s.step_id and e.ok]
                assert len(oks) == (0 if spec[0] == "sleep" else 1)
                if spec[0] == "pay" and spec[1] > 1000:
                    assert ("approved", run_id, s.step_id) in world.events
        assert app.verify_audit().ok


# -- the golden run history ----------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "payout-v1.json"
GOLDEN_POLICY = """
policy: golden
tools:
  allow: [bank.balance, bank.transfer, bank.notify]
models: {allow: ["*"]}
require_approval_if_over: {bank.transfer: 1000}
"""


def golden_app(
    directory: Path, store_url: str, clock: FrozenClock, *, amount_field: str = "amount"
) -> tuple[App, ScriptedModel]:
    """The workflow code the golden history was recorded with (``amount_field`` changes it)."""
    config = KeelConfig(
        store_url=store_url,
        home=directory / "home",
        models={"prices": {"scripted:*": {"input": "1", "output": "1"}}},
    )
    app = App(config, clock=clock)
    app.add_policy(GOLDEN_POLICY)
    app.register(RecordingTool("bank.balance", scope="bank:read", result={"usd": 4200}))
    app.register(
        RecordingTool(
            "bank.transfer",
            scope="bank:write",
            effect="irreversible",
            idempotent=True,
            result=lambda args, ctx: {"moved": args["amount"], "ref": ctx.idempotency_key},
        )
    )
    app.register(RecordingTool("bank.notify", scope="bank:write", effect="reversible", result="ok"))
    model = ScriptedModel(default="category: payout")
    app.add_model("triage", model)

    scopes = ["bank:read", "bank:write", "models:invoke"]

    @app.workflow("golden-payout", agent="payout-bot", scopes=scopes)
    async def payout(run: Any, order: dict[str, Any]) -> dict[str, Any]:
        balance = await run.tool("bank.balance", {})
        answer = await run.model(
            {
                "model": "triage",
                "messages": [{"role": "user", "content": order["note"]}],
                "max_tokens": 8,
            }
        )
        await run.sleep(_dt.timedelta(days=1))
        receipt = await run.tool("bank.transfer", {"to": order["to"], amount_field: order["usd"]})
        await run.tool("bank.notify", {"text": f"paid {order['usd']} to {order['to']}"})
        return {
            "balance": balance["usd"],
            "category": answer["choices"][0]["text"],
            "receipt": receipt,
        }

    return app, model


def load_golden(app: App) -> dict[str, Any]:
    """Put the pinned run and its journal in ``app``'s store, as the runtime recorded them."""
    history = json.loads(GOLDEN.read_text())
    assert history["schema"] == 1
    run = history["run"]
    runs = app.runtime.runs
    runs.create(
        run["workflow"],
        tenant=run["tenant"],
        agent=run["agent"],
        input=run["input"],
        on_behalf_of=run["on_behalf_of"],
        run_id=run["run_id"],
    )
    for s in history["steps"]:
        runs.begin_step(
            run["run_id"], s["step_id"], s["position"], s["kind"], s["target"], s["call_digest"]
        )
        ref = None if s["outcome_ref"] is None else app.payloads.put(s["outcome"])
        assert ref == s["outcome_ref"], f"step {s['step_id']}: payload addressing changed"
        runs.finish_step(
            run["run_id"], s["step_id"], s["status"], outcome_ref=ref, approval_id=s["approval_id"]
        )
    return history


def test_replaying_the_golden_history_executes_nothing(tmp_path: Path, store_url: str) -> None:
    app, model = golden_app(tmp_path, store_url, FrozenClock())
    with app:
        history = load_golden(app)
        run_id = history["run"]["run_id"]
        before = app.runtime.steps(run_id)
        assert app.runtime.worker().drain() == {"completed": 1}
        done = app.runtime.get(run_id)
        assert done.result == history["result"]
        assert app.runtime.steps(run_id) == before  # the journal is answered, not rewritten
        for tool in app.tools:
            assert isinstance(tool, RecordingTool) and tool.calls == 0, tool.spec.name
        assert model.calls == 0
        assert query(app.store, run_id=run_id, kind="call") == []
        assert app.verify_audit().ok


def test_the_golden_history_detects_changed_workflow_code(tmp_path: Path, store_url: str) -> None:
    app, _ = golden_app(tmp_path, store_url, FrozenClock(), amount_field="usd")
    with app:
        history = load_golden(app)
        run_id = history["run"]["run_id"]
        assert app.runtime.worker().drain() == {"parked": 1}
        parked = app.runtime.get(run_id)
        assert parked.error is not None and parked.error["error"] == "nondeterminism"
        assert "step 3" in parked.error["message"]
        transfer = app.tools.get("bank.transfer")
        assert isinstance(transfer, RecordingTool) and transfer.calls == 0
