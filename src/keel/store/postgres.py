"""PostgreSQL backend (psycopg 3): the same tables and numbered migrations as SQLite.

Install with ``pip install "keel[postgres]"``. Open with ``PostgresStore(url)`` where ``url`` is a
libpq URL such as ``postgresql://keel@db.example:5432/keel``; put ``?options=-c%20search_path%3Dx``
in it to use a schema other than ``public``.

Concurrency. Writers coordinate through transaction-scoped advisory locks, which every Keel
process on the database shares (they are per database, not per schema):

- ``write()`` (exclusive) takes ``pg_advisory_xact_lock(_WRITE_LOCK)``: it waits for every other
  Keel writer to finish and keeps them out until it commits, exactly like SQLite's
  ``BEGIN IMMEDIATE``. Any read-modify-write is safe inside it.
- ``write(locks=names)`` (keyed) takes ``_WRITE_LOCK`` *shared*, so keyed writers run side by
  side while an exclusive writer waits for them, then one exclusive advisory lock per name, in
  sorted order. Hot paths use it: ledger charges are conditional upserts, run claims use
  ``FOR UPDATE SKIP LOCKED``, an audit append holds its chain's name, an idempotency claim its
  key's. ``tx.lock(name)`` adds a name inside an open keyed transaction.

The write transaction itself runs at ``READ COMMITTED``: each statement sees what committed before
it started, so a statement after a lock sees everything the lock's previous holder wrote.

Wake-ups: ``tx.notify(channel)`` is ``pg_notify`` (delivered when the transaction commits, to
every process); ``wait(channel, timeout)`` is served by one listener connection per store, on a
daemon thread that ``LISTEN``s and fans notifications out to waiting threads. After a lost
connection the listener reconnects and wakes every waiter (they re-check their state).

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
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from keel.errors import ConfigError, StoreError
from keel.store.base import Row, Store

try:
    import psycopg
    import psycopg.errors
    import psycopg.sql
    from psycopg import conninfo as _conninfo
except ImportError:  # pragma: no cover - depends on the environment
    psycopg = None  # type: ignore[assignment]

__all__ = ["PostgresStore", "lock_key", "translate"]

_TYPES = {"blob": "BYTEA", "bigint": "BIGINT", "without_rowid": ""}

# Any constant works as long as every Keel process uses the same one: 'keel' + 'wr' in ASCII.
_WRITE_LOCK = 0x6B65656C_7772

# Failures a retry may cure: lost connections, serialization failures, deadlocks, lock timeouts.
_RETRYABLE_SQLSTATE_PREFIXES = ("08", "40", "53", "55P03", "57P")

_CHECKOUT_TIMEOUT = 30.0

# How long the listener blocks between looks at newly asked-for channels and at close().
_LISTEN_TICK = 0.25


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


def lock_key(name: str) -> int:
    """The advisory-lock key of a lock name: a stable signed 64-bit hash."""
    return int.from_bytes(
        hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big", signed=True
    )


class _PostgresTransaction:
    __slots__ = ("_conn", "_exclusive", "_held", "notified")

    def __init__(self, conn: psycopg.Connection[Any], exclusive: bool, held: set[str]) -> None:
        self._conn = conn
        self._exclusive = exclusive
        self._held = held
        self.notified: set[str] = set()

    def lock(self, name: str) -> None:
        if self._exclusive or name in self._held:
            return
        self._conn.execute(f"SELECT pg_advisory_xact_lock({lock_key(name)})")
        self._held.add(name)

    def notify(self, channel: str) -> None:
        if channel not in self.notified:
            self._conn.execute("SELECT pg_notify(%s, '')", (channel,))
            self.notified.add(channel)

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
        self._opened = False
        self._channels: dict[str, threading.Event] = {}
        self._listener: threading.Thread | None = None
        self._listen_conn: psycopg.Connection[Any] | None = None
        try:
            for _ in range(max(min_size, 1)):
                self._idle.append(self._connect())
            self._check_schema(migrate)
            self._opened = True
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            if self._opened:  # it worked before: the server is restarting or unreachable now
                raise StoreError(
                    f"cannot reach PostgreSQL at {_redact(self.url)}: {str(exc).strip()}",
                    retryable=True,
                    context={"url": _redact(self.url)},
                ) from exc
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
    def _transaction(
        self, begin: str, what: str, exclusive: bool = False, held: frozenset[str] = frozenset()
    ) -> Iterator[_PostgresTransaction]:
        with self._begin(begin, what) as conn:
            tx = _PostgresTransaction(conn, exclusive, set(held))
            try:
                yield tx
            except psycopg.Error as exc:  # _release rolls back whatever is still open
                raise self._error(f"PostgreSQL {what} failed", exc) from exc
            try:
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                raise self._error("PostgreSQL could not commit", exc) from exc
        if tx.notified:
            self._notifier().fire(tx.notified)

    @contextlib.contextmanager
    def _begin(self, begin: str, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection with ``begin`` (BEGIN and the locks, one round trip) done.

        A pooled connection the server dropped (a restart, an idle timeout) fails here, before
        anything ran: it is discarded and the transaction starts once more on a new one.
        """
        for attempt in (1, 2):
            with self._checkout() as conn:
                try:
                    conn.execute(begin)
                except psycopg.OperationalError as exc:
                    if attempt == 1:
                        with contextlib.suppress(Exception):
                            conn.close()  # _release forgets it
                        continue
                    raise self._error(
                        f"PostgreSQL could not start a {what} transaction", exc
                    ) from exc
                except psycopg.Error as exc:
                    raise self._error(
                        f"PostgreSQL could not start a {what} transaction", exc
                    ) from exc
                yield conn
                return

    def _error(self, what: str, exc: psycopg.Error) -> StoreError:
        state = getattr(exc, "sqlstate", None)
        return StoreError(
            f"{what}: {str(exc).strip()}",
            retryable=_retryable(exc),
            context={"url": _redact(self.url), **({"sqlstate": state} if state else {})},
        )

    @contextlib.contextmanager
    def write(self, *, locks: Sequence[str] | None = None) -> Iterator[_PostgresTransaction]:
        if locks is None:
            begin = f"BEGIN; SELECT pg_advisory_xact_lock({_WRITE_LOCK})"
            with self._transaction(begin, "write", exclusive=True) as tx:
                yield tx
            return
        names = sorted(set(locks))
        begin = "; ".join(
            [
                "BEGIN",
                f"SELECT pg_advisory_xact_lock_shared({_WRITE_LOCK})",
                *(f"SELECT pg_advisory_xact_lock({lock_key(n)})" for n in names),
            ]
        )
        with self._transaction(begin, "write", held=frozenset(names)) as tx:
            yield tx

    @contextlib.contextmanager
    def read(self) -> Iterator[_PostgresTransaction]:
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "read") as tx:
            yield tx

    # -- wake-ups ----------------------------------------------------------------------------

    def _listen(self, channel: str) -> None:
        with self._lock:
            ready = self._channels.get(channel)
            if ready is None:
                ready = self._channels[channel] = threading.Event()
                if self._listener is None and not self._closed:
                    self._listener = threading.Thread(
                        target=self._listen_loop, name="keel-pg-listen", daemon=True
                    )
                    self._listener.start()
        # Wait (briefly) until the listener has sent LISTEN: a signal after this returns is
        # not lost. If the server is away, waiters fall back to their timeouts.
        ready.wait(timeout=_LISTEN_TICK * 8)

    def _listen_loop(self) -> None:
        """LISTEN on every channel asked for; fan notifications out; reconnect when lost."""
        listening: set[str] = set()
        conn: psycopg.Connection[Any] | None = None
        backoff = 0.1
        while not self._closed:
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                    self._listen_conn = conn
                    if listening:  # a reconnect: whatever was sent meanwhile is lost
                        self._notifier().fire(listening)
                    listening = set()
                with self._lock:
                    wanted = dict(self._channels)
                for channel in sorted(set(wanted) - listening):
                    conn.execute(f"LISTEN {psycopg.sql.Identifier(channel).as_string(conn)}")
                    listening.add(channel)
                    wanted[channel].set()
                fired = {n.channel for n in conn.notifies(timeout=_LISTEN_TICK, stop_after=64)}
                if fired:
                    self._notifier().fire(fired)
                backoff = 0.1
            except psycopg.Error:
                if self._closed:
                    break
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        with contextlib.suppress(Exception):
            if conn is not None:
                conn.close()

    def read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        # Autocommit: a lone SELECT is its own snapshot; no BEGIN/COMMIT round trips. A read
        # changes nothing, so a connection the server dropped is replaced and the read repeated.
        for attempt in (1, 2):
            with self._checkout() as conn:
                try:
                    row: Row | None = conn.execute(translate(sql), tuple(params)).fetchone()
                except psycopg.OperationalError as exc:
                    if attempt == 2:
                        raise self._error("PostgreSQL read failed", exc) from exc
                    with contextlib.suppress(Exception):
                        conn.close()
                    continue
                except psycopg.Error as exc:
                    raise self._error("PostgreSQL read failed", exc) from exc
            return row
        raise AssertionError("unreachable")  # pragma: no cover

    # -- schema ------------------------------------------------------------------------------

    @property
    def display_url(self) -> str:
        return _redact(self.url)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._all, self._idle = self._all, [], []
            listener = self._listener
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()
        if listener is not None:
            listener.join(timeout=2 * _LISTEN_TICK + 1)


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    userinfo, _, host = netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{slash}{tail}"
