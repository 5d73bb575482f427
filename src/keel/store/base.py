"""The store interface every backend implements.

A store hands out short transactions. ``write()`` takes the write lock up front (SQLite
``BEGIN IMMEDIATE``; PostgreSQL row locks) so read-modify-write sequences inside it are atomic
across threads and processes. SQL is written once with ``?`` placeholders; a backend translates.

Thread safety: a Store may be shared by threads; each thread gets its own connection. A
transaction object must not cross threads. All methods block.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

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

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The version of the newest migration applied to this database."""

    @abc.abstractmethod
    def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection this store opened."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
