"""``keel token inspect`` and ``keel token revoke`` as an operator runs them, against a running
App's store: the revocation reaches the App (another process) and is audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel import App, KeelConfig
from keel.errors import AuthenticationError

from .test_db import keel


def _config(tmp_path: Path, store_url: str) -> Path:
    config = tmp_path / "keel.yaml"
    config.write_text(
        f"store_url: {json.dumps(store_url)}\nhome: {json.dumps(str(tmp_path / 'home'))}\n",
        encoding="utf-8",
    )
    return config


def test_revoke_a_token_by_its_jti(tmp_path: Path, store_url: str) -> None:
    config = _config(tmp_path, store_url)
    with App(KeelConfig(store_url=store_url, home=tmp_path / "home")) as served:
        token = served.mint_token("support-bot", tenant="acme", scopes=["crm.read"])
        assert served.verifier.verify(token).agent_id == "support-bot"
        inspected = keel("token", "inspect", token)
        assert inspected.returncode == 0, inspected.stderr
        claims = json.loads(inspected.stdout)
        assert (claims["sub"], claims["tenant"]) == ("support-bot", "acme")
        revoked = keel(
            "token",
            "revoke",
            "--jti",
            claims["jti"],
            "--reason",
            "leaked in a log",
            "--actor",
            "ana",
            "--config",
            str(config),
        )
        assert revoked.returncode == 0, revoked.stderr
        record = json.loads(revoked.stdout)
        assert (record["kind"], record["target"], record["actor"]) == (
            "token",
            claims["jti"],
            "ana",
        )
        served.revocations.refresh()  # what the refresh period does on its own
        with pytest.raises(AuthenticationError, match="revoked"):
            served.verifier.verify(token)
        with served.store.read() as tx:
            row = tx.fetchone(
                "SELECT decision, body FROM audit_records WHERE rule_id = 'revoke:token'"
            )
        assert row is not None and row[0] == "revoke"
        assert json.loads(row[1])["reason"] == "leaked in a log"


def test_revoke_every_token_of_an_agent(tmp_path: Path, store_url: str) -> None:
    config = _config(tmp_path, store_url)
    with App(KeelConfig(store_url=store_url, home=tmp_path / "home")) as served:
        token = served.mint_token("support-bot", tenant="acme", scopes=["crm.read"])
        other = served.mint_token("billing-bot", tenant="acme", scopes=["crm.read"])
        revoked = keel(
            "token",
            "revoke",
            "--agent",
            "support-bot",
            "--tenant",
            "acme",
            "--reason",
            "compromised",
            "--config",
            str(config),
        )
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(revoked.stdout)["not_before"] is not None
        served.revocations.refresh()
        with pytest.raises(AuthenticationError, match="support-bot"):
            served.verifier.verify(token)
        assert served.verifier.verify(other).agent_id == "billing-bot"


def test_revoke_needs_exactly_one_target(tmp_path: Path, store_url: str) -> None:
    config = _config(tmp_path, store_url)
    neither = keel("token", "revoke", "--reason", "x", "--config", str(config))
    assert neither.returncode != 0
    assert "exactly one of --jti and --agent" in neither.stdout + neither.stderr
    both = keel(
        "token", "revoke", "--jti", "j", "--agent", "a", "--reason", "x", "--config", str(config)
    )
    assert both.returncode != 0
    bad = keel("token", "inspect", "not-a-token")
    assert bad.returncode != 0
    assert "not a token" in bad.stdout + bad.stderr
