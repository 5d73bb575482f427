"""Ledger costs and the overshoot check (ATTACKS.md #35). Prints figures; asserts no timings.

    python bench/ledger.py [--calls 5000] [--threads 8]

1. reserve + settle per call on a SQLite WAL file, single-threaded and with N threads (p50/p99
   latency of the pair, calls per second), with one cap and with four caps per call (run,
   tenant-per-day, agent, workflow: a typical governed call), plus one rate-limit acquire.
2. Overshoot: 50 concurrent $10 reservations against a $100 cap, from 50 threads in one process
   and from 2 processes x 25 threads sharing one SQLite file. Exactly 10 must succeed and the
   balance must never go negative; the script prints both and says if either fails.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from keel.core import Principal, SystemClock
from keel.errors import BudgetExceeded
from keel.ledger import Cap, Ledger, RateLimit, RateLimiter, ReservationRequest, bucket_keys
from keel.store import open_store

ONE_CAP = (Cap("task", window="run", limit_usd=Decimal(10**6), limit_tokens=10**12),)
FOUR_CAPS = (
    *ONE_CAP,
    Cap("tenant-day", window="day", limit_usd=Decimal(10**8)),
    Cap("agent", per=("agent",), limit_usd=Decimal(10**8)),
    Cap("workflow", per=("workflow",), limit_usd=Decimal(10**8)),
)


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _request(i: int, caps: Sequence[Cap]) -> ReservationRequest:
    return ReservationRequest(
        tenant="acme",
        agent="support-bot",
        call_id=f"call-{i}",
        amount_usd=Decimal("0.0421"),
        tokens=1500,
        caps=tuple(caps),
        run_id=f"run-{i // 20}",
        workflow="refunds",
        target="gpt-4o-mini",
    )


def _pair(ledger: Ledger, request: ReservationRequest) -> None:
    reservation = ledger.reserve(request)
    ledger.settle(reservation.id, Decimal("0.01337"), 1210)


def _run(threads: int, calls: int, work: Callable[[int], None]) -> tuple[list[float], float]:
    """``calls`` calls of ``work`` split over ``threads``; (latencies in µs, calls per second)."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = calls // threads
    barrier = threading.Barrier(threads + 1)

    def worker(offset: int) -> None:
        mine: list[float] = []
        barrier.wait()
        for i in range(offset, offset + per_thread):
            start = time.perf_counter()
            work(i)
            mine.append((time.perf_counter() - start) * 1e6)
        with lock:
            latencies.extend(mine)

    pool = [
        threading.Thread(target=worker, args=(10_000_000 + n * per_thread,)) for n in range(threads)
    ]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    return latencies, len(latencies) / elapsed


def hot_path(calls: int, threads: int) -> None:
    print(f"reserve + settle per call (SQLite WAL file, {calls} calls per row, 500 warm-up)")
    print(f"{'measurement':58s} {'p50 µs':>9s} {'p99 µs':>9s} {'calls/s':>9s}")
    with tempfile.TemporaryDirectory() as folder:
        store = open_store("sqlite:///" + str(Path(folder) / "bench.db"))
        ledger = Ledger(store, SystemClock())
        limiter = RateLimiter(store, SystemClock())
        for label, caps in (("1 cap", ONE_CAP), ("4 caps", FOUR_CAPS)):
            requests = [_request(i, caps) for i in range(500)]
            for request in requests:
                _pair(ledger, request)
            for n in (1, threads):
                latencies, rate = _run(
                    n, calls, lambda i, caps=caps: _pair(ledger, _request(i, caps))
                )
                name = f"reserve + settle, {label}, {n} thread{'s' if n > 1 else ''}"
                print(
                    f"{name:58s} {statistics.median(latencies):9.1f} "
                    f"{_pct(latencies, 0.99):9.1f} {rate:9.0f}"
                )
        limits = [
            RateLimit("bench#agent", "agent", _dt.timedelta(seconds=1), requests=10**9),
            RateLimit("bench#tool", "tool", _dt.timedelta(seconds=1), requests=10**9),
        ]
        keys = bucket_keys(limits, Principal("support-bot", "acme"), "tool", "billing.refund")
        for _ in range(500):
            limiter.acquire(keys)
        latencies, rate = _run(1, calls, lambda i: limiter.acquire(keys))
        name = "rate-limit acquire, 2 buckets, 1 thread"
        print(
            f"{name:58s} {statistics.median(latencies):9.1f} "
            f"{_pct(latencies, 0.99):9.1f} {rate:9.0f}"
        )
        store.close()


# -- overshoot --------------------------------------------------------------------------------

BUDGET = Cap("tenant-budget", limit_usd=Decimal(100))


def _contend(url: str, threads: int, start: Any, offset: int) -> tuple[int, int]:
    """``threads`` threads reserve $10 each at once; (succeeded, refused)."""
    store = open_store(url)
    ledger = Ledger(store, SystemClock())
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def one(i: int) -> None:
        request = ReservationRequest(
            tenant="acme",
            agent="support-bot",
            call_id=f"overshoot-{i}",
            amount_usd=Decimal(10),
            caps=(BUDGET,),
        )
        barrier.wait()
        try:
            ledger.reserve(request)
            ok = True
        except BudgetExceeded:
            ok = False
        with lock:
            results.append(ok)

    pool = [threading.Thread(target=one, args=(offset + i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    if start is not None:
        start.wait()  # every process is ready: release all threads together
    barrier.wait()
    for thread in pool:
        thread.join()
    store.close()
    return sum(results), len(results) - sum(results)


def _child(url: str, threads: int, start: Any, offset: int, out: Any) -> None:
    out.put(_contend(url, threads, start, offset))


def _balance(url: str) -> tuple[Decimal, Decimal, Decimal]:
    store = open_store(url)
    (line,) = Ledger(store, SystemClock()).report()
    store.close()
    assert line.limit_usd is not None
    balance = line.limit_usd - line.spent_usd - line.reserved_usd
    return line.reserved_usd, line.spent_usd, balance


def overshoot() -> None:
    print()
    print("overshoot: 50 concurrent $10 reservations against a $100 cap (ATTACKS.md #35)")
    print(f"{'setup':44s} {'succeeded':>9s} {'refused':>8s} {'reserved':>9s} {'balance':>8s}")
    with tempfile.TemporaryDirectory() as folder:
        url = "sqlite:///" + str(Path(folder) / "threads.db")
        open_store(url).close()
        ok, refused = _contend(url, 50, None, 0)
        _report("50 threads, 1 process", ok, refused, url)

        url = "sqlite:///" + str(Path(folder) / "processes.db")
        open_store(url).close()
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Barrier(2)
        out = ctx.Queue()
        children = [
            ctx.Process(target=_child, args=(url, 25, start, n * 25, out)) for n in range(2)
        ]
        for child in children:
            child.start()
        results = [out.get(timeout=120) for _ in children]
        for child in children:
            child.join()
        ok = sum(r[0] for r in results)
        refused = sum(r[1] for r in results)
        _report("2 processes x 25 threads, one SQLite file", ok, refused, url)


def _report(setup: str, ok: int, refused: int, url: str) -> None:
    reserved, _spent, balance = _balance(url)
    verdict = "ok" if ok == 10 and balance >= 0 else "FAILED"
    print(
        f"{setup:44s} {ok:9d} {refused:8d} {'$' + str(reserved):>9s} {'$' + str(balance):>8s}"
        f"  {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    hot_path(args.calls, args.threads)
    overshoot()


if __name__ == "__main__":
    main()
