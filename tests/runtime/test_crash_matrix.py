"""Crash matrix: a worker process dies (os._exit, like kill -9) at every step boundary and in the
middle of an irreversible step; a new process recovers. Effects never happen twice."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from keel import App, KeelConfig
from keel.audit import query
from keel.store import open_store

SCRIPT = Path(__file__).with_name("_crash_app.py")
POINTS = ["after_started", "in_tool", "after_record", "after_journal", "never"]


def run(
    directory: Path, store_url: str, mode: str, point: str, *resume: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(directory), store_url, mode, point, *resume],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def effects(directory: Path, kind: str) -> int:
    """How often the bank (its own SQLite database, whatever Keel's store) saw ``kind``."""
    conn = sqlite3.connect(directory / "bank.db")
    (count,) = conn.execute("SELECT COUNT(*) FROM effects WHERE kind = ?", (kind,)).fetchone()
    conn.close()
    return int(count)


def status(store_url: str) -> str:
    with open_store(store_url) as store:
        row = store.read_one("SELECT status FROM runs WHERE run_id = 'run-1'")
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("mode", ["keys", "hook", "none"])
@pytest.mark.parametrize("point", POINTS)
def test_recovery_never_repeats_an_effect(
    tmp_path: Path, store_url: str, mode: str, point: str
) -> None:
    first = run(tmp_path, store_url, mode, point)
    if point == "never":
        assert first.returncode == 0, first.stderr
    else:
        assert first.returncode == 137, first.stdout + first.stderr
        second = run(tmp_path, store_url, mode, point, "resume")
        assert second.returncode == 0, second.stderr
    final = status(store_url)
    transfers = effects(tmp_path, "transfer")
    assert transfers <= 1, f"the money moved {transfers} times"
    if mode == "none" and point == "in_tool":
        # The effect happened but nothing proves it and nothing can check: a person decides.
        assert final == "parked"
        assert transfers == 1
    else:
        assert final == "completed"
        assert transfers == 1
        assert effects(tmp_path, "notify") == 1
    config = KeelConfig(store_url=store_url, home=tmp_path / "home")
    with App(config) as app:
        report = app.verify_audit()
        assert report.ok, report.problem
        reconciled = query(app.store, run_id="run-1", tool="bank.transfer", kind="control")
        if mode == "hook" and point == "in_tool":
            # The hook asked the bank, which had the transfer: recorded, not repeated.
            assert [r.entry.body["found_effect"] for r in reconciled] == [True]
        else:
            assert reconciled == []
