"""The ledger never overspends: threads, processes (ATTACKS.md #35), and property tests."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from keel.errors import BudgetExceeded
from keel.ledger import BudgetLine, Cap, Ledger, Reservation, ReservationRequest
from keel.store import Store, open_store
from keel.testing import FrozenClock

Req = Callable[..., ReservationRequest]
D = Decimal
MICRO = D("0.000001")


def _check(lines: list[BudgetLine]) -> None:
    """No counter is ever over its limit or negative (no overruns in these tests)."""
    for line in lines:
        assert line.reserved_usd >= 0 and line.reserved_tokens >= 0 and line.reserved_calls >= 0
        if line.limit_usd is not None:
            assert line.spent_usd + line.reserved_usd <= line.limit_usd, line
        if line.limit_tokens is not None:
            assert line.spent_tokens + line.reserved_tokens <= line.limit_tokens, line
        if line.limit_calls is not None:
            assert line.spent_calls + line.reserved_calls <= line.limit_calls, line


def test_fifty_threads_ten_dollars_each_against_one_hundred(ledger: Ledger, req: Req) -> None:
    """ATTACKS.md #35 with threads: exactly 10 of 50 concurrent $10 calls fit $100."""
    cap = Cap("tenant-budget", limit_usd=D(100))
    barrier = threading.Barrier(50)
    won: list[Reservation] = []
    refused: list[BudgetExceeded] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        request = req("10", [cap], call_id=f"c{i}")
        barrier.wait()
        try:
            reservation = ledger.reserve(request)
        except BudgetExceeded as exc:
            with lock:
                refused.append(exc)
        else:
            with lock:
                won.append(reservation)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(won), len(refused)) == (10, 40)
    (line,) = ledger.report()
    assert (line.reserved_usd, line.remaining_usd, line.reserved_calls) == (D(100), D(0), 10)
    assert all(exc.context["cap"] == "tenant-budget" for exc in refused)
    for reservation in won[:5]:
        ledger.settle(reservation.id, D(4))
    (line,) = ledger.report()
    assert (line.spent_usd, line.reserved_usd, line.remaining_usd) == (D(20), D(50), D(30))


def test_fifty_calls_from_two_processes(
    db_url: str, store: Store, processes: Callable[..., list[dict[str, int]]]
) -> None:
    """ATTACKS.md #35 across two processes sharing one store (25 threads each)."""
    results = processes(
        ["ledger", db_url, "25", "10", "100"], ["ledger", db_url, "25", "10", "100"]
    )
    assert sum(r["ok"] for r in results) == 10
    assert sum(r["refused"] for r in results) == 40
    (line,) = Ledger(store, FrozenClock()).report()
    assert (line.reserved_usd, line.remaining_usd, line.reserved_calls) == (D(100), D(0), 10)


# -- property: concurrent random reserve/settle/release never overspends --------------------------

CAPS = (
    Cap("tenant", limit_usd=D(20), limit_tokens=400),
    Cap("run", window="run", limit_usd=D(8)),
    Cap("agent-calls", per=("agent",), window="day", limit_calls=9),
)
Op = tuple[str, int, int]  # (kind, amount in cents / index, tokens / percent)
ops = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 700), st.integers(0, 120)),
    st.tuples(st.just("settle"), st.integers(0, 20), st.integers(0, 100)),
    st.tuples(st.just("release"), st.integers(0, 20), st.just(0)),
)


