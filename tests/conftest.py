"""Fixtures shared by the whole suite: the store backends every store-touching test runs on.

``store_url`` is parametrized over ``sqlite`` and ``postgres``: a test that asks for it (or for a
fixture built on it) runs once on a fresh SQLite file and once in a fresh PostgreSQL schema of
its own, dropped afterwards. Test ids end in ``[sqlite]`` / ``[postgres]``; ``-k sqlite`` or
``-m "not postgres"`` picks one half. Hypothesis tests that need an empty store per example take
``example_store_url`` (one schema per test, emptied between examples on PostgreSQL).

PostgreSQL comes from ``KEEL_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Without psycopg or a reachable server the
PostgreSQL half is skipped with the reason, unless ``KEEL_REQUIRE_POSTGRES=1`` (set by
``.ci/run``), which turns the skip into a failure: CI must run both halves.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

PG_BASE_URL = os.environ.get("KEEL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("KEEL_REQUIRE_POSTGRES", "") not in ("", "0", "false", "no")
BACKENDS = ("sqlite", "postgres")

_unreachable: str | bool | None = False  # False: not probed yet


def postgres_unavailable() -> str | None:
    """Why PostgreSQL tests cannot run here, or None if they can (probed once per process)."""
    global _unreachable
    if _unreachable is False:
        try:
            import psycopg
        except ImportError:
            _unreachable = "psycopg 3 is not installed (pip install 'keel[postgres]')"
        else:
            try:
                with psycopg.connect(PG_BASE_URL, connect_timeout=3) as conn:
                    conn.execute("SELECT 1")
                _unreachable = None
            except psycopg.Error as exc:
                _unreachable = (
                    f"PostgreSQL not reachable at {PG_BASE_URL} "
                    f"(set KEEL_TEST_POSTGRES_URL): {str(exc).strip()}"
                )
    assert _unreachable is not False
    return _unreachable


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unavailable (fail instead under CI)."""
    reason = postgres_unavailable()
    if reason is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(f"KEEL_REQUIRE_POSTGRES is set but {reason}", pytrace=False)
    pytest.skip(reason)


def url_with_schema(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set to ``schema`` (libpq ``options``)."""
    options = quote(f"-c search_path={schema}")
    return f"{url}{'&' if '?' in url else '?'}options={options}"


class PostgresSchemas:
    """Creates throwaway schemas on the test server and drops them all at the end."""

    def __init__(self) -> None:
        self._made: list[str] = []

    def new_url(self) -> str:
        import psycopg

        schema = f"test_{uuid.uuid4().hex}"
        with psycopg.connect(PG_BASE_URL, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
        self._made.append(schema)
        return url_with_schema(PG_BASE_URL, schema)

    def drop_all(self) -> None:
        if not self._made:
            return
        import psycopg

        with psycopg.connect(PG_BASE_URL, autocommit=True) as admin:
            for schema in self._made:
                admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self._made.clear()


def make_url_factory(backend: str, folder: Path) -> tuple[Callable[[], str], Callable[[], None]]:
    """``(new_url, cleanup)``: ``new_url()`` gives a fresh, empty store URL on ``backend``."""
    if backend == "postgres":
        require_postgres()
        schemas = PostgresSchemas()
        return schemas.new_url, schemas.drop_all
    counter = iter(range(10**9))

    def new_sqlite() -> str:
        return f"sqlite:///{folder / f'keel-{next(counter)}.db'}"

    return new_sqlite, lambda: None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend this test instance runs on: ``sqlite`` or ``postgres``."""
    name: str = request.param
    if name == "postgres":
        request.applymarker(pytest.mark.postgres)
        require_postgres()
    return name


@pytest.fixture
def new_store_url(backend: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty store URLs on this test's backend (cleaned up afterwards)."""
    new_url, cleanup = make_url_factory(backend, tmp_path / "stores")
    (tmp_path / "stores").mkdir(exist_ok=True)
    try:
        yield new_url
    finally:
        cleanup()


@pytest.fixture
def store_url(new_store_url: Callable[[], str]) -> str:
    """A fresh, empty store URL on this test's backend."""
    return new_store_url()


class ExampleStores:
    """Empty stores for the examples of one hypothesis test, cheap on both backends.

    Each call gives the URL of an empty, migrated store. SQLite: a new file each time.
    PostgreSQL: one schema for the whole test, its tables emptied before every call after the
    first (a fresh schema per example would spend most of the test migrating). The previous
    example must have ended its transactions: emptying waits for their row locks, at most 10 s.
    """

    def __init__(self, backend: str, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._new_url, self._cleanup = make_url_factory(backend, folder)
        self._postgres = backend == "postgres"
        self._url: str | None = None

    def __call__(self) -> str:
        if not self._postgres:
            return self._new_url()
        if self._url is None:
            self._url = self._new_url()
            return self._url
        import psycopg

        with psycopg.connect(self._url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables "
                    "WHERE schemaname = current_schema() AND tablename <> 'keel_schema'"
                )
            ]
            if tables:  # DELETE, not TRUNCATE: much faster on tables this small
                conn.execute("; ".join(f'DELETE FROM "{name}"' for name in tables))
        return self._url

    def cleanup(self) -> None:
        self._cleanup()


@pytest.fixture
def example_store_url(backend: str, tmp_path: Path) -> Iterator[ExampleStores]:
    """For hypothesis tests: ``example_store_url()`` in each example gives an empty store URL.

    Use with ``suppress_health_check=[HealthCheck.function_scoped_fixture]``: the fixture is
    made once per test function, and each call (once per example) empties the store.
    """
    stores = ExampleStores(backend, tmp_path / "examples")
    try:
        yield stores
    finally:
        stores.cleanup()


def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    """Mark the PostgreSQL instances so ``-m postgres`` / ``-m "not postgres"`` select them."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "postgres":
            item.add_marker(pytest.mark.postgres)
