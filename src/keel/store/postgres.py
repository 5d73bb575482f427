"""PostgreSQL backend (psycopg 3): the same tables and numbered migrations as SQLite.

Install with ``pip install "keel[postgres]"``. Open with ``PostgresStore(url)`` where ``url`` is a
libpq URL such as ``postgresql://keel@db.example:5432/keel``; put ``?options=-c%20search_path%3Dx``
in it to use a schema other than ``public``.

Concurrency (first, correct step): every ``write()`` transaction starts by taking one
transaction-scoped advisory lock, ``pg_advisory_xact_lock(_WRITE_LOCK)``, that every Keel process
on the database shares. Writers are therefore serialized exactly like SQLite's ``BEGIN IMMEDIATE``
serializes them, and a read-modify-write inside ``write()`` cannot race another thread, process
or machine. Readers never take it. Finer-grained locking (row locks, ``SKIP LOCKED``) is a later
step: it must keep every read-modify-write atomic. The lock is per database, not per schema.

``read()`` is a ``REPEATABLE READ READ ONLY`` transaction: one snapshot for the whole block.

Connections come from a small pool (``min_size`` opened up front, at most ``max_size``); each
transaction checks one out for its duration and returns it, so a transaction never crosses
threads. Broken connections (a server restart) are dropped and replaced on the next checkout.

SQL is written once with ``?`` placeholders; each statement is translated once (``?`` → ``%s``,
``%`` → ``%%``; quoted strings, identifiers and comments are left alone) and cached.

One difference from SQLite: after a statement fails inside a transaction, PostgreSQL refuses
every further statement of that transaction until it ends. Let the error leave the ``with`` block.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from keel.errors import ConfigError, StoreError
from keel.store.base import Row, Store

try:
    import psycopg
    import psycopg.errors
    from psycopg import conninfo as _conninfo
except ImportError:  # pragma: no cover - depends on the environment
    psycopg = None  # type: ignore[assignment]

__all__ = ["PostgresStore", "translate"]

_TYPES = {"blob": "BYTEA", "bigint": "BIGINT", "without_rowid": ""}

# Any constant works as long as every Keel process uses the same one: 'keel' + 'wr' in ASCII.
_WRITE_LOCK = 0x6B65656C_7772

# Failures a retry may cure: lost connections, serialization failures, deadlocks, lock timeouts.
_RETRYABLE_SQLSTATE_PREFIXES = ("08", "40", "53", "55P03", "57P")

_CHECKOUT_TIMEOUT = 30.0


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """Turn ``?`` placeholders into psycopg's ``%s`` and escape literal ``%`` (cached).

    ``?`` and ``%`` inside single-quoted strings, double-quoted identifiers and comments are
    not placeholders; a ``%`` there is still doubled, because psycopg reads the whole text.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote: an escaped quote
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
        elif ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif ch == "?":
            out.append("%s")
            i += 1
        elif ch == "%":
            out.append("%%")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, psycopg.OperationalError):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return state.startswith(_RETRYABLE_SQLSTATE_PREFIXES)


class _PostgresTransaction:
    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(translate(sql), tuple(params)).rowcount

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._conn.execute(translate(sql), tuple(params)).fetchone()
        return row

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(translate(sql), tuple(params)).fetchall()

    def iterate(self, sql: str, params: Sequence[Any] = (), batch: int = 1000) -> Iterator[Row]:
        """Stream rows through a server-side cursor, ``batch`` rows per round trip."""
        with self._conn.cursor(name=f"keel_iter_{id(self):x}_{threading.get_ident():x}") as cur:
            cur.itersize = batch
            cur.execute(translate(sql), tuple(params))
            while rows := cur.fetchmany(batch):
                yield from rows


