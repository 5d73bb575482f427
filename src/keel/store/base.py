"""The store interface every backend implements.

A store hands out short transactions. ``write()`` takes the write lock up front (SQLite
``BEGIN IMMEDIATE``; PostgreSQL an exclusive lock every Keel writer shares) so read-modify-write
sequences inside it are atomic across threads and processes. SQL is written once with ``?``
placeholders; a backend translates.

Lock modes (they matter on PostgreSQL; SQLite has one writer at a time whatever is asked):

- ``write()`` — *exclusive*: no other Keel write transaction runs at the same time. The safe
  default for any read-modify-write.
- ``write(locks=("name", ...))`` — *keyed*: runs alongside other keyed writers and excludes only
  those holding one of the same names (and every exclusive writer). Use it only when every
  check-and-change in the transaction is either one atomic statement (a conditional upsert, an
  ``UPDATE ... WHERE`` whose rowcount is checked, ``FOR UPDATE SKIP LOCKED``) or guarded by a
  name it holds. ``locks=()`` holds no name: atomic statements only.
- ``tx.lock(name)`` takes one more name inside an open transaction (for a part that joins a
  caller's transaction, e.g. an audit append takes its chain's name). Take names in a fixed
  order (the audit chain last) so that transactions cannot deadlock.

Thread safety: a Store may be shared by threads; each thread gets its own connection. A
transaction object must not cross threads. All methods block.
"""

from __future__ import annotations

import abc
import datetime as _dt
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
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

    def lock(self, name: str) -> None:
        """Hold the named lock until the transaction ends (see the module docstring)."""
        ...

    def notify(self, channel: str) -> None:
        """Wake the store's ``wait(channel)``-ers once this transaction commits."""
        ...


class _LocalNotifier:
    """In-process wake-ups: a generation counter per channel under one condition variable."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation: dict[str, int] = {}

    def fire(self, channels: Iterable[str]) -> None:
        with self._cond:
            for channel in channels:
                self._generation[channel] = self._generation.get(channel, 0) + 1
            self._cond.notify_all()

    def generation(self, channel: str) -> int:
        with self._cond:
            return self._generation.get(channel, 0)

    def wait(self, channel: str, timeout: float, since: int | None = None) -> bool:
        with self._cond:
            start = self._generation.get(channel, 0) if since is None else since
            return self._cond.wait_for(
                lambda: self._generation.get(channel, 0) != start, timeout=max(0.0, timeout)
            )


class Store(abc.ABC):
    """A database holding Keel's state. Create one with ``keel.store.open_store(url)``."""

    url: str
    dialect: str

    @abc.abstractmethod
    def write(self, *, locks: Sequence[str] | None = None) -> AbstractContextManager[Transaction]:
        """A write transaction: exclusive by default, keyed with ``locks`` (module docstring)."""

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

    def generation(self, channel: str) -> int:
        """A token for ``wait(..., since=token)``: signals after this call are not missed."""
        self._listen(channel)
        return self._notifier().generation(channel)

    def wait(self, channel: str, timeout: float, *, since: int | None = None) -> bool:
        """Block until a transaction that called ``tx.notify(channel)`` commits (True), or until
        ``timeout`` seconds pass (False). With ``since`` (from ``generation``), return at once
        if a signal came after that token was taken. A backend may wake early (say, after a
        lost connection): callers re-check their state.

        This base version serves one process: notifications from this store object wake it
        at once; others are seen when the timeout ends (callers poll at that interval).
        """
        self._listen(channel)
        return self._notifier().wait(channel, timeout, since)

    def _listen(self, channel: str) -> None:  # noqa: B027 - optional hook, nothing by default
        """Start receiving ``channel``'s signals from other processes (if the backend can)."""

    def _notifier(self) -> _LocalNotifier:
        notifier: _LocalNotifier | None = self.__dict__.get("_local_notifier")
        if notifier is None:
            notifier = self.__dict__.setdefault("_local_notifier", _LocalNotifier())
        return notifier

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection this store opened."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
