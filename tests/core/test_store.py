from __future__ import annotations

import threading
from pathlib import Path

import pytest

from keel.errors import ConfigError, SchemaVersionError, StoreError
from keel.store import SCHEMA_VERSION, open_store


def test_open_migrates_and_reports_version(store_url: str) -> None:
    with open_store(store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
    with open_store(store_url, migrate=False) as reopened:
        assert reopened.schema_version() == SCHEMA_VERSION


def test_sqlite_uses_the_wal_journal(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'k.db'}") as store, store.read() as tx:
        assert tx.fetchone("PRAGMA journal_mode") == ("wal",)


def test_newer_schema_is_refused_with_a_clear_message(store_url: str) -> None:
    with open_store(store_url) as store, store.write() as tx:
        tx.execute(
            "INSERT INTO keel_schema VALUES (?, 'from the future', 'x')", (SCHEMA_VERSION + 5,)
        )
    with pytest.raises(SchemaVersionError) as info:
        open_store(store_url)
    assert "newer Keel" in info.value.message
    assert info.value.context["found"] == SCHEMA_VERSION + 5


def test_bad_urls_are_refused() -> None:
    for url in ("sqlite://relative.db", "mysql://x/y", "sqlite:///"):
        with pytest.raises(ConfigError):
            open_store(url)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        open_store(f"sqlite:///{tmp_path / 'nope' / 'k.db'}")
    assert "does not exist" in info.value.message


def test_write_transactions_are_atomic_across_threads(store_url: str) -> None:
    """Read-modify-write inside write() never loses an update (it holds the write lock)."""
    with open_store(store_url) as store:
        with store.write() as tx:
            tx.execute("CREATE TABLE counter (n INTEGER)")
            tx.execute("INSERT INTO counter VALUES (0)")

        def bump() -> None:
            for _ in range(50):
                with store.write() as tx:
                    row = tx.fetchone("SELECT n FROM counter")
                    assert row is not None
                    tx.execute("UPDATE counter SET n = ?", (row[0] + 1,))

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with store.read() as tx:
            assert tx.fetchone("SELECT n FROM counter") == (200,)


def test_rollback_on_error(store_url: str) -> None:
    with open_store(store_url) as store:
        with store.write() as tx:
            tx.execute("CREATE TABLE t (n INTEGER)")

        def failing_write() -> None:
            with store.write() as tx:
                tx.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            failing_write()
        with store.read() as tx:
            assert tx.fetchall("SELECT n FROM t") == []


def test_sqlite_in_memory_store_is_shared_by_threads_until_closed() -> None:
    with open_store("sqlite:///:memory:") as store:
        assert store.schema_version() == SCHEMA_VERSION
        with store.write() as tx:
            tx.execute("CREATE TABLE t (n INTEGER)")
            tx.execute("INSERT INTO t VALUES (7)")
        seen: list[object] = []
        reader = threading.Thread(target=lambda: seen.append(store.read_one("SELECT n FROM t")))
        reader.start()
        reader.join()
        assert seen == [(7,)]
