"""``keel keys create/list/revoke`` as a user runs them: the key is shown once, never stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel import App, KeelConfig
from keel.errors import AuthenticationError

from .test_db import keel


def test_create_list_revoke(tmp_path: Path, store_url: str) -> None:
    config = tmp_path / "keel.yaml"
    config.write_text(
        f"store_url: {json.dumps(store_url)}\nhome: {json.dumps(str(tmp_path / 'home'))}\n",
        encoding="utf-8",
    )
    created = keel(
        "keys",
        "create",
        "--name",
        "ana",
        "--role",
        "approver",
        "--label",
        "finance",
        "--config",
        str(config),
    )
    assert created.returncode == 0, created.stderr
    data = json.loads(created.stdout)
    text, key_id = data["key"], data["key_id"]
    assert text.startswith(f"keel_op_{key_id}_")
    listed = keel("keys", "list", "--config", str(config))
    assert key_id in listed.stdout
    assert text not in listed.stdout  # the secret is never shown again
    with App(KeelConfig(store_url=store_url, home=tmp_path / "home")) as app:
        assert app.operator_keys.check(text).labels == ("finance",)
        row = app.store.read_one(
            "SELECT secret_hash FROM operator_keys WHERE key_id = ?", (key_id,)
        )
        assert row is not None and text.split("_")[-1] not in str(row[0])
    revoked = keel("keys", "revoke", key_id, "--config", str(config))
    assert revoked.returncode == 0, revoked.stderr
    with (
        App(KeelConfig(store_url=store_url, home=tmp_path / "home")) as app,
        pytest.raises(AuthenticationError, match="revoked"),
    ):
        app.operator_keys.check(text)
    bad = keel("keys", "create", "--name", "x", "--role", "root", "--config", str(config))
    assert bad.returncode != 0
    assert "not one of viewer, approver, operator, admin" in bad.stderr + bad.stdout