class PostgresStore(Store):
    """A Keel store in a PostgreSQL database."""

    dialect = "postgresql"
    type_tokens = _TYPES

    def __init__(
        self, url: str, *, migrate: bool = True, min_size: int = 1, max_size: int = 8
    ) -> None:
        self.url = url
        if psycopg is None:
            raise ConfigError(
                "the PostgreSQL store needs psycopg 3: pip install 'keel[postgres]' "
                "(or pip install 'psycopg[binary]>=3.1')",
                context={"key": "store_url"},
            )
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"store URL {_redact(url)!r} is not a PostgreSQL URL: use "
                "postgresql://user@host:5432/database",
                context={"key": "store_url"},
            )
        try:
            _conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigError(
                f"store URL {_redact(url)!r} is malformed ({exc}); use "
                "postgresql://user:password@host:5432/database",
                context={"key": "store_url"},
            ) from exc
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ConfigError(
                f"PostgreSQL pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1 "
                f"(got min_size={min_size}, max_size={max_size})",
                context={"key": "store_url"},
            )
        self._max_size = max_size
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_size)
        self._idle: list[psycopg.Connection[Any]] = []
        self._all: list[psycopg.Connection[Any]] = []
        self._closed = False
        try:
            for _ in range(max(min_size, 1)):
                self._idle.append(self._connect())
            self._check_schema(migrate)
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to PostgreSQL at {_redact(self.url)}: {str(exc).strip()}. "
                "Check that the server is running and reachable, that the user, password and "
                "database in the URL exist, and that pg_hba.conf allows this client.",
                context={"key": "store_url", "url": _redact(self.url)},
            ) from exc
        with self._lock:
            self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _checkout(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise StoreError("the store is closed", retryable=False)
        if not self._slots.acquire(timeout=_CHECKOUT_TIMEOUT):
            raise StoreError(
                f"no PostgreSQL connection free after {_CHECKOUT_TIMEOUT:.0f} s "
                f"(max_size={self._max_size}); raise max_size or shorten transactions",
                context={"url": _redact(self.url)},
            )
        conn: psycopg.Connection[Any] | None = None
        try:
            with self._lock:
                while self._idle and conn is None:
                    candidate = self._idle.pop()
                    if candidate.broken or candidate.closed:
                        self._forget(candidate)
                    else:
                        conn = candidate
            if conn is None:
                conn = self._connect()
            yield conn
        finally:
            if conn is not None:
                self._release(conn)
            self._slots.release()

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        healthy = not (conn.broken or conn.closed)
        if healthy and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                healthy = False
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return
            self._forget(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def _forget(self, conn: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._all.remove(conn)

    @contextlib.contextmanager
    def _transaction(self, begin: str, lock: bool, what: str) -> Iterator[_PostgresTransaction]:
        with self._checkout() as conn:
            try:
                conn.execute(begin)
                if lock:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            except psycopg.Error as exc:
                raise self._error(f"PostgreSQL could not start a {what} transaction", exc) from exc
            try:
                yield _PostgresTransaction(conn)
            except psycopg.Error as exc:  # _release rolls back whatever is still open
                raise self._error(f"PostgreSQL {what} failed", exc) from exc
            try:
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                raise self._error("PostgreSQL could not commit", exc) from exc

    def _error(self, what: str, exc: psycopg.Error) -> StoreError:
        state = getattr(exc, "sqlstate", None)
        return StoreError(
            f"{what}: {str(exc).strip()}",
            retryable=_retryable(exc),
            context={"url": _redact(self.url), **({"sqlstate": state} if state else {})},
        )

    @contextlib.contextmanager
    def write(self) -> Iterator[_PostgresTransaction]:
        with self._transaction("BEGIN", True, "write") as tx:
            yield tx

    @contextlib.contextmanager
    def read(self) -> Iterator[_PostgresTransaction]:
        with self._transaction(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", False, "read"
        ) as tx:
            yield tx

    def read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        # Autocommit: a lone SELECT is its own snapshot; no BEGIN/COMMIT round trips.
        with self._checkout() as conn:
            try:
                row: Row | None = conn.execute(translate(sql), tuple(params)).fetchone()
            except psycopg.Error as exc:
                raise self._error("PostgreSQL read failed", exc) from exc
        return row

    # -- schema ------------------------------------------------------------------------------

    @property
    def display_url(self) -> str:
        return _redact(self.url)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._all, self._idle = self._all, [], []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    userinfo, _, host = netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{slash}{tail}"
