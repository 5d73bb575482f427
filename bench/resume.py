"""Resume latency of a suspended run in a store of 1,000,000 runs, and recovery after kill -9.

    python bench/resume.py [--runs 1000000] [--resumes 2000] [--trials 5]
    python bench/resume.py --runs 100000 --resumes 500 --trials 3     # quick: about 25 s

**Resume.** ``--runs`` runs are written into a Keel SQLite store with bulk SQL (``INSERT ...
SELECT`` over a recursive sequence, in one transaction per table), shaped like a busy store: 90 %
completed (3 journal steps each), 4 % failed, 1 % cancelled, 4 % waiting on a timer days away,
0.9 % waiting on a pending approval (with its approval request), 0.1 % running under another worker's live lease.
Then ``--resumes`` real runs of a workflow (one governed step, then ``run.sleep``) are submitted
and executed until they wait; each has its own wake time. For each one in turn the clock moves to
its wake time and ``worker.run_once()`` claims it and resumes it to completion (the step replays
from the journal, the sleep ends, the completion is recorded and audited): that call is the
resume latency. Baseline in the same run: the same resumes in a store holding nothing else.

**Recovery.** A worker subprocess runs a workflow of ``--steps`` steps of an irreversible tool
that does not honour idempotency keys but has a reconcile hook; each step writes its effect into
a separate SQLite "bank" and then takes ``--step-ms``. When a chosen step's effect appears the
worker is killed with SIGKILL, inside that tool call, before Keel recorded anything about it.
A new worker subprocess is started at once: recovery time is from its start (process spawn) to
the run's completion, split into start-up, waiting for the dead worker's lease (``--lease``) to
expire, and the work after the claim (reconcile the interrupted step, run the rest). Duplicate
effects are counted in the bank: every step's key must appear exactly once.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from keel import App, KeelConfig
from keel.audit import query
from keel.testing import FrozenClock
from keel.tools import ToolContext

POLICY = "policy: resume-bench\ntools: {allow: [bench.work, bank.pay]}\n"
SCOPES = ["bench:write"]
HERE = Path(__file__).resolve()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ts(value: _dt.datetime) -> str:
    return value.astimezone(_dt.UTC).isoformat(timespec="microseconds")


# -- resume -----------------------------------------------------------------------------------


def build_resume_app(directory: Path, clock: FrozenClock) -> App:
    config = KeelConfig(
        store_url=f"sqlite:///{directory / 'keel.db'}",
        home=directory / "home",
        audit_anchor_file=False,
    )
    app = App(config, clock=clock)
    app.add_policy(POLICY)

    def work(i: int) -> int:
        return i + 1

    app.tool("bench.work", scope="bench:write", effect="reversible", idempotent=True)(work)

    @app.workflow("reminder", agent="bench-bot", scopes=SCOPES)
    async def reminder(run: Any, data: dict[str, int]) -> str:
        await run.tool("bench.work", {"i": data["i"]})
        await run.sleep(data["sleep"])
        return "reminded"

    return app


# Each generated run is x in [0, count): its status follows x % 1000.
_RUN_STATUS = """CASE
    WHEN x % 1000 < 900 THEN 'completed' WHEN x % 1000 < 940 THEN 'failed'
    WHEN x % 1000 < 950 THEN 'cancelled' WHEN x % 1000 < 990 THEN 'waiting'
    WHEN x % 1000 < 999 THEN 'waiting' ELSE 'running' END"""
_TIMER = "x % 1000 BETWEEN 950 AND 989"
_APPROVAL = "x % 1000 BETWEEN 990 AND 998"
_SEQ = "WITH RECURSIVE seq(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM seq WHERE x + 1 < :count)"


def _stamp(epoch_expr: str) -> str:
    """SQL for a timestamp in Keel's format (``isoformat(timespec="microseconds")``, UTC)."""
    return f"(strftime('%Y-%m-%dT%H:%M:%S', {epoch_expr}, 'unixepoch') || '.000000+00:00')"


