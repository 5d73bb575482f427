"""``keel demo``: a scripted support agent works 50 tickets through the real gateway."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from keel.app import App
from keel.audit import VerifyReport
from keel.configfile import load_config
from keel.demo.agent import propose_actions
from keel.demo.shop import Shop, load_tickets
from keel.demo.tools import register_tools
from keel.errors import ApprovalRequired, KeelError

__all__ = ["DemoReport", "run_demo"]

AGENT_SCOPES = (
    "tickets:read",
    "tickets:write",
    "orders:read",
    "billing:write",
    "email:send",
    "crm:write",
)
_STYLE = {
    "allow": "green",
    "deny": "red",
    "require_approval": "yellow",
    "escalate": "magenta",
    "replayed": "cyan",
}


@dataclass
class Row:
    ticket: str
    kind: str
    tool: str
    detail: str
    decision: str
    rule_id: str
    reason: str


@dataclass
class DemoReport:
    rows: list[Row] = field(default_factory=list)
    calls: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    effects: dict[str, int] = field(default_factory=dict)
    audit: VerifyReport | None = None
    directory: Path = Path()


def _summary(tool: str, args: dict[str, Any]) -> str:
    if tool == "billing.refund":
        return f"${args['amount']:,.2f} → {args['destination']}"
    if tool == "email.send":
        return f"to {args['to']}"
    if tool == "crm.delete_customer":
        return "delete customer record"
    if tool == "tickets.reply":
        return str(args["message"])
    return ", ".join(f"{k}={v}" for k, v in args.items())


def prepare(directory: Path) -> Path:
    """Create a fresh demo folder with its config and policy; return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("keel.db", "keel.db-wal", "keel.db-shm", "shop.db", "shop.db-wal", "shop.db-shm"):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / ".keel", ignore_errors=True)
    policy = (
        resources.files("keel.demo").joinpath("data").joinpath("policy.yaml").read_text("utf-8")
    )
    (directory / "policy.yaml").write_text(policy, encoding="utf-8")
    (directory / "call.json").write_text(
        json.dumps(
            {
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
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    config = directory / "keel.yaml"
    config.write_text(
        "# Written by `keel demo`. Paths are relative to this file.\n"
        "store_url: sqlite:///keel.db\n"
        "home: .keel\n"
        "policy_paths: [policy.yaml]\n"
        "audit_checkpoint_every: 100\n",
        encoding="utf-8",
    )
    return config


def run_demo(directory: Path, *, console: Console, quiet: bool = False) -> DemoReport:
    config_path = prepare(directory)
    report = DemoReport(directory=directory)
    tickets = load_tickets()
    by_id = {t["id"]: t for t in tickets}
    shop = Shop(directory / "shop.db")
    with App(load_config(config_path)) as app:
        register_tools(app, shop, by_id)
        agent = app.agent(
            "support-bot",
            tenant="acme",
            scopes=AGENT_SCOPES,
            roles=("support",),
            on_behalf_of="support-team@example.com",
        )

        def attempt(
            ticket: dict[str, Any],
            step: int,
            tool: str,
            args: dict[str, Any],
            *,
            tainted: bool,
            show: bool,
        ) -> Any:
            report.calls += 1
            run_id = f"run-{ticket['id']}"
            try:
                result = agent.call(
                    tool,
                    args,
                    run_id=run_id,
                    step_id=str(step),
                    workflow="support",
                    tainted=tainted,
                )
            except KeelError as exc:
                decision = "require_approval" if isinstance(exc, ApprovalRequired) else "deny"
                if exc.code == "escalated":
                    decision = "escalate"
                rule = str(exc.context.get("rule_id", exc.code))
                reason = exc.message
                value = None
            else:
                decision = "replayed" if result.replayed else result.verdict.decision
                rule = result.verdict.rule_id
                reason = result.verdict.reason
                value = result.value
            report.decisions[decision] += 1
            report.rules[rule] += 1
            if show:
                report.rows.append(
                    Row(
                        ticket["id"],
                        ticket["kind"],
                        tool,
                        _summary(tool, args),
                        decision,
                        rule,
                        reason,
                    )
                )
            return value

        for ticket in tickets:
            read = attempt(
                ticket, 1, "tickets.read", {"ticket_id": ticket["id"]}, tainted=False, show=False
            )
            order = attempt(
                ticket,
                2,
                "orders.lookup",
                {"order_id": ticket["order_id"]},
                tainted=True,
                show=False,
            )
            if read is None:
                continue
            for step, (tool, args) in enumerate(propose_actions(ticket, order), start=3):
                attempt(ticket, step, tool, args, tainted=True, show=True)

        # A flaky network redelivers three refunds: same run and step, so same idempotency key.
        refunded = [r for r in report.rows if r.tool == "billing.refund" and r.decision == "allow"]
        for row in refunded[:3]:
            ticket = by_id[row.ticket]
            step = 3
            tool, args = propose_actions(ticket, None)[0]
            attempt(ticket, step, tool, args, tainted=True, show=True)

        # An operator stops all refunds; the next refund is denied without a deploy.
        app.kill_switches.engage(
            "tool", "billing.refund", reason="refund incident drill", actor="oncall@example.com"
        )
        drill = next(t for t in tickets if t["kind"] == "refund" and t["refund_amount"] <= 200)
        attempt(
            drill, 99, "billing.refund", propose_actions(drill, None)[0][1], tainted=True, show=True
        )
        app.kill_switches.release(
            "tool", "billing.refund", reason="drill over", actor="oncall@example.com"
        )

        app.audit.checkpoint()
        report.audit = app.verify_audit()
    report.effects = {
        t: shop.count(t) for t in ("refunds", "replies", "outbox", "deleted_customers")
    }
    shop.close()
    _print(report, console, quiet=quiet, config_path=config_path)
    return report


def _print(report: DemoReport, console: Console, *, quiet: bool, config_path: Path) -> None:
    if not quiet:
        table = Table(
            title="Keel demo — what the support agent tried, and what Keel decided",
            show_lines=False,
        )
        table.add_column("ticket", no_wrap=True)
        table.add_column("tool", no_wrap=True)
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
    summary = Table(title="Decisions", show_header=True)
    summary.add_column("verdict")
    summary.add_column("calls", justify="right")
    for decision, count in report.decisions.most_common():
        summary.add_row(f"[{_STYLE.get(decision, '')}]{decision}[/]", str(count))
    console.print(summary)
    rules = Table(title="Stopped calls by rule", show_header=True)
    rules.add_column("rule")
    rules.add_column("calls", justify="right")
    stopped = Counter(r.rule_id for r in report.rows if r.decision not in ("allow", "replayed"))
    for rule, count in stopped.most_common():
        rules.add_row(rule, str(count))
    console.print(rules)
    e = report.effects
    console.print(
        f"Effects in the shop: [bold]{e['refunds']}[/] refunds, {e['replies']} replies, "
        f"{e['outbox']} emails sent, {e['deleted_customers']} customers deleted "
        f"({report.calls} governed calls)."
    )
    audit = report.audit
    if audit is not None and audit.ok:
        console.print(
            f"[green]✓ audit chain verified[/]: {audit.records_checked} records, "
            f"signed checkpoints checked."
        )
    elif audit is not None:
        console.print(f"[red]✗ audit chain broken[/]: {audit.problem}")
    console.print(
        "\nTry next:\n"
        f"  keel audit verify --config {config_path}\n"
        f"  keel audit show --config {config_path} --tool billing.refund --limit 5\n"
        f"  keel policy explain {config_path.parent / 'policy.yaml'} "
        f"--call {config_path.parent / 'call.json'}\n"
    )
