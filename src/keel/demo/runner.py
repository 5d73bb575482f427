"""``keel demo``: a scripted support agent works 51 tickets through the real gateway."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from keel.app import App
from keel.audit import VerifyReport
from keel.configfile import load_config
from keel.demo.agent import Attempt, SupportAgent, propose_actions
from keel.demo.models import MODEL_SETTINGS, scripted_models
from keel.demo.shop import Shop, load_tickets
from keel.demo.tools import register_tools
from keel.errors import KeelError
from keel.ledger.forecast import Backtest, backtest
from keel.runtime.history import RunSummary, run_observations, run_summaries

__all__ = ["DemoReport", "run_demo"]

AGENT_SCOPES = (
    "tickets:read",
    "tickets:write",
    "orders:read",
    "billing:write",
    "email:send",
    "crm:write",
    "models:invoke",
)
_STYLE = {
    "allow": "green",
    "deny": "red",
    "require_approval": "yellow",
    "escalate": "magenta",
    "replayed": "cyan",
}
_QUIET_TOOLS = ("tickets.read", "orders.lookup")


@dataclass
class DemoReport:
    rows: list[Attempt] = field(default_factory=list)
    calls: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    effects: dict[str, int] = field(default_factory=dict)
    runs: list[RunSummary] = field(default_factory=list)
    backtest: Backtest | None = None
    audit: VerifyReport | None = None
    directory: Path = Path()

    @property
    def total_cost(self) -> Decimal:
        return sum((r.cost_usd for r in self.runs), Decimal("0"))

    @property
    def completed(self) -> list[RunSummary]:
        return [r for r in self.runs if r.completed]

    @property
    def model_calls(self) -> int:
        return sum(r.model_calls for r in self.runs)


def prepare(directory: Path) -> Path:
    """Create a fresh demo folder with its config, policy and a sample call; return the config."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("keel.db", "keel.db-wal", "keel.db-shm", "shop.db", "shop.db-wal", "shop.db-shm"):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / ".keel", ignore_errors=True)
    data = resources.files("keel.demo").joinpath("data")
    (directory / "policy.yaml").write_text(
        data.joinpath("policy.yaml").read_text("utf-8"), encoding="utf-8"
    )
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
    config = directory / "keel.yaml"
    settings = {
        "store_url": "sqlite:///keel.db",
        "home": ".keel",
        "policy_paths": ["policy.yaml"],
        "audit_checkpoint_every": 100,
        "models": MODEL_SETTINGS,
    }
    config.write_text(
        "# Written by `keel demo`. Paths are relative to this file.\n"
        + yaml.safe_dump(settings, sort_keys=False),
        encoding="utf-8",
    )
    return config


def run_demo(directory: Path, *, console: Console, quiet: bool = False) -> DemoReport:
    config_path = prepare(directory)
    report = DemoReport(directory=directory)
    tickets = load_tickets()
    by_id = {t["id"]: t for t in tickets}
    shop = Shop(directory / "shop.db")
    triage, writer = scripted_models()

    def record(attempt: Attempt) -> None:
        report.calls += 1
        report.decisions[attempt.decision] += 1
        routine = attempt.tool in _QUIET_TOOLS or attempt.tool.startswith("model")
        if not (routine and attempt.decision == "allow"):
            report.rows.append(attempt)

    with App(load_config(config_path)) as app:
        register_tools(app, shop, by_id)
        app.add_model("triage-small", triage)
        app.add_model("writer-medium", writer)
        agent = app.agent(
            "support-bot",
            tenant="acme",
            scopes=AGENT_SCOPES,
            roles=("support",),
            on_behalf_of="support-team@example.com",
        )
        worker = SupportAgent(agent, record)
        for ticket in tickets:
            worker.handle(ticket)

        # A flaky network redelivers three refunds: same run and step, same idempotency key.
        refunded = [r for r in report.rows if r.tool == "billing.refund" and r.decision == "allow"]
        for row in refunded[:3]:
            ticket = by_id[row.ticket]
            _tool, args = propose_actions(ticket, None)[0]
            result = agent.call(
                "billing.refund",
                args,
                run_id=f"run-{ticket['id']}",
                step_id="4",
                workflow="support",
            )
            record(
                Attempt(
                    ticket["id"],
                    "billing.refund",
                    row.detail,
                    "replayed" if result.replayed else result.verdict.decision,
                    result.verdict.rule_id,
                    "redelivered: the recorded outcome is returned",
                )
            )

        # An operator stops all refunds; the next refund is denied without a deploy.
        app.kill_switches.engage(
            "tool", "billing.refund", reason="refund incident drill", actor="oncall@example.com"
        )
        drill = next(t for t in tickets if t["kind"] == "refund" and t["refund_amount"] <= 200)
        try:
            agent.call("billing.refund", propose_actions(drill, None)[0][1], run_id="drill")
        except KeelError as exc:
            record(
                Attempt(
                    drill["id"],
                    "billing.refund",
                    "refund during the drill",
                    "deny",
                    str(exc.context.get("rule_id", exc.code)),
                    exc.message,
                )
            )
        app.kill_switches.release(
            "tool", "billing.refund", reason="drill over", actor="oncall@example.com"
        )

        app.audit.checkpoint()
        report.runs = run_summaries(app.store, workflow="support")
        try:
            report.backtest = backtest(run_observations(app.store, "support"), seed=7)
        except KeelError:
            report.backtest = None
        report.audit = app.verify_audit()
    report.effects = {
        t: shop.count(t) for t in ("refunds", "replies", "outbox", "deleted_customers")
    }
    shop.close()
    _print(report, console, quiet=quiet, config_path=config_path)
    return report


