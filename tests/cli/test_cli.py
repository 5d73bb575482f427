"""The `keel` command, run as a user runs it: a real subprocess against real files."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from keel.store import open_store

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "examples" / "policies" / "broken.yaml"
SUPPORT = ROOT / "examples" / "policies" / "support.yaml"


def keel(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("KEEL_STORE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "keel.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    done = keel("demo", "--dir", str(directory), "--quiet")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "audit chain verified" in done.stdout
    assert "per completed ticket" in done.stdout
    assert "Forecast vs actual" in done.stdout
    assert "Duplicate effects: 0" in done.stdout
    return directory


def test_demo_shows_allowed_denied_and_approval_required(demo: Path) -> None:
    done = keel("audit", "show", "--config", str(demo / "keel.yaml"), "--json", "--limit", "10000")
    records = [json.loads(line) for line in done.stdout.splitlines()]
    decisions = {r["decision"] for r in records}
    assert {"allow", "deny", "require_approval"} <= decisions
    rules = {r["rule_id"] for r in records}
    assert "default-deny" in rules
    assert any(rule.startswith("constraints") for rule in rules)
    assert "deny_external_email" in rules
    assert "allowed_vendors" in rules
    shop = sqlite3.connect(demo / "shop.db")
    (external,) = shop.execute(
        "SELECT COUNT(*) FROM outbox WHERE recipient NOT LIKE '%@example.com'"
    ).fetchone()
    (wild,) = shop.execute(
        "SELECT COUNT(*) FROM refunds WHERE destination != 'original_payment_method'"
    ).fetchone()
    (huge,) = shop.execute(
        "SELECT COUNT(*) FROM refunds WHERE CAST(amount AS REAL) > 1000"
    ).fetchone()
    (dupes,) = shop.execute(
        "SELECT COUNT(*) FROM (SELECT idempotency_key FROM refunds GROUP BY idempotency_key "
        "HAVING COUNT(*) > 1)"
    ).fetchone()
    (deleted,) = shop.execute("SELECT COUNT(*) FROM deleted_customers").fetchone()
    assert (external, wild, huge, dupes, deleted) == (0, 0, 0, 0, 0)
    serialized = json.dumps(records)
    assert "4111 1111 1111 1111" not in serialized
    assert "sk-live-abcdefghijklmnopqrstuvwx1234" not in serialized


def test_demo_runs_are_durable_and_the_crash_costs_nothing(demo: Path) -> None:
    shop = sqlite3.connect(demo / "shop.db")
    for table in ("refunds", "purchases", "outbox", "replies"):
        (dupes,) = shop.execute(
            f"SELECT COUNT(*) FROM (SELECT idempotency_key FROM {table} "
            "GROUP BY idempotency_key HAVING COUNT(*) > 1)"
        ).fetchone()
        assert dupes == 0
    (big_purchases,) = shop.execute(
        "SELECT COUNT(*) FROM purchases WHERE CAST(amount AS REAL) > 8000"
    ).fetchone()
    assert big_purchases == 0  # the scripted approver denies those
    runs = keel("runs", "list", "--config", str(demo / "keel.yaml"), "--limit", "500")
    assert runs.returncode == 0, runs.stderr
    states = sqlite3.connect(demo / "keel.db").execute("SELECT DISTINCT status FROM runs")
    assert {row[0] for row in states} <= {"completed", "escalated"}
    approvals = keel("approvals", "list", "--config", str(demo / "keel.yaml"), "--status", "used")
    assert approvals.returncode == 0, approvals.stderr
    assert (demo / "report.html").read_text(encoding="utf-8").count("<svg") >= 4


def test_audit_verify_passes_then_names_the_tampered_record(demo: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    ok = keel("audit", "verify", "--config", str(copy / "keel.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "verified" in ok.stdout
    db = sqlite3.connect(copy / "keel.db")
    (seq,) = db.execute("SELECT MIN(seq) FROM audit_records WHERE decision = 'deny'").fetchone()
    db.execute("UPDATE audit_records SET decision = 'allow' WHERE seq = ?", (seq,))
    db.commit()
    db.close()
    bad = keel("audit", "verify", "--config", str(copy / "keel.yaml"))
    assert bad.returncode == 1
    assert "BROKEN" in bad.stderr
    assert f"seq {seq}:" in bad.stderr


def test_audit_verify_catches_truncation(demo: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    db = sqlite3.connect(copy / "keel.db")
    db.execute("DELETE FROM audit_records WHERE seq > (SELECT MAX(seq) - 5 FROM audit_records)")
    db.execute("DELETE FROM audit_checkpoints")
    db.commit()
    db.close()
    bad = keel("audit", "verify", "--config", str(copy / "keel.yaml"))
    assert bad.returncode == 1, bad.stdout
    assert "BROKEN" in bad.stderr


def test_policy_check_names_line_and_key() -> None:
    good = keel("policy", "check", str(SUPPORT))
    assert good.returncode == 0, good.stderr
    assert "sha256:" in good.stdout
    bad = keel("policy", "check", str(BROKEN))
    assert bad.returncode == 2
    assert f"{BROKEN}:" in bad.stderr.replace("\n", "")
    assert "key '" in bad.stderr


def test_policy_check_reports_each_broken_file(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("policy: p\ntools:\n  alow: [a.b]\n", encoding="utf-8")
    done = keel("policy", "check", str(typo), str(SUPPORT))
    assert done.returncode == 2
    assert "typo.yaml:3" in done.stderr
    assert "tools.alow" in done.stderr
    assert "support.yaml" in done.stdout


def test_policy_explain_prints_json(tmp_path: Path) -> None:
    call = tmp_path / "call.json"
    call.write_text(
        json.dumps(
            {
                "tool": "billing.refund",
                "arguments": {
                    "order_id": "A-1",
                    "amount": 450,
                    "currency": "USD",
                    "destination": "original_payment_method",
                    "reason": "broken",
                },
                "agent": "support-bot",
                "tenant": "acme",
                "effect": "irreversible",
            }
        ),
        encoding="utf-8",
    )
    done = keel("policy", "explain", str(SUPPORT), "--call", str(call))
    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert decision["verdict"] == "require_approval"
    assert decision["rule_id"]
    assert decision["reason"]
    assert decision["policy_hash"].startswith("sha256:")


def test_policy_explain_rejects_bad_call_json(tmp_path: Path) -> None:
    call = tmp_path / "call.json"
    call.write_text('{"tool": "a.b", "tool": "c.d"}', encoding="utf-8")
    done = keel("policy", "explain", str(SUPPORT), "--call", str(call))
    assert done.returncode == 2
    assert "duplicate JSON key" in done.stderr


def test_token_mint_and_bad_ttl(tmp_path: Path) -> None:
    (tmp_path / "keel.yaml").write_text("home: .keel\n", encoding="utf-8")
    done = keel(
        "token",
        "mint",
        "--agent",
        "bot",
        "--tenant",
        "acme",
        "--scope",
        "orders:read",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2
    bad = keel(
        "token",
        "mint",
        "--agent",
        "bot",
        "--tenant",
        "acme",
        "--scope",
        "x:y",
        "--ttl",
        "7200",
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert "15 minutes" in bad.stderr


def test_kill_and_unkill_are_recorded(tmp_path: Path, store_url: str) -> None:
    (tmp_path / "keel.yaml").write_text(
        f"store_url: {json.dumps(store_url)}\nhome: .keel\n", encoding="utf-8"
    )
    assert keel("kill", "tenant", "acme", "--reason", "incident", cwd=tmp_path).returncode == 0
    listed = keel("kill", "--list", cwd=tmp_path)
    assert "tenant" in listed.stdout and "acme" in listed.stdout
    assert keel("unkill", "tenant", "acme", "--reason", "over", cwd=tmp_path).returncode == 0
    assert "no kill switch" in keel("kill", "--list", cwd=tmp_path).stdout
    bad = keel("kill", "planet", "mars", "--reason", "x", cwd=tmp_path)
    assert bad.returncode == 2
    assert "not one of" in bad.stderr
    shown = keel("audit", "show", "--json", cwd=tmp_path)
    actions = [json.loads(line)["body"]["action"] for line in shown.stdout.splitlines()]
    assert actions == ["kill_switch.release", "kill_switch.engage"]


def test_audit_verify_names_the_tampered_record_on_each_backend(
    tmp_path: Path, store_url: str
) -> None:
    (tmp_path / "keel.yaml").write_text(
        f"store_url: {json.dumps(store_url)}\nhome: .keel\n", encoding="utf-8"
    )
    assert keel("kill", "tenant", "acme", "--reason", "incident", cwd=tmp_path).returncode == 0
    ok = keel("audit", "verify", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    with open_store(store_url) as store, store.write() as tx:
        row = tx.fetchone("SELECT chain, seq FROM audit_records ORDER BY seq LIMIT 1")
        assert row is not None
        chain, seq = row
        tx.execute(
            "UPDATE audit_records SET tenant = 'globex' WHERE chain = ? AND seq = ?", (chain, seq)
        )
    bad = keel("audit", "verify", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout
    assert "BROKEN" in bad.stderr
    assert f"seq {seq}:" in bad.stderr


def test_malformed_config_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "keel.yaml").write_text(
        "store_url: sqlite:///k.db\nmax_json_depth: -3\n", encoding="utf-8"
    )
    done = keel("audit", "verify", cwd=tmp_path)
    assert done.returncode == 2
    assert "max_json_depth" in done.stderr
    assert "keel.yaml:2" in done.stderr


def test_demo_meters_every_model_call_and_stops_the_runaway(demo: Path) -> None:
    done = keel("audit", "show", "--config", str(demo / "keel.yaml"), "--json", "--limit", "10000")
    records = [json.loads(line) for line in done.stdout.splitlines()]
    models = [r for r in records if r["body"].get("call_kind") == "model" and r["kind"] == "call"]
    answered = [r for r in models if "error" not in r["body"]]
    failed = [r for r in models if "error" in r["body"]]
    assert len(answered) > 200
    assert all(float(r["body"]["cost"]["usd"]) > 0 for r in answered)
    assert failed  # the seeded faults: malformed answers, recorded and retried
    assert all("cost" not in r["body"] for r in failed)
    loop = [r for r in records if r["run_id"] == "run-T-1099"]
    rules = [r["rule_id"] for r in sorted(loop, key=lambda r: r["seq"])]
    burn = rules.index("burn:task-tool-calls")  # 80% of the cap: a person is asked (and says no)
    stop = rules.index("budget:task-tool-calls")  # the hard cap ends the loop
    assert burn < stop
    assert rules[-1] == "run.completed"
    tool_calls = [r for r in loop if r["kind"] == "call" and "call_kind" not in r["body"]]
    assert len(tool_calls) == 10  # max_tool_calls_per_task: the refused call never ran


def test_budget_show_and_forecast(demo: Path) -> None:
    config = str(demo / "keel.yaml")
    shown = keel("budget", "show", "--config", config, "--run", "run-T-1099", "--all-days")
    assert shown.returncode == 0, shown.stderr
    assert "task-tool-calls" in shown.stdout
    forecast = keel("forecast", "support", "--runs", "1000", "--config", config)
    assert forecast.returncode == 0, forecast.stderr
    assert "expected total" in forecast.stdout
    assert "P90" in forecast.stdout
    backtest = keel("forecast", "support", "--backtest", "--config", config)
    assert backtest.returncode == 0, backtest.stderr
    assert "error" in backtest.stdout
    missing = keel("forecast", "nope", "--config", config)
    assert missing.returncode == 2
    assert "runs" in missing.stderr
