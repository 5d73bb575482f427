"""Write lock modes, named locks and wake-ups: the concurrency contract of ``keel.store.base``.

The exclusion properties are checked on PostgreSQL by looking at ``pg_stat_activity`` (a blocked
transaction shows as waiting on an advisory lock), never by timing. SQLite has one writer at a
time whatever is asked; its wake-ups reach waiters of the same store object.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from keel.store import Store, open_store

JOIN = 60.0  # generous guard against a hang; never a measurement


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def other(store_url: str, store: Store) -> Iterator[Store]:
    """A second store object on the same database: another process, as far as locks go."""
    with open_store(store_url) as opened:
        yield opened


def _blocked_on_advisory_lock(store: Store) -> int:
    row = store.read_one(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    )
    assert row is not None
    return int(row[0])


def _wait_until(predicate: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(6000):
        if predicate():
            return
        event.wait(0.01)
    raise AssertionError("the condition never held")


class _Holder:
    """Opens a write transaction in a thread and keeps it open until released."""

    def __init__(self, opener: Callable[[], AbstractContextManager[object]]) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(opener,), daemon=True)
        self.thread.start()

    def _run(self, opener: Callable[[], AbstractContextManager[object]]) -> None:
        try:
            with opener():
                self.inside.set()
                self.release.wait(JOIN)
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.inside.set()

    def finish(self) -> None:
        self.release.set()
        self.thread.join(JOIN)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


def _table(store: Store) -> None:
    with store.write() as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, n BIGINT NOT NULL)")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_keyed_writers_with_different_names_run_side_by_side(store: Store, other: Store) -> None:
    _table(store)
    first = _Holder(lambda: store.write(locks=("a",)))
    assert first.inside.wait(JOIN)
    # While "a" is held, a writer holding "b" starts, writes and commits.
    with other.write(locks=("b",)) as tx:
        tx.execute("INSERT INTO t VALUES ('b', 1)")
    assert other.read_one("SELECT n FROM t WHERE k = 'b'") == (1,)
    first.finish()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("held", "wanted"),
    [
        (("a",), ("a",)),  # the same name
        (("a",), None),  # an exclusive writer waits for keyed ones
        (None, ()),  # a keyed writer waits for an exclusive one
        (("a", "b"), ("c", "b")),  # one shared name is enough
    ],
)
def test_writers_that_conflict_wait(
    store: Store, other: Store, held: tuple[str, ...] | None, wanted: tuple[str, ...] | None
) -> None:
    _table(store)
    first = _Holder(lambda: store.write(locks=held))
    assert first.inside.wait(JOIN)
    second = _Holder(lambda: other.write(locks=wanted))
    _wait_until(lambda: _blocked_on_advisory_lock(store) >= 1)
    assert not second.inside.is_set()
    first.finish()
    assert second.inside.wait(JOIN)
    second.finish()


def test_tx_lock_excludes_the_same_name_inside_open_transactions(
    store: Store, other: Store, backend: str
) -> None:
    _table(store)
    first = _Holder(lambda: _locked(store, "row:1"))
    assert first.inside.wait(JOIN)
    if backend == "postgres":
        second = _Holder(lambda: _locked(other, "row:1"))
        _wait_until(lambda: _blocked_on_advisory_lock(store) >= 1)
        assert not second.inside.is_set()
        first.finish()
        second.finish()
    else:  # SQLite: the first writer already holds the only write lock; lock() is a no-op
        first.finish()
        with _locked(other, "row:1"):
            pass


class _LockedWrite:
    def __init__(self, store: Store, name: str) -> None:
        self._cm = store.write(locks=())
        self._name = name

    def __enter__(self) -> object:
        tx = self._cm.__enter__()
        tx.lock(self._name)
        tx.lock(self._name)  # taking a name twice is harmless
        return tx

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)  # type: ignore[arg-type]


def _locked(store: Store, name: str) -> _LockedWrite:
    return _LockedWrite(store, name)


def test_a_keyed_transaction_rolls_back_like_any_other(store: Store) -> None:
    _table(store)

    def fail() -> None:
        with store.write(locks=("x",)) as tx:
            tx.execute("INSERT INTO t VALUES ('gone', 1)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert store.read_one("SELECT n FROM t WHERE k = 'gone'") is None


def test_notify_wakes_a_waiter_after_commit_not_before(store: Store) -> None:
    token = store.generation("jobs")
    assert store.wait("jobs", 0, since=token) is False  # nothing yet
    with store.write(locks=()) as tx:
        tx.notify("jobs")
        assert store.wait("jobs", 0, since=token) is False  # not before the commit
    assert store.wait("jobs", JOIN, since=token) is True
    with store.write() as tx:
        pass  # a transaction that notifies nothing wakes nobody
    assert store.wait("jobs", 0, since=store.generation("jobs")) is False


def test_a_rolled_back_notify_wakes_nobody(store: Store) -> None:
    token = store.generation("jobs")

    def fail() -> None:
        with store.write() as tx:
            tx.notify("jobs")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert store.wait("jobs", 0, since=token) is False


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_notify_reaches_another_process_through_listen(store: Store, other: Store) -> None:
    token = other.generation("keel_test_wake")  # subscribes (LISTEN) before the signal
    with store.write(locks=()) as tx:
        tx.notify("keel_test_wake")
    assert other.wait("keel_test_wake", JOIN, since=token) is True


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_pool_survives_the_server_dropping_its_connections(store: Store, other: Store) -> None:
    """What a PostgreSQL restart does to idle pooled connections: the next transaction and the
    next read start over on a new connection instead of failing."""
    _table(store)
    with store.write() as tx:
        tx.execute("INSERT INTO t VALUES ('before', 1)")
    pids = store.read_one("SELECT pg_backend_pid()")
    assert pids is not None
    other.read_one("SELECT pg_terminate_backend(?)", (pids[0],))
    with store.write() as tx:
        tx.execute("INSERT INTO t VALUES ('after', 2)")
    pid = store.read_one("SELECT pg_backend_pid()")
    other.read_one("SELECT pg_terminate_backend(?)", (pid[0],) if pid else (0,))
    assert store.read_one("SELECT n FROM t WHERE k = 'after'") == (2,)
