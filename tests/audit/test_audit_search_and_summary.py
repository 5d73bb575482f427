"""Searching by rule, the indexed shape of searches (a log of one chain, time ranges whatever
the clocks did), window tallies and the last signed checkpoints."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keel.audit import AuditEntry, AuditLog, Cursor, EntryKind, Record, iter_query, query
from keel.audit.summary import last_checkpoints, tally
from keel.errors import InvalidRequestError
from keel.store import Store, open_store
from keel.testing import FrozenClock

Entry = Callable[..., AuditEntry]
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _brute(store: Store, **filters: Any) -> list[Record]:
    """Every record, filtered and ordered in Python: what ``query`` must answer."""
    records = list(iter_query(store, page=1000))
    since, until = filters.pop("since", None), filters.pop("until", None)
    kept = [
        r
        for r in records
        if all(getattr(r.entry, name) == value for name, value in filters.items())
        and (since is None or r.ts >= since)
        and (until is None or r.ts < until)
    ]
    kept.sort(key=lambda r: r.chain)  # ties last: by chain name, ascending
    if len({r.chain for r in records}) > 1:
        kept.sort(key=lambda r: (r.ts, r.seq), reverse=True)
    else:
        kept.sort(key=lambda r: r.seq, reverse=True)
    return kept


def _keys(records: list[Record]) -> list[tuple[str, int]]:
    return [(r.chain, r.seq) for r in records]


def test_search_by_rule(filled: Store) -> None:
    by_rule = query(filled, rule_id="rule-2", limit=1000)
    assert _keys(by_rule) == _keys(_brute(filled, rule_id="rule-2"))
    assert len(by_rule) == 4 and all(r.entry.rule_id == "rule-2" for r in by_rule)
    assert [r.seq for r in by_rule] == sorted((r.seq for r in by_rule), reverse=True)
    both = query(filled, rule_id="rule-2", tenant="acme", limit=1000)
    assert both and all(r.entry.tenant == "acme" for r in both)
    assert _keys(both) == _keys(_brute(filled, rule_id="rule-2", tenant="acme"))
    assert query(filled, rule_id="rule-2", decision="allow", limit=1000) != by_rule
    assert query(filled, rule_id="no-such-rule") == []
    streamed = list(iter_query(filled, rule_id="rule-2", page=3))
    assert _keys(streamed) == _keys(by_rule)


def test_rule_search_pages_with_a_cursor(filled: Store) -> None:
    pages: list[Record] = []
    after: Cursor | None = None
    while True:
        page = query(filled, rule_id="rule-1", limit=2, after=after)
        pages += page
        if len(page) < 2:
            break
        after = Cursor.decode(Cursor.after(page[-1]).encode())
    assert _keys(pages) == _keys(_brute(filled, rule_id="rule-1"))


def _jumbled(store: Store, clock: FrozenClock, entry: Entry, partitions: int) -> AuditLog:
    """40 records whose clock jumps back and forth: ts is not in seq order."""
    log = AuditLog(store, clock, partitions=partitions)
    rng = random.Random(7)
    for i in range(40):
        moment = START + dt.timedelta(minutes=rng.randrange(0, 60))
        log.record(entry(i, ts=moment, run_id=f"run-{i % 5}"))
    return log


@pytest.mark.parametrize("partitions", [1, 3])
def test_time_ranges_are_exact_whatever_the_clock_did(
    store: Store, clock: FrozenClock, entry: Entry, partitions: int
) -> None:
    _jumbled(store, clock, entry, partitions)
    rng = random.Random(11)
    for _ in range(25):
        a, b = sorted(rng.randrange(-5, 65) for _ in range(2))
        since, until = START + dt.timedelta(minutes=a), START + dt.timedelta(minutes=b)
        for window in ({"since": since}, {"until": until}, {"since": since, "until": until}):
            for extra in ({}, {"tenant": "acme"}, {"decision": "deny"}, {"rule_id": "rule-3"}):
                expected = _brute(store, **window, **extra)
                found = query(store, **window, **extra, limit=1000)
                assert _keys(found) == _keys(expected), (window, extra)
                first = query(store, **window, **extra, limit=3)
                assert _keys(first) == _keys(expected[:3])
                if len(first) == 3:
                    rest = query(
                        store, **window, **extra, limit=1000, after=Cursor.after(first[-1])
                    )
                    assert _keys(first + rest) == _keys(expected)
                streamed = list(iter_query(store, **window, **extra, page=4))
                assert _keys(streamed) == _keys(expected)


def test_iter_query_refuses_a_filter_it_does_not_know(store: Store) -> None:
    with pytest.raises(TypeError, match="colour"):
        next(iter_query(store, colour="red"))
    with pytest.raises(InvalidRequestError):
        next(iter_query(store, page=0))


def test_an_empty_window_and_an_empty_log(store: Store, clock: FrozenClock, entry: Entry) -> None:
    assert query(store, since=START) == [] and query(store, until=START) == []
    log = AuditLog(store, clock)
    log.record(entry(0, ts=START))
    assert query(store, since=START + dt.timedelta(seconds=1)) == []
    assert query(store, until=START) == []
    assert query(store, since=START, until=START) == []
    assert len(query(store, since=START, until=START + dt.timedelta(seconds=1))) == 1


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "sqlite_autoindex_audit_records_1"),
        ({"agent": "agent-1"}, "audit_records_agent"),
        ({"tool": "refund"}, "audit_records_tool"),
        ({"tenant": "acme"}, "audit_records_tenant"),
        ({"rule_id": "rule-2"}, "audit_records_rule"),
        ({"decision": "deny"}, "audit_records_decision"),
        # kind has three values, each common: the chain's own order finds the newest at once
        ({"kind": "control"}, "sqlite_autoindex_audit_records_1"),
        ({"kind": "call", "rule_id": "rule-2"}, "audit_records_rule"),
        ({"tenant": "acme", "decision": "escalate"}, "audit_records_tenant"),
        ({"agent": "agent-1", "until": START + dt.timedelta(minutes=9)}, "audit_records_agent"),
    ],
)
def test_searches_of_one_chain_read_an_index_in_order(
    tmp_path: Path, clock: FrozenClock, entry: Entry, filters: dict[str, Any], index: str
) -> None:
    """On SQLite (which has no statistics to choose by) a search reads the newest matches of
    its narrowest filter from that filter's index, in order: no scan of the table, no sort."""
    with open_store(f"sqlite:///{tmp_path / 'plans.db'}") as store:
        log = AuditLog(store, clock)
        for i in range(30):
            log.record(entry(i))
            clock.advance(minutes=1)
        ran: list[str] = []
        store._conn().set_trace_callback(ran.append)  # type: ignore[attr-defined]
        query(store, **filters, limit=5)
        store._conn().set_trace_callback(None)  # type: ignore[attr-defined]
        (search,) = [sql for sql in ran if sql.startswith("SELECT chain, seq")]
        with store.read() as tx:
            plan = " ".join(str(row[-1]) for row in tx.fetchall("EXPLAIN QUERY PLAN " + search))
    assert f"USING INDEX {index} " in plan or f"USING COVERING INDEX {index} " in plan, plan
    assert "TEMP B-TREE" not in plan and "SCAN" not in plan, plan