def _usd(value: Decimal, places: int = 6) -> str:
    return f"${value:,.{places}f}"


def _print(report: DemoReport, console: Console, *, quiet: bool, config_path: Path) -> None:
    if not quiet:
        table = Table(title="Keel demo — what the support agent tried, and what Keel decided")
        table.add_column("ticket", no_wrap=True)
        table.add_column("call", no_wrap=True)
        table.add_column("request", overflow="fold", ratio=2)
        table.add_column("verdict", no_wrap=True)
        table.add_column("rule", overflow="fold", ratio=2)
        table.add_column("reason", overflow="fold", ratio=3)
        for row in report.rows:
            style = _STYLE.get(row.decision, "")
            table.add_row(
                row.ticket,
                row.tool,
                row.detail,
                f"[{style}]{row.decision}[/]",
                row.rule_id,
                row.reason,
            )
        console.print(table)
    summary = Table(title="Decisions")
    summary.add_column("verdict")
    summary.add_column("calls", justify="right")
    for decision, count in report.decisions.most_common():
        summary.add_row(f"[{_STYLE.get(decision, '')}]{decision}[/]", str(count))
    console.print(summary)
    rules = Table(title="Stopped calls by rule")
    rules.add_column("rule")
    rules.add_column("calls", justify="right")
    stopped = Counter(r.rule_id for r in report.rows if r.decision not in ("allow", "replayed"))
    for rule, count in stopped.most_common():
        rules.add_row(rule, str(count))
    console.print(rules)
    _print_costs(report, console)
    e = report.effects
    console.print(
        f"Effects in the shop: [bold]{e['refunds']}[/] refunds, {e['replies']} replies, "
        f"{e['outbox']} emails sent, {e['deleted_customers']} customers deleted "
        f"({report.calls} governed calls, {report.model_calls} of them model calls)."
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
        "\nTry next:\n"
        f"  keel audit verify --config {config_path}\n"
        f"  keel audit show --config {config_path} --tool billing.refund --limit 5\n"
        f"  keel budget show --config {config_path} --all-days\n"
        f"  keel forecast support --runs 1000 --config {config_path}\n"
        f"  keel policy explain {folder / 'policy.yaml'} --call {folder / 'call.json'}\n"
    )


def _print_costs(report: DemoReport, console: Console) -> None:
    completed = report.completed
    total = report.total_cost
    per_ticket = total / len(completed) if completed else Decimal("0")
    stopped = [r for r in report.runs if not r.completed]
    line = (
        f"Cost: {_usd(total)} for {len(report.runs)} tickets "
        f"({report.model_calls} model calls, metered and priced); "
        f"[bold]{_usd(per_ticket)} per completed ticket[/] ({len(completed)} completed"
    )
    if stopped:
        line += f"; {len(stopped)} stopped by a cap: " + ", ".join(
            f"{r.run_id} ({r.stopped_by})" for r in stopped
        )
    console.print(line + ").")
    bt = report.backtest
    if bt is not None:
        fc = bt.forecast
        console.print(
            f"Forecast vs actual: calibrated on the first {bt.train_runs} tickets, the forecast "
            f"for the other {bt.test_runs} was {_usd(fc.total_expected)} "
            f"(P10 {_usd(fc.total_p10)} – P90 {_usd(fc.total_p90)}); "
            f"actual {_usd(bt.actual_total)}, error {bt.error_pct:+.1f}%."
        )