def populate(app: App, count: int, now: _dt.datetime) -> None:
    """Write ``count`` runs, their journals and their approval requests with bulk SQL."""
    ref = app.payloads.put({"ok": True, "note": "a recorded step outcome"})
    epoch = int(now.timestamp())
    # Created over the 30 days before now, oldest first; the timers wake 1 to 30 days from now.
    created = _stamp(f"{epoch} - 2592000 + x * 2592000 / :count")
    params = {"count": count, "ref": ref}
    with app.store.write() as tx:
        tx.execute(
            "INSERT INTO runs (run_id, workflow, tenant, agent, on_behalf_of, status, input, "
            "state, result, error, wake_at, deadline, lease_owner, lease_expires, attempts, "
            "parent_run, created_at, updated_at) "
            f"{_SEQ} SELECT printf('run_bulk_%09d', x), 'ticket', 'default', 'support-bot', "
            f"NULL, {_RUN_STATUS}, '{{\"ticket\":' || x || '}}', NULL, "
            "CASE WHEN x % 1000 < 900 THEN '\"resolved\"' END, "
            "CASE WHEN x % 1000 BETWEEN 900 AND 939 THEN "
            '\'{"code":"tool_error","message":"upstream said no"}\' END, '
            f"CASE WHEN {_TIMER} THEN {_stamp(f'{epoch} + 86400 + (x % 30) * 86400')} END, "
            "NULL, CASE WHEN x % 1000 = 999 THEN 'worker_elsewhere' END, "
            f"CASE WHEN x % 1000 = 999 THEN {_stamp(f'{epoch} + 10 * 86400')} END, 1, NULL, "
            f"{created}, {created} FROM seq",
            params,
        )
        # Step 0, a tool call, succeeded in every run but the running ones.
        tx.execute(
            "INSERT INTO journal (run_id, step_id, position, kind, target, call_digest, status, "
            "outcome_ref, error, approval_id, wake_at, started_at, finished_at) "
            f"{_SEQ} SELECT printf('run_bulk_%09d', x), '0', 0, 'tool', 'crm.lookup', "
            "'sha256:' || hex(randomblob(32)), "
            "CASE WHEN x % 1000 = 999 THEN 'started' ELSE 'succeeded' END, "
            f"CASE WHEN x % 1000 = 999 THEN NULL ELSE :ref END, NULL, NULL, NULL, "
            f"{created}, CASE WHEN x % 1000 = 999 THEN NULL ELSE {created} END FROM seq",
            params,
        )
        # Step 1: a reply (completed: succeeded; failed: failed), a timer or an approval.
        tx.execute(
            "INSERT INTO journal (run_id, step_id, position, kind, target, call_digest, status, "
            "outcome_ref, error, approval_id, wake_at, started_at, finished_at) "
            f"{_SEQ} SELECT printf('run_bulk_%09d', x), '1', 1, "
            f"CASE WHEN {_TIMER} THEN 'sleep' ELSE 'tool' END, "
            f"CASE WHEN {_TIMER} THEN 'sleep' ELSE 'tickets.reply' END, "
            "'sha256:' || hex(randomblob(32)), "
            "CASE WHEN x % 1000 < 900 THEN 'succeeded' WHEN x % 1000 < 950 THEN 'failed' "
            f"WHEN {_TIMER} THEN 'sleeping' ELSE 'waiting_approval' END, "
            "CASE WHEN x % 1000 < 900 THEN :ref END, "
            'CASE WHEN x % 1000 BETWEEN 900 AND 949 THEN \'{"code":"tool_error"}\' END, '
            f"CASE WHEN {_APPROVAL} THEN printf('apr_bulk_%09d', x) END, "
            f"CASE WHEN {_TIMER} THEN {_stamp(f'{epoch} + 86400 + (x % 30) * 86400')} END, "
            f"{created}, CASE WHEN x % 1000 < 950 THEN {created} END "
            "FROM seq WHERE x % 1000 <> 999",
            params,
        )
        # Step 2 of the completed runs: closing the ticket.
        tx.execute(
            "INSERT INTO journal (run_id, step_id, position, kind, target, call_digest, status, "
            "outcome_ref, error, approval_id, wake_at, started_at, finished_at) "
            f"{_SEQ} SELECT printf('run_bulk_%09d', x), '2', 2, 'tool', 'tickets.close', "
            "'sha256:' || hex(randomblob(32)), 'succeeded', :ref, NULL, NULL, NULL, "
            f"{created}, {created} FROM seq WHERE x % 1000 < 900",
            params,
        )
        tx.execute(
            "INSERT INTO approvals (approval_id, tenant, run_id, step_id, tool, binding, "
            "requested_by, on_behalf_of, rule_id, reason, arguments, approvals_required, "
            "approvers, escalate_to, status, decisions, created_at, deadline, decided_at, "
            "token_expires, used_at) "
            f"{_SEQ} SELECT printf('apr_bulk_%09d', x), 'default', printf('run_bulk_%09d', x), "
            "'1', 'billing.refund', 'sha256:' || hex(randomblob(32)), 'support-bot', NULL, "
            "'refund.over_limit', 'refund over the limit', '{\"amount\":\"900.00\"}', 1, "
            f"'[\"supervisor\"]', NULL, 'pending', '[]', {created}, "
            f"{_stamp(f'{epoch} + 7 * 86400')}, NULL, NULL, NULL FROM seq WHERE {_APPROVAL}",
            params,
        )
    # No ANALYZE: Keel does not run it, so the planner sees the store as a grown one would be.


