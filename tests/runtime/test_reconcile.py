"""The reconciliation job: what Keel recorded against what a bank's own database holds."""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from keel import App
from keel.audit import query
from keel.runtime.reconcile import reconcile
from keel.testing import FrozenClock, RecordingTool
from keel.tools import ToolContext

from .conftest import POLICY

SCOPES = ["bank:read", "bank:write"]


class Bank:
    """The system of record: a SQLite database the bank keeps, keyed by idempotency key."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS transfers "
            "(key TEXT PRIMARY KEY, account TEXT NOT NULL, amount INTEGER NOT NULL)"
        )
        self.down_for: set[str] = set()  # keys whose lookup fails
        self.lookups: list[ToolContext] = []

    def transfer(self, account: str, amount: int, ctx: ToolContext) -> dict[str, Any]:
        self.db.execute(
            "INSERT OR IGNORE INTO transfers VALUES (?, ?, ?)",
            (ctx.idempotency_key, account, amount),
        )
        return {"account": account, "amount": amount}

    def reconcile(self, arguments: Any, ctx: ToolContext) -> dict[str, Any] | None:
        self.lookups.append(ctx)
        if ctx.idempotency_key in self.down_for:
            raise ConnectionError("bank API unavailable")
        row = self.db.execute(
            "SELECT account, amount FROM transfers WHERE key = ?", (ctx.idempotency_key,)
        ).fetchone()
        return None if row is None else {"account": row[0], "amount": row[1]}

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM transfers").fetchone()[0])


def setup(app: App, bank: Bank) -> RecordingTool:
    app.tool(
        "bank.transfer",
        scope="bank:write",
        effect="irreversible",
        idempotent=True,
        reconcile=bank.reconcile,
    )(bank.transfer)
    balance = RecordingTool("bank.balance", scope="bank:read", result={"usd": 900})
    app.register(balance)

    @app.workflow("payout", agent="payout-bot", scopes=SCOPES)
    async def payout(run: Any, payload: dict[str, Any]) -> str:
        await run.tool("bank.balance", {})
        await run.tool("bank.transfer", {"account": payload["to"], "amount": payload["amount"]})
        await run.tool("bank.transfer", {"account": "fees", "amount": 1})
        return "paid"

    @app.workflow("sweep", agent="sweep-bot", scopes=SCOPES)
    async def sweep(run: Any, _input: Any) -> str:
        await run.tool("bank.transfer", {"account": "savings", "amount": 50})
        return "swept"

    return balance


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[Bank]:
    found = Bank(tmp_path / "bank.db")
    yield found
    found.db.close()


@pytest.fixture
def paid(app: App, bank: Bank) -> list[str]:
    """Three completed payouts: six transfers in the bank."""
    setup(app, bank)
    runs = [
        app.runtime.submit("payout", {"to": f"acct-{i}", "amount": 100 + i}).run_id
        for i in range(3)
    ]
    assert app.runtime.worker().drain() == {"completed": 3}
    assert bank.count() == 6
    return runs


def test_no_drift_when_the_bank_holds_every_recorded_transfer(
    app: App, bank: Bank, paid: list[str]
) -> None:
    report = reconcile(app)
    assert report.ok and report.findings == []
    assert report.tools == ("bank.transfer",)
    assert report.counts() == {
        "checked": 6,
        "matched": 6,
        "missing": 0,
        "differs": 0,
        "errors": 0,
        "open": 0,
    }
    # The hook got the context the runtime gives it: key <run>/<step>, run, step, tenant, agent.
    contexts = {(c.run_id, c.step_id): c for c in bank.lookups}
    first = contexts[(paid[0], "1")]
    assert first.idempotency_key == f"{paid[0]}/1"
    assert (first.tenant, first.agent_id, first.tool) == ("default", "payout-bot", "bank.transfer")
    (job,) = query(app.store, kind="control", tool="reconcile")
    assert job.entry.decision == "clean" and job.entry.rule_id == "reconcile.job"
    assert job.entry.body["checked"] == 6 and job.entry.body["job_id"] == report.job_id
    assert not [r for r in query(app.store, kind="control") if r.entry.rule_id == "reconcile.drift"]
    assert app.verify_audit().ok


def test_a_transfer_deleted_behind_keels_back_is_reported_missing(
    app: App, bank: Bank, paid: list[str]
) -> None:
    bank.db.execute("DELETE FROM transfers WHERE key = ?", (f"{paid[1]}/1",))
    report = reconcile(app)
    assert not report.ok
    assert (report.checked, report.matched, report.missing) == (6, 5, 1)
    (finding,) = report.findings
    assert (finding.kind, finding.run_id, finding.step_id) == ("missing", paid[1], "1")
    assert finding.tool == "bank.transfer" and finding.workflow == "payout"
    assert finding.recorded == {"account": "acct-1", "amount": 101}
    assert finding.arguments == "exact"
    (drift,) = [
        r for r in query(app.store, run_id=paid[1], kind="control") if r.entry.tool != "run:payout"
    ]
    assert drift.entry.rule_id == "reconcile.drift" and drift.entry.decision == "missing"
    assert drift.entry.step_id == "1"
    assert drift.entry.body["job_id"] == report.job_id
    (job,) = query(app.store, kind="control", tool="reconcile")
    assert job.entry.decision == "drift" and job.entry.body["missing"] == 1
    assert app.verify_audit().ok


def test_a_changed_amount_is_reported_with_the_differing_key(
    app: App, bank: Bank, paid: list[str]
) -> None:
    bank.db.execute("UPDATE transfers SET amount = 999 WHERE key = ?", (f"{paid[2]}/1",))
    report = reconcile(app)
    assert (report.matched, report.differs) == (5, 1)
    (finding,) = report.findings
    assert (finding.kind, finding.run_id, finding.step_id) == ("differs", paid[2], "1")
    assert finding.keys == ("amount",)
    assert finding.recorded == {"account": "acct-2", "amount": 102}
    assert finding.observed == {"account": "acct-2", "amount": 999}
    drift = next(r for r in query(app.store, run_id=paid[2]) if r.entry.decision == "differs")
    assert drift.entry.body["keys"] == ["amount"]
    assert "recorded_digest" in drift.entry.body
    assert "999" not in json.dumps(drift.entry.body)  # digests, not values, in the audit log


def test_comparing_only_chosen_keys(app: App, bank: Bank, paid: list[str]) -> None:
    bank.db.execute("UPDATE transfers SET account = 'renamed' WHERE key = ?", (f"{paid[0]}/1",))
    assert reconcile(app).differs == 1
    report = reconcile(app, keys={"bank.transfer": ["amount"]})
    assert report.ok and report.matched == 6
    bank.db.execute("UPDATE transfers SET amount = 7 WHERE key = ?", (f"{paid[0]}/1",))
    (finding,) = reconcile(app, keys={"bank.transfer": ["amount"]}).findings
    assert finding.keys == ("amount",)
    assert finding.recorded == {"amount": 100} and finding.observed == {"amount": 7}


def test_a_failing_hook_is_reported_as_an_error_and_the_job_goes_on(
    app: App, bank: Bank, paid: list[str]
) -> None:
    bank.down_for = {f"{paid[0]}/2"}
    bank.db.execute("DELETE FROM transfers WHERE key = ?", (f"{paid[2]}/2",))
    report = reconcile(app)
    assert (report.checked, report.matched, report.errors, report.missing) == (6, 4, 1, 1)
    kinds = {(f.kind, f.run_id, f.step_id) for f in report.findings}
    assert kinds == {("error", paid[0], "2"), ("missing", paid[2], "2")}
    error = next(f for f in report.findings if f.kind == "error")
    assert "ConnectionError" in error.message and "bank API unavailable" in error.message
    assert not report.ok


def test_filters_by_workflow_and_time(
    app: App, bank: Bank, paid: list[str], clock: FrozenClock
) -> None:
    clock.advance(days=10)
    swept = app.runtime.submit("sweep").run_id
    assert app.runtime.worker().drain() == {"completed": 1}
    bank.db.execute("DELETE FROM transfers")
    assert reconcile(app).missing == 7
    assert reconcile(app, workflow="sweep").missing == 1
    recent = reconcile(app, since=clock.now() - _dt.timedelta(days=7))
    assert [(f.run_id, f.kind) for f in recent.findings] == [(swept, "missing")]
    assert reconcile(app, tenant="elsewhere").checked == 0


def test_memory_stays_bounded_paging_and_capping_findings(
    app: App, bank: Bank, paid: list[str]
) -> None:
    bank.db.execute("DELETE FROM transfers")
    whole = reconcile(app)
    paged = reconcile(app, page_size=1, max_findings=2)
    assert (
        paged.counts()
        == whole.counts()
        == {
            "checked": 6,
            "matched": 0,
            "missing": 6,
            "differs": 0,
            "errors": 0,
            "open": 0,
        }
    )
    assert len(paged.findings) == 2 and paged.truncated and not whole.truncated
    assert [(f.run_id, f.step_id) for f in paged.findings] == [
        (f.run_id, f.step_id) for f in whole.findings[:2]
    ]


def test_open_steps_are_reported_with_what_the_bank_says(
    app: App, bank: Bank, clock: FrozenClock
) -> None:
    setup(app, bank)
    runs = app.runtime.runs
    record = app.runtime.submit("sweep")
    # A worker claims the run, journals the step as started and dies inside the tool: the bank
    # moved the money, Keel recorded nothing more.
    assert runs.claim("doomed-worker", _dt.timedelta(seconds=30)) is not None
    runs.begin_step(record.run_id, "0", 0, "tool", "bank.transfer", "sha256:unused")
    bank.db.execute("INSERT INTO transfers VALUES (?, 'savings', 50)", (f"{record.run_id}/0",))
    assert reconcile(app).findings == []  # its worker's lease is live: in progress
    clock.advance(minutes=1)
    report = reconcile(app)
    assert report.ok and report.open == 1 and report.checked == 0
    (finding,) = report.findings
    assert (finding.kind, finding.step_status, finding.run_status) == ("open", "started", "running")
    assert finding.found is True and "has the effect" in finding.message


def test_a_parked_step_with_an_unknown_outcome_is_open(app: App, bank: Bank) -> None:
    pushed = RecordingTool("bank.notify", scope="bank:write", effect="irreversible")
    app.register(pushed)

    @app.workflow("notify", agent="bot", scopes=SCOPES)
    async def notify(run: Any, _input: Any) -> None:
        await run.tool("bank.notify", {"text": "hi"})

    record = app.runtime.submit("notify")
    app.runtime.runs.begin_step(record.run_id, "0", 0, "tool", "bank.notify", "sha256:unused")
    error = {"code": "outcome_unknown", "message": "a person must check"}
    app.runtime.runs.finish_step(record.run_id, "0", "failed", error=error)
    app.runtime.runs.transition(record.run_id, "parked", error=error)
    (finding,) = reconcile(app).findings
    assert (finding.kind, finding.run_status, finding.found) == ("open", "parked", None)
    assert "parked" in finding.message


def test_the_cli_exits_1_on_drift_and_prints_json(
    app: App, bank: Bank, paid: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keel.cli._reconcile import reconcile_command

    def build() -> App:
        fresh = App(app.config, clock=app.clock)
        fresh.add_policy(POLICY)
        setup(fresh, bank)
        return fresh

    module = types.ModuleType("reconcile_cli_app")
    module.build = build  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "reconcile_cli_app", module)
    cli = typer.Typer()
    cli.command()(reconcile_command)
    runner = CliRunner()

    clean = runner.invoke(cli, ["--app", "reconcile_cli_app:build"])
    assert clean.exit_code == 0, clean.output
    assert "no drift" in clean.output and "checked 6" in clean.output

    bank.db.execute("DELETE FROM transfers WHERE key = ?", (f"{paid[0]}/2",))
    drift = runner.invoke(cli, ["--app", "reconcile_cli_app:build", "--json", "--since", "1d"])
    assert drift.exit_code == 1
    data = json.loads(drift.output)
    assert data["ok"] is False and data["missing"] == 1
    assert data["findings"][0]["run_id"] == paid[0]

    chosen = runner.invoke(
        cli, ["--app", "reconcile_cli_app:build", "--workflow", "sweep", "--compare", "x=a"]
    )
    assert chosen.exit_code == 0 and "checked 0" in chosen.output
    bad = runner.invoke(cli, ["--app", "reconcile_cli_app:build", "--compare", "bank.transfer"])
    assert bad.exit_code == 2
