"""``keel demo``: 200 support tickets and 50 purchase requests as durable runs.

The demo submits the runs, starts a real ``keel worker`` process, plays a scripted approver who
grants or denies what waits for a person, kills the worker with SIGKILL half-way and starts
another that recovers its runs, then reports what happened and writes ``report.html``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from keel.app import App
from keel.approvals import Operator
from keel.audit import VerifyReport, query
from keel.demo.models import MODEL_SETTINGS
from keel.demo.report import write_html
from keel.demo.shop import load_tickets
from keel.demo.workflows import build_demo_app
from keel.errors import KeelError
from keel.ledger.forecast import Backtest, backtest
from keel.runtime.history import RunSummary, run_observations, run_summaries
from keel.runtime.journal import FINAL_STATES

__all__ = ["DemoReport", "prepare", "run_demo"]

TICKETS = 200
PURCHASES = 50
_ENDED = FINAL_STATES | {"parked"}
_APPROVERS = (
    Operator("ana@example.com", frozenset({"approver", "support-lead", "finance-lead"})),
    Operator("ben@example.com", frozenset({"approver", "support-lead", "finance-lead"})),
)


@dataclass
class DemoReport:
    directory: Path = Path()
    runs: dict[str, Counter[str]] = field(default_factory=dict)
    summaries: dict[str, list[RunSummary]] = field(default_factory=dict)
    approvals: Counter[str] = field(default_factory=Counter)
    stops: Counter[str] = field(default_factory=Counter)
    effects: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    failed_attempts: int = 0
    breaker_trips: int = 0
    crash: dict[str, Any] = field(default_factory=dict)
    backtest: Backtest | None = None
    audit: VerifyReport | None = None
    seconds: float = 0.0

    def cost(self, workflow: str) -> Decimal:
        return sum((r.cost_usd for r in self.summaries.get(workflow, [])), Decimal("0"))

    def per_completed(self, workflow: str) -> Decimal:
        done = self.runs.get(workflow, Counter())["completed"]
        return self.cost(workflow) / done if done else Decimal("0")


def prepare(directory: Path, *, seed: int = 7) -> Path:
    """A fresh demo folder: config, policies, a sample call, tickets and purchase requests."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("keel.db", "keel.db-wal", "keel.db-shm", "shop.db", "shop.db-wal", "shop.db-shm"):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / ".keel", ignore_errors=True)
    data = resources.files("keel.demo").joinpath("data")
    for name in ("policy.yaml", "procurement.yaml"):
        (directory / name).write_text(data.joinpath(name).read_text("utf-8"), encoding="utf-8")
    sample = {
        "tool": "billing.refund",
        "arguments": {
            "order_id": "ORD-10037",
            "amount": 450,
            "currency": "USD",
            "destination": "original_payment_method",
            "reason": "wrong item",
        },
        "agent": "support-bot",
        "tenant": "acme",
        "effect": "irreversible",
    }
    (directory / "call.json").write_text(json.dumps(sample, indent=2) + "\n", encoding="utf-8")
    rng = random.Random(seed)
    templates = load_tickets()
    tickets = [dict(t) for t in templates]
    while len(tickets) < TICKETS:
        tickets.append(dict(rng.choice(templates), id=f"T-{2000 + len(tickets)}"))
    (directory / "tickets.json").write_text(json.dumps(tickets), encoding="utf-8")
    vendors = ["Vendor_A", "Vendor_A", "Vendor_B", "Vendor_B", "Vendor_C"]
    items = ["laptops", "desk chairs", "monitors", "a server", "licences", "headsets"]
    requests = [
        {
            "id": f"PR-{100 + n}",
            "vendor": rng.choice(vendors),
            "item": rng.choice(items),
            "amount": round(rng.lognormvariate(8.0, 0.8), 2),
            "requester": f"buyer{n % 7}@example.com",
        }
        for n in range(PURCHASES)
    ]
    (directory / "requests.json").write_text(json.dumps(requests), encoding="utf-8")
    config = directory / "keel.yaml"
    settings = {
        "store_url": "sqlite:///keel.db",
        "home": ".keel",
        "policy_paths": ["policy.yaml", "procurement.yaml"],
        "audit_checkpoint_every": 500,
        "models": MODEL_SETTINGS,
    }
    config.write_text(
        "# Written by `keel demo`. Paths are relative to this file.\n"
        + yaml.safe_dump(settings, sort_keys=False),
        encoding="utf-8",
    )
    return config


