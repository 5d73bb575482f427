"""``keel db status`` and ``keel db migrate`` on both backends, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from keel.store import SCHEMA_VERSION, open_store


def keel(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("KEEL_STORE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "keel.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def test_status_then_migrate_then_status(store_url: str, backend: str) -> None:
    before = keel("db", "status", "--store", store_url)
    assert before.returncode == 0, before.stderr
    status = json.loads(before.stdout)
    assert status["schema"] == 0
    assert status["pending"] == list(range(1, SCHEMA_VERSION + 1))
    assert status["up_to_date"] is False
    assert status["backend"] == ("postgresql" if backend == "postgres" else "sqlite")

    migrated = keel("db", "migrate", "--store", store_url)
    assert migrated.returncode == 0, migrated.stderr
    assert f"schema version {SCHEMA_VERSION}" in migrated.stdout

    after = json.loads(keel("db", "status", "--store", store_url).stdout)
    assert (after["schema"], after["pending"], after["up_to_date"]) == (SCHEMA_VERSION, [], True)
    assert keel("db", "migrate", "--store", store_url).returncode == 0  # idempotent


def test_a_newer_schema_is_refused_by_status_and_migrate(store_url: str) -> None:
    with open_store(store_url) as store, store.write() as tx:
        tx.execute(
            "INSERT INTO keel_schema (version, name, applied_at) VALUES (?, 'future', 'x')",
            (SCHEMA_VERSION + 1,),
        )
    for command in ("status", "migrate"):
        done = keel("db", command, "--store", store_url)
        assert done.returncode != 0
        assert "newer Keel" in done.stderr + done.stdout


def test_unreachable_postgres_is_a_clear_error() -> None:
    done = keel("db", "status", "--store", "postgresql://keel:secret@127.0.0.1:1/keel")
    assert done.returncode != 0
    out = done.stderr + done.stdout
    assert "cannot connect to PostgreSQL" in out
    assert "secret" not in out  # the password is never printed
