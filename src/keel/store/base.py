"""The store interface every backend implements.

A store hands out short transactions. ``write()`` takes the write lock up front (SQLite
``BEGIN IMMEDIATE``; PostgreSQL row locks) so read-modify-write sequences inside it are atomic
across threads and processes. SQL is written once with ``?`` placeholders; a backend translates.

Thread safety: a Store may be shared by threads; each thread gets its own connection. A
transaction object must not cross threads. All methods block.
"""

from __future__ import annotations

import abc
import datetime as _dt
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from keel.errors import SchemaVersionError
from keel.store._schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["Row", "Store", "Transaction"]

Row = tuple[Any, ...]


class Transaction(Protocol):
    """An open transaction. Commits when the ``with`` block ends, rolls back on an exception."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        ...

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def iterate(self, sql: str, params: Sequence[Any] = (), batch: int = 1000) -> Iterator[Row]:
        """Stream rows of a large result without holding them all in memory."""
        ...


class Store(abc.ABC):
    """A database holding Keel's state. Create one with ``keel.store.open_store(url)``."""

    url: str
    dialect: str

    @abc.abstractmethod
    def write(self) -> AbstractContextManager[Transaction]:
        """A transaction that holds the write lock from its first statement."""

    @abc.abstractmethod
    def read(self) -> AbstractContextManager[Transaction]:
        """A read-only snapshot transaction."""

    def read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """One row of a single-statement read (its own implicit snapshot). Hot-path helper."""
        with self.read() as tx:
            return tx.fetchone(sql, params)

    #: What the migrations' type tokens become in this backend's SQL (see ``_schema``).
    type_tokens: Mapping[str, str]

    @property
    def display_url(self) -> str:
        """The URL as shown in messages and logs (a backend hides secrets in it)."""
        return self.url

    def schema_version(self) -> int:
        """The version of the newest migration applied to this database."""
        row = self.read_one("SELECT COALESCE(MAX(version), 0) FROM keel_schema")
        return int(row[0]) if row else 0

    def migrate(self) -> list[int]:
        """Apply pending migrations, each in its own transaction; return the versions applied."""
        applied: list[int] = []
        for version, name, statements in MIGRATIONS:
            with self.write() as tx:
                row = tx.fetchone("SELECT 1 FROM keel_schema WHERE version = ?", (version,))
                if row is not None:
                    continue
                for statement in statements:
                    tx.execute(statement.format(**self.type_tokens))
                tx.execute(
                    "INSERT INTO keel_schema (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, _dt.datetime.now(_dt.UTC).isoformat()),
                )
            applied.append(version)
        return applied

    def _check_schema(self, migrate: bool) -> None:
        """At open: refuse a newer schema; migrate an older one (or say how to)."""
        with self.write() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS keel_schema ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
        current = self.schema_version()
        context = {"url": self.display_url, "found": current, "supported": SCHEMA_VERSION}
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the store at {self.display_url} has schema version {current}, written by a "
                f"newer Keel; this Keel understands versions up to {SCHEMA_VERSION}. "
                "Upgrade Keel to open it.",
                context=context,
            )
        if current < SCHEMA_VERSION:
            if not migrate:
                raise SchemaVersionError(
                    f"the store at {self.display_url} has schema version {current}; this Keel "
                    f"needs {SCHEMA_VERSION}. Run `keel db migrate`.",
                    context=context,
                )
            self.migrate()

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection this store opened."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
