"""Many workers on one store: each run claimed once, idle workers woken by the store, leases
judged by the database's clock on PostgreSQL.

Each App here opens its own store object (its own connections), as a separate process would.
"""

from __future__ import annotations

import collections
import datetime as _dt
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keel import App, KeelConfig
from keel.core import SystemClock

SCOPES = ("ops:write",)
POLICY = "policy: scale\nscope: {tenant: acme}\ntools: {allow: [ops.*]}\n"
GUARD = 120.0  # a hang guard, not a measurement


class FastClock(SystemClock):
    """A machine clock an hour ahead (its NTP failed)."""

    def now(self) -> _dt.datetime:
        return super().now() + _dt.timedelta(hours=1)


@pytest.fixture
def make_app(tmp_path: Path, store_url: str) -> Iterator[Callable[..., App]]:
    opened: list[App] = []
    effects: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def make(clock: Any = None) -> App:
        config = KeelConfig(store_url=store_url, home=tmp_path / "home")
        app = App(config, clock=clock)
        app.add_policy(POLICY)

        @app.tool("ops.step", scope="ops:write", effect="irreversible", idempotent=True)
        def step(n: int, key: str) -> dict[str, Any]:
            with lock:
                effects[key] += 1
            return {"n": n}

        @app.workflow("job", agent="ops-bot", scopes=SCOPES, tenant="acme")
        async def job(run: Any, data: Any) -> int:
            total = 0
            for n in range(3):
                out = await run.tool("ops.step", {"n": n, "key": f"{run.run_id}/{n}"})
                total += out["n"]
            return total

        app.effects = effects  # type: ignore[attr-defined]
        opened.append(app)
        return app

    yield make
    for app in opened:
        app.close()


def _wait(predicate: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(int(GUARD * 20)):
        if predicate():
            return
        event.wait(0.05)
    raise AssertionError("never happened")


def test_four_workers_run_each_run_exactly_once(make_app: Callable[..., App]) -> None:
    submitter = make_app()
    runs = [submitter.runtime.submit("job", {}).run_id for _ in range(24)]
    workers = [make_app().runtime.worker(worker_id=f"w{i}") for i in range(4)]
    threads = [threading.Thread(target=w.drain) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert all(submitter.runtime.get(r).status == "completed" for r in runs)
    effects = submitter.effects  # type: ignore[attr-defined]
    assert sorted(effects) == sorted(f"{r}/{n}" for r in runs for n in range(3))
    assert set(effects.values()) == {1}  # every step ran once, across four workers
    assert submitter.verify_audit().ok


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_an_idle_worker_is_woken_by_a_submit_in_another_process(
    make_app: Callable[..., App],
) -> None:
    worker_app, client = make_app(), make_app()
    worker = worker_app.runtime.worker(worker_id="sleepy")
    worker.IDLE_MAX = 3600.0  # without the store's wake-up it would sleep an hour
    thread = threading.Thread(target=worker.serve, kwargs={"poll": 3600.0})
    thread.start()
    try:
        _wait(lambda: worker_app.runtime.runs.next_due() is None)  # idle, nothing due
        run_id = client.runtime.submit("job", {}).run_id
        _wait(lambda: client.runtime.get(run_id).status == "completed")
    finally:
        worker.stop.set()
        thread.join(GUARD)
    assert not thread.is_alive()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_worker_with_a_wrong_clock_cannot_take_a_live_lease(
    make_app: Callable[..., App],
) -> None:
    honest, fast = make_app(), make_app(FastClock())
    run_id = honest.runtime.submit("job", {}).run_id
    claimed = honest.runtime.runs.claim("honest", _dt.timedelta(seconds=60))
    assert claimed is not None and claimed.run_id == run_id
    # An hour ahead, the lease looks long expired, but leases are judged by the server's clock.
    assert fast.runtime.runs.claim("fast", _dt.timedelta(seconds=60)) is None
    assert fast.runtime.runs.next_due() is not None
    assert 0 < (fast.runtime.runs.next_due() or 0) <= 60