def _start_worker(directory: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KEEL_DEMO_DIR": str(directory)}
    handle = log.open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keel.cli",
            "worker",
            "--app",
            "keel.demo.workflows:demo_app",
            "--config",
            str(directory / "keel.yaml"),
            "--lease",
            "2",
            "--poll",
            "0.05",
        ],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def _decide(app: App) -> None:
    """The scripted approver: decides what waits for a person, like a busy team would."""
    for request in app.approvals.list(status="pending", limit=500):
        key = sum(request.binding.encode()) % 10
        amount = float((request.arguments or {}).get("amount", 0) or 0)
        try:
            if request.rule_id.startswith("burn:"):
                app.approvals.deny(
                    request.approval_id, _APPROVERS[0], reason="runaway loop: stop it"
                )
            elif request.tool == "procurement.purchase" and amount > 8000:
                app.approvals.deny(
                    request.approval_id, _APPROVERS[1], reason="over the quarter's budget"
                )
            elif key < 2:
                app.approvals.deny(
                    request.approval_id, _APPROVERS[0], reason="customer history needs review"
                )
            else:
                for operator in _APPROVERS[: max(request.approvals_required, 1)]:
                    app.approvals.approve(request.approval_id, operator, note="checked")
        except KeelError:
            continue  # decided meanwhile, or not ours to decide: leave it