def _worker(
    ledger: Ledger,
    number: int,
    script: list[Op],
    barrier: threading.Barrier,
    spent: dict[str, D],
    lock: threading.Lock,
) -> None:
    held: list[tuple[Reservation, D, int]] = []
    barrier.wait()
    for kind, a, b in script:
        if kind == "reserve":
            amount = D(a) / 100
            request = ReservationRequest(
                tenant="acme",
                agent=f"agent-{number % 2}",
                call_id=f"{number}-{len(held)}",
                amount_usd=amount,
                tokens=b,
                caps=CAPS,
                run_id=f"run-{number % 3}",
            )
            with contextlib.suppress(BudgetExceeded):
                held.append((ledger.reserve(request), amount, b))
        elif held:
            reservation, amount, tokens = held.pop(a % len(held))
            if kind == "settle":
                actual = (amount * b / 100).quantize(MICRO)
                ledger.settle(reservation.id, actual, tokens * b // 100)
                with lock:
                    spent["usd"] += actual
            else:
                ledger.release(reservation.id)


#: Examples per backend: PostgreSQL costs more per example (connections, round trips).
CONCURRENT_EXAMPLES = {"sqlite": 25, "postgres": 10}


def test_concurrent_random_operations_never_overspend(
    backend: str, example_store_url: Callable[[], str]
) -> None:
    @settings(
        max_examples=CONCURRENT_EXAMPLES[backend],
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(st.lists(st.lists(ops, max_size=14), min_size=2, max_size=4))
    def check(scripts: list[list[Op]]) -> None:
        _run_concurrently(example_store_url(), scripts)

    check()


def _run_concurrently(store_url: str, scripts: list[list[Op]]) -> None:
    with open_store(store_url) as store:
        ledger = Ledger(store, FrozenClock())
        barrier = threading.Barrier(len(scripts) + 1)
        spent = {"usd": D(0)}
        lock = threading.Lock()
        done = threading.Event()
        observed: list[BaseException] = []

        def watch() -> None:
            barrier.wait()
            try:
                while not done.is_set():
                    _check(ledger.report(all_days=True))
            except BaseException as exc:  # reported below, in the test's thread
                observed.append(exc)

        threads = [
            threading.Thread(target=_worker, args=(ledger, n, script, barrier, spent, lock))
            for n, script in enumerate(scripts)
        ]
        watcher = threading.Thread(target=watch)
        for thread in [*threads]:
            thread.start()
        watcher.start()
        for thread in threads:
            thread.join()
        done.set()
        watcher.join()
        assert not observed, observed
        lines = ledger.report(all_days=True)
        _check(lines)
        tenant = next((line for line in lines if line.cap_id == "tenant"), None)
        if tenant is not None:
            assert tenant.spent_usd == spent["usd"]  # exact Decimal bookkeeping
            assert ledger.spend_by().spent_usd == spent["usd"]


# -- property: one thread, against an exact model ----------------------------------------------

MODEL_CAPS = (
    Cap("tenant", limit_usd=D("5.5"), limit_tokens=300),
    Cap("run", window="run", limit_usd=D(2), limit_calls=4),
    Cap("per-customer", per=("arguments.customer",), limit_usd=D(100), sum_argument="amount"),
)


class LedgerModel(RuleBasedStateMachine):
    """Random reserve/settle/release/expire sequences against an exact Decimal model."""

    def __init__(self, store_url: str) -> None:
        super().__init__()
        self.store = open_store(store_url)
        self.clock = FrozenClock()
        self.ledger = Ledger(self.store, self.clock)
        # counter key -> [usd spent, usd held, tokens spent, tokens held, calls spent, calls held]
        self.counters: dict[tuple[str, str], list[Any]] = {}
        self.held: dict[str, list[tuple[tuple[str, str], D, int, bool]]] = {}
        self.limits = {
            "tenant": (D("5.5"), 300, None),
            "run": (D(2), None, 4),
            "per-customer": (D(100), None, None),
        }

    def _charges(
        self, run: str, customer: str, usd: D, amount: D, tokens: int
    ) -> list[tuple[tuple[str, str], D, int, bool]]:
        return [
            (("tenant", "acme"), usd, tokens, True),
            (("run", run), usd, tokens, True),
            (("per-customer", customer), amount, tokens, False),
        ]

    @rule(
        micros=st.integers(0, 3_000_000),
        tokens=st.integers(0, 150),
        run=st.sampled_from(["r1", "r2"]),
        customer=st.sampled_from(["C1", "C2"]),
        amount=st.integers(0, 60),
    )
    def reserve(self, micros: int, tokens: int, run: str, customer: str, amount: int) -> None:
        usd = D(micros) * MICRO
        charges = self._charges(run, customer, usd, D(amount), tokens)
        fits = True
        for key, charge_usd, charge_tokens, _priced in charges:
            row = self.counters.get(key, [D(0), D(0), 0, 0, 0, 0])
            limit_usd, limit_tokens, limit_calls = self.limits[key[0]]
            if row[0] + row[1] + charge_usd > limit_usd:
                fits = False
            if limit_tokens is not None and row[2] + row[3] + charge_tokens > limit_tokens:
                fits = False
            if limit_calls is not None and row[4] + row[5] + 1 > limit_calls:
                fits = False
        request = ReservationRequest(
            tenant="acme",
            agent="bot",
            call_id="c",
            amount_usd=usd,
            tokens=tokens,
            caps=MODEL_CAPS,
            run_id=run,
            key_arguments={"customer": customer},
            argument_amounts={"amount": D(amount)},
        )
        try:
            reservation = self.ledger.reserve(request)
        except BudgetExceeded:
            assert not fits
            return
        assert fits
        for key, charge_usd, charge_tokens, _priced in charges:
            row = self.counters.setdefault(key, [D(0), D(0), 0, 0, 0, 0])
            row[1] += charge_usd
            row[3] += charge_tokens
            row[5] += 1
        self.held[reservation.id] = charges

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), micros=st.integers(0, 4_000_000), tokens=st.integers(0, 200))
    def settle(self, data: st.DataObject, micros: int, tokens: int) -> None:
        rid = data.draw(st.sampled_from(list(self.held)))  # creation order: replayable
        actual = D(micros) * MICRO
        result = self.ledger.settle(rid, actual, tokens)
        assert result.outcome == "settled"
        for key, charge_usd, charge_tokens, priced in self.held.pop(rid):
            row = self.counters[key]
            row[1] -= charge_usd
            row[0] += actual if priced else charge_usd
            row[3] -= charge_tokens
            row[2] += tokens
            row[5] -= 1
            row[4] += 1
        assert self.ledger.settle(rid, actual, tokens).outcome == "already_settled"

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(list(self.held)))  # creation order: replayable
        assert self.ledger.release(rid).outcome == "released"
        self._give_back(rid)
        assert self.ledger.release(rid).outcome == "already_released"

    def _give_back(self, rid: str) -> None:
        for key, charge_usd, charge_tokens, _priced in self.held.pop(rid):
            row = self.counters[key]
            row[1] -= charge_usd
            row[3] -= charge_tokens
            row[5] -= 1

    @rule()
    def expire(self) -> None:
        self.clock.advance(minutes=16)
        expired = self.ledger.expire_stale()
        assert {e.reservation_id for e in expired} == set(self.held)
        for rid in list(self.held):
            self._give_back(rid)

    @invariant()
    def counters_match_the_model(self) -> None:
        lines = {(line.cap_id, line.key): line for line in self.ledger.report()}
        assert set(lines) == set(self.counters)
        for key, row in self.counters.items():
            line = lines[key]
            assert [
                line.spent_usd,
                line.reserved_usd,
                line.spent_tokens,
                line.reserved_tokens,
                line.spent_calls,
                line.reserved_calls,
            ] == row

    def teardown(self) -> None:
        self.store.close()


#: Examples per backend: PostgreSQL costs more per example (connections, round trips).
MODEL_EXAMPLES = {"sqlite": 40, "postgres": 15}


def test_ledger_matches_an_exact_model(backend: str, example_store_url: Callable[[], str]) -> None:
    run_state_machine_as_test(
        lambda: LedgerModel(example_store_url()),
        settings=settings(
            max_examples=MODEL_EXAMPLES[backend], stateful_step_count=25, deadline=None
        ),
    )


def test_clock_jumps_do_not_confuse_expiry(ledger: Ledger, clock: FrozenClock, req: Req) -> None:
    held = ledger.reserve(req("1", [Cap("t", limit_usd=D(1))]))
    clock.set(clock.now() - dt.timedelta(hours=5))  # the wall clock steps back
    assert ledger.expire_stale() == []
    assert ledger.settle(held.id, D(1)).outcome == "settled"
