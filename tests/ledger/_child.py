"""A second process for the cross-process tests (run as a script, not collected by pytest).

    python _child.py ledger URL THREADS AMOUNT LIMIT
    python _child.py bucket URL ATTEMPTS REQUESTS PER_SECONDS

Prints ``ready``, waits for a line on stdin (so both processes start together), runs, and
prints one JSON line: how many reservations (or acquisitions) succeeded and failed.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from decimal import Decimal

from keel.core import Principal
from keel.errors import BudgetExceeded, RateLimited
from keel.ledger import Cap, Ledger, RateLimit, RateLimiter, ReservationRequest, bucket_keys
from keel.store import open_store
from keel.testing import FrozenClock

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def ledger(url: str, threads: int, amount: str, limit: str) -> dict[str, int]:
    store = open_store(url)
    book = Ledger(store, FrozenClock(START))
    cap = Cap("tenant-budget", limit_usd=Decimal(limit))
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def one(i: int) -> None:
        request = ReservationRequest(
            tenant="acme",
            agent="bot",
            call_id=f"p{i}",
            amount_usd=Decimal(amount),
            caps=(cap,),
        )
        barrier.wait()
        try:
            book.reserve(request)
            outcome = "ok"
        except BudgetExceeded:
            outcome = "refused"
        with lock:
            counts[outcome] += 1

    print("ready", flush=True)
    sys.stdin.readline()
    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    store.close()
    return counts


def bucket(url: str, attempts: int, requests: int, per_seconds: int) -> dict[str, int]:
    store = open_store(url)
    limiter = RateLimiter(store, FrozenClock(START))
    limit = RateLimit("p#agent", "agent", dt.timedelta(seconds=per_seconds), requests=requests)
    keys = bucket_keys([limit], Principal("bot", "acme", run_id="child"), "tool", "t")
    counts = {"ok": 0, "refused": 0}
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(attempts):
        try:
            limiter.acquire(keys)
            counts["ok"] += 1
        except RateLimited:
            counts["refused"] += 1
    store.close()
    return counts


if __name__ == "__main__":
    mode, url, *args = sys.argv[1:]
    if mode == "ledger":
        result = ledger(url, int(args[0]), args[1], args[2])
    else:
        result = bucket(url, int(args[0]), int(args[1]), int(args[2]))
    print(json.dumps(result), flush=True)
