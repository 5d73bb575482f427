"""The PostgreSQL store: the same contract as the SQLite one, on a real server.

PostgreSQL-only by nature. The server comes from the shared fixtures (tests/conftest.py:
``KEEL_TEST_POSTGRES_URL``, skipped with the reason when unreachable, a failure instead under
``KEEL_REQUIRE_POSTGRES=1``). Each test that needs it runs in a fresh schema of its own
(``search_path`` in the URL), dropped afterwards.
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from keel.errors import ConfigError, SchemaVersionError, StoreError
from keel.store import SCHEMA_VERSION
from keel.store.postgres import PostgresStore, translate

#: Runs the test on the PostgreSQL backend only (the shared ``backend`` fixture, one param).
on_postgres = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


@pytest.fixture
def pg_url(store_url: str) -> str:
    """A fresh, empty schema on the test server (``backend`` is postgres here)."""
    return store_url


def test_translate_placeholders_and_percent() -> None:
    assert translate("SELECT ? , ?") == "SELECT %s , %s"
    assert (
        translate("SELECT 'a?%' || ? WHERE x LIKE 'p%'") == "SELECT 'a?%%' || %s WHERE x LIKE 'p%%'"
    )
    assert translate('SELECT "odd?col" FROM t -- why?\nWHERE a = ?') == (
        'SELECT "odd?col" FROM t -- why?\nWHERE a = %s'
    )
    assert translate("SELECT 'it''s ?' , ? % 2") == "SELECT 'it''s ?' , %s %% 2"


@on_postgres
def test_migrate_applies_every_migration_and_reports_version(pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        assert store.dialect == "postgresql"
        assert store.schema_version() == SCHEMA_VERSION
        assert store.migrate() == []  # idempotent
        with store.read() as tx:
            tables = {
                r[0]
                for r in tx.fetchall(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            }
        assert {"keel_schema", "audit_records", "ledger_counters", "runs", "payloads"} <= tables
    # Reopening an up-to-date store applies nothing and needs no migration.
    with PostgresStore(pg_url, migrate=False) as store:
        assert store.schema_version() == SCHEMA_VERSION


@on_postgres
def test_newer_schema_is_refused_with_a_clear_message(pg_url: str) -> None:
    with PostgresStore(pg_url) as store, store.write() as tx:
        tx.execute(
            "INSERT INTO keel_schema VALUES (?, 'from the future', 'x')", (SCHEMA_VERSION + 5,)
        )
    with pytest.raises(SchemaVersionError) as info:
        PostgresStore(pg_url)
    assert "newer Keel" in info.value.message
    assert info.value.context["found"] == SCHEMA_VERSION + 5


@on_postgres
def test_old_schema_without_migrate_is_refused(pg_url: str) -> None:
    with pytest.raises(SchemaVersionError) as info:
        PostgresStore(pg_url, migrate=False)
    assert "keel db migrate" in info.value.message


@on_postgres
def test_write_read_round_trip_with_placeholders(pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        with store.write() as tx:
            tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT, note TEXT)")
            assert tx.execute("INSERT INTO t VALUES (?, ?, ?)", ("a", 1, "100% sure?")) == 1
            tx.execute("INSERT INTO t VALUES (?, ?, ?)", ("b", 2**40, None))
            changed = tx.execute("UPDATE t SET n = n + ? WHERE k LIKE 'a%'", (10,))
        assert changed == 1
        assert store.read_one("SELECT n, note FROM t WHERE k = ?", ("a",)) == (11, "100% sure?")
        with store.read() as tx:
            assert tx.fetchall("SELECT k, n FROM t ORDER BY k") == [("a", 11), ("b", 2**40)]
            assert tx.fetchone("SELECT k FROM t WHERE k = ?", ("zz",)) is None
            assert list(tx.iterate("SELECT k FROM t ORDER BY k", batch=1)) == [("a",), ("b",)]


@on_postgres
def test_iterate_streams_large_results(pg_url: str) -> None:
    with PostgresStore(pg_url) as store, store.read() as tx:
        rows = tx.iterate("SELECT g FROM generate_series(1, ?) AS g", (2500,), batch=1000)
        assert sum(r[0] for r in rows) == 2500 * 2501 // 2


@on_postgres
def test_blob_round_trip(pg_url: str) -> None:
    data = bytes(range(256)) * 40
    with PostgresStore(pg_url) as store:
        with store.write() as tx:
            tx.execute(
                "INSERT INTO payloads (digest, encoding, size, data, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                ("d1", "raw", len(data), data, "now"),
            )
        row = store.read_one("SELECT data, size FROM payloads WHERE digest = ?", ("d1",))
    assert row is not None
    assert bytes(row[0]) == data
    assert row[1] == len(data)


@on_postgres
def test_rollback_on_error(pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        with store.write() as tx:
            tx.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")

        def failing_write() -> None:
            with store.write() as tx:
                tx.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            failing_write()
        with store.read() as tx:
            assert tx.fetchall("SELECT n FROM t") == []

        # A failing statement is a StoreError, and the transaction is rolled back.
        def duplicate_insert() -> None:
            with store.write() as tx:
                tx.execute("INSERT INTO t VALUES (2)")
                tx.execute("INSERT INTO t VALUES (2)")

        with pytest.raises(StoreError) as info:
            duplicate_insert()
        assert info.value.context["sqlstate"] == "23505"
        assert not info.value.retryable
        assert store.read_one("SELECT count(*) FROM t") == (0,)
        # The connection went back to the pool clean.
        with store.write() as tx:
            tx.execute("INSERT INTO t VALUES (3)")
        assert store.read_one("SELECT n FROM t") == (3,)


@on_postgres
def test_read_transactions_are_read_only(pg_url: str) -> None:
    with PostgresStore(pg_url) as store, pytest.raises(StoreError), store.read() as tx:
        tx.execute("CREATE TABLE t (n INTEGER)")


@on_postgres
def test_write_transactions_are_atomic_across_threads(pg_url: str) -> None:
    """Read-modify-write inside write() never loses an update (advisory write lock)."""
    with PostgresStore(pg_url, max_size=4) as store:
        with store.write() as tx:
            tx.execute("CREATE TABLE counter (n INTEGER)")
            tx.execute("INSERT INTO counter VALUES (0)")
        errors: list[BaseException] = []

        def bump() -> None:
            try:
                for _ in range(50):
                    with store.write() as tx:
                        row = tx.fetchone("SELECT n FROM counter")
                        assert row is not None
                        tx.execute("UPDATE counter SET n = ?", (row[0] + 1,))
            except BaseException as exc:  # surfaced below: a thread's failure must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with store.read() as tx:
            assert tx.fetchone("SELECT n FROM counter") == (200,)


def _bump_in_process(url: str, times: int) -> None:
    with PostgresStore(url, migrate=False) as store:
        for _ in range(times):
            with store.write() as tx:
                row = tx.fetchone("SELECT n FROM counter")
                assert row is not None
                tx.execute("UPDATE counter SET n = ?", (row[0] + 1,))


@on_postgres
def test_write_transactions_are_atomic_across_processes(pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        with store.write() as tx:
            tx.execute("CREATE TABLE counter (n INTEGER)")
            tx.execute("INSERT INTO counter VALUES (0)")
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_bump_in_process, args=(pg_url, 100)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0]
        assert store.read_one("SELECT n FROM counter") == (200,)


@on_postgres
def test_bad_urls_are_config_errors(backend: str) -> None:
    for url in ("mysql://x/y", "postgresql://host:notaport/db?bogus_option=1"):
        with pytest.raises(ConfigError):
            PostgresStore(url)


@on_postgres
def test_unreachable_server_is_a_config_error_that_says_what_to_check(backend: str) -> None:
    with pytest.raises(ConfigError) as info:
        PostgresStore("postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2")
    assert "cannot connect to PostgreSQL" in info.value.message
    assert "secret" not in info.value.message
    assert "running and reachable" in info.value.message


@on_postgres
def test_a_keel_app_picks_postgresql_from_the_url(pg_url: str, tmp_path: Path) -> None:
    """open_store picks the backend from the URL. (Every App-level test runs on PostgreSQL too,
    through the ``store_url`` fixture; ATTACKS.md #35 is tests/gateway/test_budget.py.)"""
    from keel import App, KeelConfig
    from keel.testing import RecordingTool

    with App(KeelConfig(store_url=pg_url, home=tmp_path / "home")) as app:
        assert type(app.store).__name__ == "PostgresStore"
        assert app.audit.partitions == 8  # the PostgreSQL default
        app.add_policy("policy: pg\ntools: {allow: [pay.send]}\n")
        app.register(RecordingTool("pay.send", scope="pay:write"))
        result = app.agent("bot", tenant="acme", scopes=["pay:write"]).call("pay.send", {})
        assert result.record_chain in app.audit.chains
        assert app.verify_audit().ok