def run_demo(
    directory: Path, *, console: Console, quiet: bool = False, crash: bool = True
) -> DemoReport:
    started = time.monotonic()
    config_path = prepare(directory)
    report = DemoReport(directory=directory)
    tickets = json.loads((directory / "tickets.json").read_text(encoding="utf-8"))
    requests = json.loads((directory / "requests.json").read_text(encoding="utf-8"))
    log = directory / "worker.log"
    log.unlink(missing_ok=True)
    with build_demo_app(directory) as app:
        for ticket in tickets:
            app.runtime.submit(
                "support", ticket, run_id=f"run-{ticket['id']}", on_behalf_of=ticket["email"]
            )
        for request in requests:
            app.runtime.submit(
                "procurement",
                request,
                run_id=f"run-{request['id']}",
                on_behalf_of=request["requester"],
            )
        total = len(tickets) + len(requests)
        worker = _start_worker(directory, log)
        killed_at: int | None = None
        deadline = time.monotonic() + 120
        with Progress(
            TextColumn("[bold]durable runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            disable=quiet,
            transient=False,
        ) as progress:
            task = progress.add_task("runs", total=total, note="")
            while time.monotonic() < deadline:
                counts = app.runtime.runs.counts()
                ended = sum(n for status, n in counts.items() if status in _ENDED)
                waiting = counts.get("waiting", 0)
                progress.update(task, completed=ended, note=f"{waiting} waiting for a person")
                if crash and killed_at is None and ended >= total * 0.4:
                    worker.send_signal(signal.SIGKILL)  # kill -9, mid-run
                    worker.wait()
                    killed_at = ended
                    report.crash = {"killed_after": ended, "running": counts.get("running", 0)}
                    progress.update(task, note="worker killed with SIGKILL; a new one recovers")
                    worker = _start_worker(directory, log)
                _decide(app)
                if ended >= total:
                    break
                time.sleep(0.1)
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
        _collect(app, report)
    report.seconds = time.monotonic() - started
    _print(report, console, quiet=quiet, config_path=config_path)
    write_html(report, directory / "report.html")
    return report


def _collect(app: App, report: DemoReport) -> None:
    for workflow in ("support", "procurement"):
        runs = app.runtime.runs.find(workflow=workflow, limit=100000)
        report.runs[workflow] = Counter(r.status for r in runs)
        report.summaries[workflow] = run_summaries(app.store, workflow=workflow)
    report.approvals = Counter(str(a.status) for a in app.approvals.list(limit=1000))
    for record in query(app.store, decision="deny", limit=10000):
        report.stops[record.entry.rule_id or "?"] += 1
        if (record.entry.rule_id or "").startswith("breaker:"):
            report.breaker_trips += 1
    report.failed_attempts = sum(
        1 for r in query(app.store, kind="call", limit=10000) if r.entry.body.get("error")
    )
    recovered = query(app.store, kind="control", limit=10000)
    report.crash["recovered"] = sum(1 for r in recovered if r.entry.rule_id == "run.recovered")
    shop_db = report.directory / "shop.db"
    import sqlite3

    conn = sqlite3.connect(shop_db)
    for table in ("refunds", "purchases", "outbox", "replies", "deleted_customers"):
        report.effects[table] = int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    report.duplicates = int(
        conn.execute(
            "SELECT COUNT(*) FROM (SELECT idempotency_key FROM refunds GROUP BY idempotency_key "
            "HAVING COUNT(*) > 1) UNION ALL SELECT COUNT(*) FROM (SELECT idempotency_key FROM "
            "purchases GROUP BY idempotency_key HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    )
    conn.close()
    try:
        report.backtest = backtest(run_observations(app.store, "support"), seed=7)
    except KeelError:
        report.backtest = None
    app.audit.checkpoint()
    report.audit = app.verify_audit()


def _usd(value: Decimal, places: int = 6) -> str:
    return f"${value:,.{places}f}"


def _print(report: DemoReport, console: Console, *, quiet: bool, config_path: Path) -> None:
    outcomes = Table(title="Runs by outcome")
    outcomes.add_column("workflow")
    statuses = sorted({s for c in report.runs.values() for s in c})
    for status in statuses:
        outcomes.add_column(status, justify="right")
    outcomes.add_column("cost / completed", justify="right")
    for workflow, counts in report.runs.items():
        outcomes.add_row(
            workflow,
            *(str(counts.get(s, 0)) for s in statuses),
            _usd(report.per_completed(workflow)),
        )
    console.print(outcomes)
    stops = Table(title="Calls stopped, by rule")
    stops.add_column("rule")
    stops.add_column("calls", justify="right")
    for rule, count in report.stops.most_common(12):
        stops.add_row(rule, str(count))
    if not quiet:
        console.print(stops)
    approvals = ", ".join(f"{n} {s}" for s, n in report.approvals.most_common())
    console.print(f"Approvals: {approvals or 'none'}.")
    console.print(
        f"Reliability: {report.failed_attempts} failed attempts recorded (malformed model "
        f"answers, retried), {report.breaker_trips} calls refused by an open circuit breaker."
    )
    crash = report.crash
    if crash:
        console.print(
            f"Crash: the worker was killed with SIGKILL after {crash.get('killed_after')} runs "
            f"had ended; a new worker recovered {crash.get('recovered', 0)} leased run(s). "
            f"Duplicate effects: [bold]{report.duplicates}[/]."
        )
    e = report.effects
    console.print(
        f"Effects: {e.get('refunds', 0)} refunds, {e.get('purchases', 0)} purchases, "
        f"{e.get('outbox', 0)} emails sent (internal notices), {e.get('deleted_customers', 0)} "
        "customers deleted."
    )
    total = report.cost("support") + report.cost("procurement")
    console.print(
        f"Cost: {_usd(total)} in all; {_usd(report.per_completed('support'))} per completed "
        f"ticket, {_usd(report.per_completed('procurement'))} per completed purchase request."
    )
    bt = report.backtest
    if bt is not None:
        fc = bt.forecast
        console.print(
            f"Forecast vs actual: calibrated on the first {bt.train_runs} tickets, the forecast "
            f"for the other {bt.test_runs} was {_usd(fc.total_expected)} "
            f"(P10 {_usd(fc.total_p10)} – P90 {_usd(fc.total_p90)}); "
            f"actual {_usd(bt.actual_total)}, error {bt.error_pct:+.1f}%."
        )
    audit = report.audit
    if audit is not None and audit.ok:
        console.print(
            f"[green]✓ audit chain verified[/]: {audit.records_checked} records, "
            "signed checkpoints checked."
        )
    elif audit is not None:
        console.print(f"[red]✗ audit chain broken[/]: {audit.problem}")
    folder = config_path.parent
    console.print(
        f"Done in {report.seconds:.1f} s. Report: {folder / 'report.html'}\n"
        "\nTry next:\n"
        f"  keel runs list --config {config_path} --status escalated\n"
        f"  keel approvals list --config {config_path}\n"
        f"  keel audit verify --config {config_path}\n"
        f"  keel budget show --config {config_path} --all-days\n"
        f"  keel forecast support --runs 1000 --config {config_path}\n"
        f"  keel policy explain {folder / 'policy.yaml'} --call {folder / 'call.json'}\n"
        "\nThe dashboard over this data (who approved what, cost per unit, forecast):\n"
        f"  keel keys create --name you --role admin --config {config_path}\n"
        f"  {_demo_dir_prefix(folder)}keel serve --app keel.demo.workflows:demo_app "
        f"--config {config_path}\n"
        "  then open http://127.0.0.1:8000/ and log in with the key\n"
    )


def _demo_dir_prefix(folder: Path) -> str:
    """``KEEL_DEMO_DIR=…`` when the demo is not in ``./keel-demo`` (where the demo's App looks)."""
    if folder.resolve() == Path("keel-demo").resolve():
        return ""
    return f"KEEL_DEMO_DIR={folder} "
