"""Fixtures for the ledger tests: a fresh store on each backend, a frozen clock, a ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from keel.ledger import Cap, Ledger, RateLimiter, ReservationRequest
from keel.store import Store, open_store
from keel.testing import FrozenClock


@pytest.fixture
def db_url(store_url: str) -> str:
    """The store's URL on this test's backend (for child processes that open it too)."""
    return store_url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with open_store(db_url) as opened:
        yield opened


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def ledger(store: Store, clock: FrozenClock) -> Ledger:
    return Ledger(store, clock)


@pytest.fixture
def limiter(store: Store, clock: FrozenClock) -> RateLimiter:
    return RateLimiter(store, clock)


CHILD = Path(__file__).resolve().parent / "_child.py"
_calls = iter(range(10**9))


def request(
    amount: str | Decimal | int = "1",
    caps: Sequence[Cap] = (),
    **fields: Any,
) -> ReservationRequest:
    """A reservation request with sensible defaults (tenant acme, agent bot, run r1)."""
    values: dict[str, Any] = {
        "tenant": "acme",
        "agent": "bot",
        "call_id": f"call-{next(_calls)}",
        "amount_usd": Decimal(amount) if not isinstance(amount, Decimal) else amount,
        "caps": tuple(caps),
        "run_id": "r1",
        "workflow": "refunds",
    }
    values.update(fields)
    return ReservationRequest(**values)


Request = Callable[..., ReservationRequest]


@pytest.fixture
def req() -> Request:
    """``req(amount, caps, **fields)``: see :func:`request`."""
    return request


def run_together(*argvs: list[str]) -> list[dict[str, int]]:
    """Start one child per argv, wait until each says ``ready``, release them, collect results."""
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=120)
            assert child.returncode == 0, out
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.fixture
def processes() -> Callable[..., list[dict[str, int]]]:
    """``processes(argv, argv, ...)``: run tests/ledger/_child.py once per argv, together."""
    return run_together
