"""SQLite backend: the embedded default. WAL journal, one connection per thread.

Write transactions start with ``BEGIN IMMEDIATE`` so they take SQLite's single write lock before
reading anything: a read-modify-write inside ``write()`` cannot race another thread or process.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from keel.errors import StoreError
from keel.store.base import Row, Store

__all__ = ["SQLiteStore"]

_TYPES = {"blob": "BLOB", "bigint": "INTEGER", "without_rowid": "WITHOUT ROWID"}


class _SQLiteTransaction:
    __slots__ = ("_conn", "notified")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.notified: set[str] = set()

    def lock(self, name: str) -> None:
        """Nothing to do: a SQLite write transaction already excludes every other writer."""

    def notify(self, channel: str) -> None:
        self.notified.add(channel)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def iterate(self, sql: str, params: Sequence[Any] = (), batch: int = 1000) -> Iterator[Row]:
        cursor = self._conn.execute(sql, params)
        while rows := cursor.fetchmany(batch):
            yield from rows


class SQLiteStore(Store):
    """A Keel store in one SQLite file (or in memory, for tests and throwaway runs)."""

    dialect = "sqlite"
    type_tokens = _TYPES

    def __init__(self, path: str, *, url: str | None = None, migrate: bool = True) -> None:
        self.url = url or f"sqlite:///{path}"
        self._memory_anchor: sqlite3.Connection | None = None
        if path == ":memory:":
            self._target = f"file:keel-{uuid.uuid4().hex}?mode=memory&cache=shared"
            self._uri = True
        else:
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(
                    f"cannot open SQLite store {path!r}: folder {str(parent)!r} does not exist",
                    retryable=False,
                    context={"url": self.url},
                )
            self._target = str(Path(path).expanduser())
            self._uri = False
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        if self._uri:
            self._memory_anchor = self._connect()
        self._check_schema(migrate)

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the store is closed", retryable=False)
        try:
            conn = sqlite3.connect(
                self._target,
                uri=self._uri,
                isolation_level=None,
                check_same_thread=False,
                timeout=10.0,
            )
            if not self._uri:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint the WAL every ~40 MB instead of every 4 MB: a checkpoint fsyncs the
            # database on the committing thread, so fewer of them keep commits fast.
            conn.execute("PRAGMA wal_autocheckpoint=10000")
            conn.execute("PRAGMA busy_timeout=10000")
            # A 64 MB page cache and memory-mapped reads: lookups in a large store (millions of
            # runs and records) stay in memory instead of costing a read() per B-tree page.
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA mmap_size=1073741824")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open SQLite store {self._target!r}: {exc}", context={"url": self.url}
            ) from exc
        with self._lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[_SQLiteTransaction]:
        conn = self._conn()
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite could not start a transaction: {exc}") from exc
        tx = _SQLiteTransaction(conn)
        try:
            yield tx
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"SQLite could not commit: {exc}") from exc
        if tx.notified:
            self._notifier().fire(tx.notified)

    @contextlib.contextmanager
    def write(self, *, locks: Sequence[str] | None = None) -> Iterator[_SQLiteTransaction]:
        try:
            with self._transaction("BEGIN IMMEDIATE") as tx:
                yield tx
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}", context={"url": self.url}) from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[_SQLiteTransaction]:
        try:
            with self._transaction("BEGIN") as tx:
                yield tx
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}", context={"url": self.url}) from exc

    def read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        # Autocommit mode: a lone SELECT is its own read transaction; no BEGIN/COMMIT round trip.
        try:
            row: Row | None = self._conn().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}", context={"url": self.url}) from exc
        return row

    # -- schema ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()