def test_a_time_range_is_narrowed_from_the_time_index_alone(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'plans.db'}") as store, store.read() as tx:
        rows = tx.fetchall(
            "EXPLAIN QUERY PLAN SELECT MIN(seq), MAX(seq) FROM audit_records "
            "WHERE ts < ? AND ts >= ?",
            ("b", "a"),
        )
    assert "COVERING INDEX audit_records_ts" in " ".join(str(row[-1]) for row in rows)


def test_tally_counts_what_calls_came_to(store: Store, clock: FrozenClock) -> None:
    log = AuditLog(store, clock)
    kinds: list[tuple[EntryKind, str]] = [
        ("call", "allow"),
        ("call", "allow"),
        ("decision", "deny"),
        ("decision", "require_approval"),
        ("decision", "escalate"),
        ("decision", "allow"),  # cached, replayed or shadow
        ("control", "engage"),
    ]
    for i, (kind, decision) in enumerate(kinds):
        tenant = "acme" if i % 2 == 0 else "globex"
        log.record(AuditEntry(kind=kind, decision=decision, tenant=tenant, ts=START))
    early = START - dt.timedelta(hours=2)
    log.record(AuditEntry(kind="call", decision="allow", tenant="acme", ts=early))
    counted = tally(store, START - dt.timedelta(hours=1))
    assert (counted.records, counted.executed, counted.refused) == (7, 2, 1)
    assert (counted.held, counted.answered, counted.calls, counted.control) == (2, 1, 6, 1)
    assert not counted.capped
    assert tally(store, START - dt.timedelta(hours=3)).executed == 3
    assert tally(store, START + dt.timedelta(seconds=1)).records == 0
    assert tally(store, START - dt.timedelta(hours=3), until=START).records == 1
    acme = tally(store, START - dt.timedelta(hours=1), tenant="acme")
    assert (acme.records, acme.executed, acme.held, acme.control) == (4, 1, 1, 1)
    capped = tally(store, START - dt.timedelta(hours=3), cap=3)
    assert capped.capped and capped.records == 3
    with pytest.raises(InvalidRequestError):
        tally(store, START, cap=0)


def test_last_checkpoints_per_chain(
    store: Store, clock: FrozenClock, keys: Any, entry: Entry
) -> None:
    assert last_checkpoints(store) == []
    log = AuditLog(store, clock, signer=keys, checkpoint_every=5)
    for i in range(12):
        log.record(entry(i))
    (newest,) = last_checkpoints(store)
    assert (newest.chain, newest.seq) == ("main", 10)
    assert newest.check(keys)
    assert newest.hash == query(store, chain="main", before_seq=11, limit=1)[0].hash
    log.checkpoint()
    assert [(c.chain, c.seq) for c in last_checkpoints(store)] == [("main", 12)]
    split = AuditLog(store, clock, signer=keys, chain="split", partitions=3)
    for i in range(9):
        split.record(entry(i, run_id=f"r{i}"))
    split.checkpoint()
    found = {c.chain: c.seq for c in last_checkpoints(store)}
    assert found == {"main": 12, **{chain: seq for chain, (seq, _) in split.heads().items()}}
    assert all(c.check(keys) for c in last_checkpoints(store))