def measure_resumes(
    directory: Path, bulk: int, resumes: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    clock = FrozenClock(_dt.datetime.now(_dt.UTC).replace(microsecond=0))
    app = build_resume_app(directory, clock)
    info: dict[str, Any] = {}
    if bulk:
        start = time.perf_counter()
        populate(app, bulk, clock.now())
        info["populate_s"] = time.perf_counter() - start
        info["db_mb"] = (
            sum(p.stat().st_size for p in directory.glob("keel.db*") if p.is_file()) / 2**20
        )
    runtime = app.runtime
    worker = runtime.worker(lease=30.0)
    # Each measured run sleeps a different time: one timer is due at a time.
    start = time.perf_counter()
    for i in range(resumes):
        runtime.submit("reminder", {"i": i, "sleep": 3600 + i}, run_id=f"run_resume_{i:06d}")
        clock.advance(seconds=0.001)  # distinct created_at, like real submissions
    for _ in range(resumes):
        assert worker.run_once() == "waiting"
    info["setup_s"] = time.perf_counter() - start
    info["runs_in_store"] = sum(runtime.runs.counts().values())

    claims: list[float] = []
    wakes: list[float] = []
    original_claim, original_wake = runtime.runs.claim, runtime.wake_decided

    def timed_claim(owner: str, lease: _dt.timedelta) -> Any:
        began = time.perf_counter()
        try:
            return original_claim(owner, lease)
        finally:
            claims.append(time.perf_counter() - began)

    def timed_wake(*args: Any, **kwargs: Any) -> int:
        began = time.perf_counter()
        try:
            return original_wake(*args, **kwargs)
        finally:
            wakes.append(time.perf_counter() - began)

    runtime.runs.claim = timed_claim  # type: ignore[method-assign]
    runtime.wake_decided = timed_wake  # type: ignore[method-assign]
    totals: list[float] = []
    due = clock.now()
    for i in range(resumes):
        record = runtime.get(f"run_resume_{i:06d}")
        assert record.status == "waiting" and record.wake_at is not None
        if record.wake_at > due:
            clock.advance(seconds=(record.wake_at - due).total_seconds())
            due = clock.now()
        began = time.perf_counter()
        status = worker.run_once()
        totals.append(time.perf_counter() - began)
        assert status == "completed", status
        assert runtime.get(f"run_resume_{i:06d}").status == "completed"
    claimed, woken = claims[:resumes], wakes[:resumes]
    assert worker.run_once() is None  # nothing else became runnable
    info["plan"] = claim_plan(app, clock.now())
    app.close()
    return {
        "resume": totals,
        "claim": claimed,
        "wake_decided": woken,
        "without_wake": [total - wake for total, wake in zip(totals, woken, strict=True)],
    }, info


def claim_plan(app: App, now: _dt.datetime) -> str:
    stamp = ts(now)
    with app.store.read() as tx:
        rows = tx.fetchall(
            "EXPLAIN QUERY PLAN SELECT run_id, status FROM runs WHERE "
            "(status = 'pending') OR "
            "(status = 'waiting' AND wake_at IS NOT NULL AND wake_at <= ?) OR "
            "(status = 'running' AND lease_expires < ?) "
            "ORDER BY created_at LIMIT 1",
            (stamp, stamp),
        )
    return "; ".join(str(row[-1]) for row in rows)


# -- recovery after kill -9 -------------------------------------------------------------------------


def build_bank_app(directory: Path, step_ms: float) -> tuple[App, sqlite3.Connection]:
    config = KeelConfig(store_url=f"sqlite:///{directory / 'keel.db'}", home=directory / "home")
    app = App(config)
    app.add_policy(POLICY)
    bank = sqlite3.connect(directory / "bank.db", isolation_level=None, check_same_thread=False)
    bank.execute("PRAGMA journal_mode=WAL")
    bank.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT NOT NULL, amount INTEGER)")

    def reconcile(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        row = bank.execute(
            "SELECT amount FROM effects WHERE key = ?", (ctx.idempotency_key,)
        ).fetchone()
        return None if row is None else {"paid": row[0], "reconciled": True}

    # Irreversible, no idempotency keys: a blind retry would pay twice. The hook asks the bank.
    @app.tool("bank.pay", scope="bench:write", effect="irreversible", reconcile=reconcile)
    def pay(amount: int, ctx: ToolContext) -> dict[str, Any]:
        bank.execute("INSERT INTO effects VALUES (?, ?)", (ctx.idempotency_key, amount))
        time.sleep(step_ms / 1000)  # the rest of the call, e.g. waiting for the bank's answer
        return {"paid": amount}

    @app.workflow("payouts", agent="bank-bot", scopes=SCOPES)
    async def payouts(run: Any, data: dict[str, int]) -> str:
        for i in range(data["steps"]):
            await run.tool("bank.pay", {"amount": 100 + i})
        return "paid"

    return app, bank


def worker_main(directory: Path, lease: float, step_ms: float, steps: int, first: bool) -> None:
    """A worker subprocess. Prints JSON timings (time.monotonic, shared by processes on Linux)."""
    app, _bank = build_bank_app(directory, step_ms)
    ready = time.monotonic()
    runtime = app.runtime
    out: dict[str, Any] = {"imported": IMPORTED, "ready": ready}
    if first:
        runtime.submit("payouts", {"steps": steps}, run_id="run_payout")
    worker = runtime.worker(lease=lease)
    original_claim = runtime.runs.claim

    def claim(owner: str, lease_: _dt.timedelta) -> Any:
        record = original_claim(owner, lease_)
        if record is not None and "claimed" not in out:
            out["claimed"] = time.monotonic()
            out["claimed_from"] = "running (recovered)" if record.attempts > 1 else "pending"
        return record

    runtime.runs.claim = claim  # type: ignore[method-assign]
    while runtime.get("run_payout").status not in ("completed", "failed", "parked", "escalated"):
        if worker.run_once() is None:
            time.sleep(0.01)  # poll for the dead worker's lease to expire
    out["done"] = time.monotonic()
    out["status"] = runtime.get("run_payout").status
    out["audit_ok"] = app.verify_audit().ok
    app.close()
    print(json.dumps(out), flush=True)


def recovery_trial(
    kill_at: int, steps: int, lease: float, step_ms: float, python: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="keel-bench-recovery-") as tmp:
        directory = Path(tmp)
        common = [
            "--lease",
            str(lease),
            "--step-ms",
            str(step_ms),
            "--steps",
            str(steps),
        ]
        first = subprocess.Popen(
            [python, str(HERE), "--worker", tmp, "--first", *common],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        bank_path = directory / "bank.db"
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline:
            if first.poll() is not None:
                raise RuntimeError(f"the first worker ended early: {first.stderr.read()!r}")
            if bank_path.exists():
                try:
                    with sqlite3.connect(bank_path) as bank:
                        seen = bank.execute("SELECT COUNT(*) FROM effects").fetchone()[0]
                except sqlite3.OperationalError:
                    seen = 0  # the table is not there yet
            if seen >= kill_at + 1:  # step kill_at has paid; its tool call is still running
                break
            time.sleep(0.001)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        if first.stderr is not None:
            first.stderr.close()
        killed_at = time.monotonic()
        spawned = time.monotonic()
        second = subprocess.run(
            [python, str(HERE), "--worker", tmp, *common],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if second.returncode != 0:
            raise RuntimeError(f"the recovering worker failed: {second.stderr[-2000:]}")
        out = json.loads(second.stdout.strip().splitlines()[-1])
        with sqlite3.connect(bank_path) as bank:
            rows = bank.execute("SELECT key, COUNT(*) FROM effects GROUP BY key").fetchall()
        keys: dict[str, int] = dict(rows)
        expected = {f"run_payout/{i}" for i in range(steps)}
        config = KeelConfig(store_url=f"sqlite:///{directory / 'keel.db'}", home=directory / "home")
        with App(config) as app:
            journal = app.runtime.steps("run_payout")
            reconciled = sum(
                1
                for r in query(app.store, run_id="run_payout", kind="control")
                if r.entry.rule_id == "run.reconcile"
            )
        return {
            "kill_at": kill_at,
            "killed_after_effects": seen,
            "status": out["status"],
            "audit_ok": out["audit_ok"],
            "steps_succeeded": sum(1 for s in journal if s.status == "succeeded"),
            "effects": sum(keys.values()),
            "duplicates": sum(n - 1 for n in keys.values() if n > 1),
            "missing": len(expected - set(keys)),
            "reconciled": reconciled,
            "startup_s": out["ready"] - spawned,
            "import_s": out["imported"] - spawned,
            "lease_wait_s": out["claimed"] - out["ready"],
            "after_claim_s": out["done"] - out["claimed"],
            "recovery_s": out["done"] - spawned,
            "kill_to_done_s": out["done"] - killed_at,
        }


# -- main -------------------------------------------------------------------------------------------


def fmt_ms(samples: list[float]) -> str:
    return (
        f"{pct(samples, 0.5) * 1e3:8.2f}  {pct(samples, 0.99) * 1e3:8.2f}  "
        f"{max(samples) * 1e3:8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs written in bulk")
    parser.add_argument("--resumes", type=int, default=2000, help="resumes measured")
    parser.add_argument("--trials", type=int, default=5, help="kill -9 trials")
    parser.add_argument("--lease", type=float, default=1.0, help="worker lease, seconds")
    parser.add_argument("--steps", type=int, default=10, help="steps of the killed run")
    parser.add_argument("--step-ms", type=float, default=20.0, help="time in each tool call")
    parser.add_argument("--skip-recovery", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--first", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(Path(args.worker), args.lease, args.step_ms, args.steps, args.first)
        return

    began = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}
    infos: dict[str, dict[str, Any]] = {}
    for label, bulk in (("empty store", 0), (f"{args.runs:,} runs in the store", args.runs)):
        print(f"resume: {label} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="keel-bench-resume-") as tmp:
            results[label], infos[label] = measure_resumes(Path(tmp), bulk, args.resumes)
        info = infos[label]
        if "populate_s" in info:
            print(
                f"  wrote {args.runs:,} runs with their journals in {info['populate_s']:.1f} s "
                f"({info['db_mb']:.0f} MB); {args.resumes} runs to resume made in "
                f"{info['setup_s']:.1f} s",
                flush=True,
            )

    print(f"\nresume of a waiting run whose timer is due ({args.resumes} resumes), ms")
    print(f"{'store':32}  {'measurement':44}  {'p50':>8}  {'p99':>8}  {'max':>8}")
    names = {
        "resume": "worker.run_once(): claim + resume to the end",
        "claim": "  of which the claim transaction",
        "wake_decided": "  of which the approval-wake check",
        "without_wake": "run_once() less the approval-wake check",
    }
    for label, measured in results.items():
        for key, name in names.items():
            print(f"{label:32}  {name:44}  {fmt_ms(measured[key])}")
    for label, info in infos.items():
        print(f"claim plan, {label}: {info['plan']}")
        print(f"runs in the store, {label}: {info['runs_in_store']:,}")
    big = results[f"{args.runs:,} runs in the store"]["resume"]
    print(
        f"\nresume p99 with {args.runs:,} runs: {pct(big, 0.99) * 1e3:.2f} ms "
        f"(target ≤ 5 ms: {'met' if pct(big, 0.99) <= 0.005 else 'NOT met'})"
    )

    if args.skip_recovery or args.trials <= 0:
        print(f"bench took {time.perf_counter() - began:.0f} s")
        return
    print(
        f"\nrecovery after kill -9: {args.trials} trials, lease {args.lease:g} s, "
        f"{args.steps} steps of {args.step_ms:g} ms ...",
        flush=True,
    )
    trials = []
    for t in range(args.trials):
        kill_at = 1 + (t * (args.steps - 2)) // max(1, args.trials - 1)
        trials.append(recovery_trial(kill_at, args.steps, args.lease, args.step_ms, sys.executable))
    print(
        f"{'killed in step':>14}  {'start-up s':>10}  {'(imports)':>9}  {'lease wait s':>12}  "
        f"{'after claim s':>13}  {'recovery s':>10}  {'reconciled':>10}  {'effects':>7}  "
        f"{'dupes':>5}  status"
    )
    for r in trials:
        print(
            f"{r['kill_at']:14d}  {r['startup_s']:10.3f}  {r['import_s']:9.3f}  "
            f"{r['lease_wait_s']:12.3f}  {r['after_claim_s']:13.3f}  {r['recovery_s']:10.3f}  "
            f"{r['reconciled']:10d}  {r['effects']:7d}  {r['duplicates']:5d}  {r['status']}"
        )
    duplicates = sum(r["duplicates"] for r in trials)
    missing = sum(r["missing"] for r in trials)
    recovery = [r["recovery_s"] for r in trials]
    print(
        f"\nrecovery (new worker's start → run completed): median "
        f"{statistics.median(recovery):.3f} s, max {max(recovery):.3f} s, with a lease of "
        f"{args.lease:g} s; without the lease wait: median "
        f"{statistics.median(r['recovery_s'] - r['lease_wait_s'] for r in trials):.3f} s"
    )
    print(
        f"duplicate effects: {duplicates}, missing effects: {missing}, runs completed: "
        f"{sum(r['status'] == 'completed' for r in trials)}/{len(trials)}, audit chains intact: "
        f"{sum(bool(r['audit_ok']) for r in trials)}/{len(trials)}"
    )
    print(f"bench took {time.perf_counter() - began:.0f} s")


IMPORTED = time.monotonic()

if __name__ == "__main__":
    main()
