"""Keel's persistent state: one interface, a factory keyed on the URL.

``open_store("sqlite:///keel.db")`` (the embedded default), ``open_store("sqlite:///:memory:")``
for throwaway stores, ``open_store("postgresql://user@host/db")`` for the PostgreSQL backend
(``pip install 'keel[postgres]'``).
"""

from __future__ import annotations

from keel.errors import ConfigError
from keel.store._schema import SCHEMA_VERSION
from keel.store.base import Row, Store, Transaction
from keel.store.sqlite import SQLiteStore

__all__ = [
    "RUNS_CHANNEL",
    "SCHEMA_VERSION",
    "Row",
    "SQLiteStore",
    "Store",
    "Transaction",
    "open_store",
]

#: ``tx.notify``/``store.wait`` channel: a run became runnable (submitted, woken, released).
RUNS_CHANNEL = "keel_runs"


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open the store at ``url``, applying pending migrations unless ``migrate`` is False.

    Accepted: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
    ``sqlite:///:memory:``, or a bare file path (taken as SQLite).
    """
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/"):
            raise ConfigError(
                f"store URL {url!r} is malformed: use sqlite:///relative.db or sqlite:////abs.db",
                context={"key": "store_url"},
            )
        path = rest[1:]
        if not path:
            raise ConfigError(f"store URL {url!r} names no file", context={"key": "store_url"})
        return SQLiteStore(path, url=url, migrate=migrate)
    if url.startswith(("postgresql://", "postgres://")):
        from keel.store.postgres import PostgresStore  # psycopg is an optional dependency

        return PostgresStore(url, migrate=migrate)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"store URL scheme {scheme!r} is not supported; use sqlite:///path.db",
            context={"key": "store_url"},
        )
    return SQLiteStore(url, url=f"sqlite:///{url}", migrate=migrate)
