"""``keel approvals`` as an operator runs it: the real command in a subprocess, a temp store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keel import App
from keel.configfile import load_config
from keel.errors import ApprovalRequired, AuthorizationError
from keel.testing import RecordingTool

from .conftest import POLICY, REFUND_SCHEMA, SCOPES


def keel(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    for name in ("KEEL_STORE_URL", "KEEL_HOME", "KEEL_POLICY_PATHS"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "keel.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def open_app(config: Path) -> tuple[App, RecordingTool]:
    app = App(load_config(config))
    refund = RecordingTool(
        "billing.refund", scope="billing:write", effect="irreversible", schema=REFUND_SCHEMA
    )
    app.register(refund)
    return app, refund


@pytest.fixture
def config(tmp_path: Path, store_url: str) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    path = tmp_path / "keel.yaml"
    path.write_text(
        f"store_url: {json.dumps(store_url)}\nhome: .keel\npolicy_paths: [policy.yaml]\n",
        encoding="utf-8",
    )
    return path


def test_operators_list_show_approve_and_deny_from_the_command_line(config: Path) -> None:
    app, refund = open_app(config)
    with app:
        agent = app.agent("refund-bot", tenant="acme", scopes=SCOPES, on_behalf_of="carol")
        ids = []
        for amount in (450, 500):
            with pytest.raises(ApprovalRequired) as info:
                agent.call("billing.refund", {"order_id": "A-1", "amount": amount})
            ids.append(info.value.context["approval_id"])
    first, second = ids
    cfg = ("--config", str(config))

    listed = keel("approvals", "list", *cfg)
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout and second in listed.stdout
    assert "pending" in listed.stdout
    as_json = keel("approvals", "list", "--json", "--status", "pending", *cfg)
    assert as_json.returncode == 0, as_json.stderr
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {r["approval_id"] for r in rows} == {first, second}
    assert all(r["requested_by"] == "refund-bot" for r in rows)
    bad_status = keel("approvals", "list", "--status", "bogus", *cfg)
    assert bad_status.returncode == 2

    shown = keel("approvals", "show", first, *cfg)
    assert shown.returncode == 0, shown.stderr
    assert "billing.refund" in shown.stdout
    assert "refund-bot for carol" in shown.stdout

    for requester in ("refund-bot", "carol"):
        selfie = keel("approvals", "approve", first, "--as", requester, *cfg)
        assert selfie.returncode == 4
        assert "approval_self" in selfie.stderr
    viewer = keel("approvals", "approve", first, "--as", "vic", "--role", "viewer", *cfg)
    assert viewer.returncode == 4
    assert "approval_not_allowed" in viewer.stderr
    other_tenant = keel("approvals", "approve", first, "--as", "olga", "--tenant", "globex", *cfg)
    unknown = keel("approvals", "approve", "apr_" + "0" * 32, "--as", "olga", *cfg)
    assert other_tenant.returncode == unknown.returncode == 4
    assert "approval_not_found" in other_tenant.stderr
    assert "approval_not_found" in unknown.stderr

    approved = keel("approvals", "approve", first, "--as", "ana", "--note", "checked", *cfg)
    assert approved.returncode == 0, approved.stderr
    assert "approved" in approved.stdout
    no_reason = keel("approvals", "deny", second, "--as", "bob", *cfg)
    assert no_reason.returncode == 2
    denied = keel("approvals", "deny", second, "--as", "bob", "--reason", "not needed", *cfg)
    assert denied.returncode == 0, denied.stderr
    assert "denied" in denied.stdout
    twice = keel("approvals", "deny", second, "--as", "bob", "--reason", "again", *cfg)
    assert twice.returncode == 4
    assert "approval_not_pending" in twice.stderr

    app, refund = open_app(config)
    with app:
        agent = app.agent("refund-bot", tenant="acme", scopes=SCOPES, on_behalf_of="carol")
        agent.call("billing.refund", {"order_id": "A-1", "amount": 450}, approval_id=first)
        with pytest.raises(AuthorizationError) as info:
            agent.call("billing.refund", {"order_id": "A-1", "amount": 500}, approval_id=second)
        assert info.value.code == "approval_denied"
        assert "not needed" in info.value.message
        assert refund.calls == 1

    detail = keel("approvals", "show", first, "--json", *cfg)
    assert detail.returncode == 0, detail.stderr
    body = json.loads(detail.stdout)
    assert body["status"] == "used"
    assert [e["action"] for e in body["history"]] == ["request", "approve", "claim", "use"]
    assert body["history"][1]["actor"] == "ana"
    assert body["history"][1]["note"] == "checked"

    audit = keel("audit", "show", "--json", "--limit", "100", *cfg)
    decisions = [json.loads(line)["decision"] for line in audit.stdout.splitlines()]
    assert "approval.approve" in decisions and "approval.deny" in decisions
    assert decisions.count("approval.refused") == 6  # every refused attempt above
    verified = keel("audit", "verify", *cfg)
    assert verified.returncode == 0, verified.stderr + verified.stdout
