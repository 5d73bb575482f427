"""Appending to the audit log: sequence, hashes, transactions, clocks, threads, processes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keel.audit import (
    AUDIT_SCHEMA_VERSION,
    GENESIS_HASH,
    AuditEntry,
    AuditLog,
    Checkpoint,
    Redactor,
    chain_hash,
    query,
    verify_chain,
)
from keel.canonical import canonical_json, sha256_hex
from keel.core import Call, Principal, Verdict
from keel.errors import ConfigError, InvalidRequestError, SchemaVersionError, UsageError
from keel.store import Store
from keel.testing import FrozenClock

Entry = Callable[..., AuditEntry]


def test_first_records_chain_from_genesis(log: AuditLog, entry: Entry) -> None:
    first = log.record(entry(1))
    second = log.record(entry(2))
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert log.head() == (2, second.hash)


def test_hash_is_sha256_of_canonical_json_of_the_stored_fields(
    log: AuditLog, store: Store, entry: Entry
) -> None:
    rec = log.record(entry(0))
    with store.read() as tx:
        row = tx.fetchone(
            "SELECT chain, seq, ts, kind, tenant, agent, run_id, tool, decision, rule_id, body, "
            "prev_hash, hash FROM audit_records"
        )
    assert row is not None
    names = (
        *("chain", "seq", "ts", "kind", "tenant", "agent"),
        *("run_id", "tool", "decision", "rule_id", "body", "prev_hash"),
    )
    fields = dict(zip(names, row[:12], strict=True))
    assert row[12] == rec.hash == sha256_hex(canonical_json(fields)) == chain_hash(*row[:12])
    body = json.loads(fields["body"])
    assert body["schema"] == AUDIT_SCHEMA_VERSION
    assert body["call_id"] == "call-0"
    assert body["step_id"] == "step-0"
    assert fields["ts"] == "2026-01-01T00:00:00.000000+00:00"


def test_record_round_trips_through_query(log: AuditLog, store: Store, entry: Entry) -> None:
    written = log.record(entry(5))
    [read] = query(store)
    assert read == written
    assert read.entry.body == {"n": 5, "note": "café ☕", "args": {"amount": "5"}}
    assert read.to_dict()["call_id"] == "call-5"


def test_entry_validation() -> None:
    with pytest.raises(InvalidRequestError):
        AuditEntry(kind="bogus")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        AuditEntry(kind="call", ts=dt.datetime(2026, 1, 1))  # naive
    with pytest.raises(InvalidRequestError, match="reserved key 'schema'"):
        AuditEntry(kind="call", body={"schema": 2})
    with pytest.raises(InvalidRequestError):
        AuditEntry(kind="call", body=["not", "a", "mapping"])  # type: ignore[arg-type]


def test_body_must_be_json_safe(log: AuditLog) -> None:
    with pytest.raises(InvalidRequestError):
        log.record(AuditEntry(kind="call", body={"x": object()}))
    with pytest.raises(InvalidRequestError):
        log.record(AuditEntry(kind="call", body={"x": float("nan")}))
    assert log.head() is None


def test_lone_surrogates_are_stored_escaped(log: AuditLog, store: Store) -> None:
    rec = log.record(AuditEntry(kind="call", body={"text": "bad \ud800 text"}))
    assert verify_chain(store).ok
    [read] = query(store)
    assert read.hash == rec.hash
    assert read.entry.body == {"text": "bad \ud800 text"}
    with pytest.raises(InvalidRequestError):
        log.record(AuditEntry(kind="call", tool="bad \ud800"))


def append_then_fail(log: AuditLog, store: Store, e: AuditEntry) -> None:
    """What the gateway does when its own write fails after the audit append."""
    with store.write() as tx:
        log.append(tx, e)
        raise RuntimeError("the gateway's own write failed")


def test_append_joins_the_callers_transaction(log: AuditLog, store: Store, entry: Entry) -> None:
    log.record(entry(1))
    with pytest.raises(RuntimeError, match="own write failed"):
        append_then_fail(log, store, entry(2))
    assert log.head() is not None and log.head()[0] == 1  # type: ignore[index]
    with store.write() as tx:
        a = log.append(tx, entry(3))
        b = log.append(tx, entry(4))
    assert (a.seq, b.seq) == (2, 3)
    assert verify_chain(store).ok


def test_clock_jumping_backwards_keeps_the_chain_valid(
    log: AuditLog, store: Store, clock: FrozenClock, entry: Entry
) -> None:
    log.record(entry(1))
    clock.advance(hours=5)
    log.record(entry(2))
    clock.set(dt.datetime(2020, 6, 1, tzinfo=dt.UTC))  # NTP step backwards by years
    log.record(entry(3))
    clock.set(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))  # and far forwards
    log.record(entry(4))
    log.record(entry(5, ts=dt.datetime(1999, 1, 1, tzinfo=dt.UTC)))
    report = verify_chain(store)
    assert report.ok, report.problem
    assert [r.seq for r in query(store)] == [5, 4, 3, 2, 1]  # newest by seq, not by time
    years = [r.ts.year for r in query(store)]
    assert years == [1999, 2030, 2020, 2026, 2026]


def test_non_utc_timestamps_are_stored_in_utc(log: AuditLog, store: Store) -> None:
    tz = dt.timezone(dt.timedelta(hours=2))
    rec = log.record(AuditEntry(kind="control", ts=dt.datetime(2026, 3, 1, 12, tzinfo=tz)))
    assert rec.ts == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
    assert rec.ts.tzinfo == dt.UTC
    [read] = query(store)
    assert read.ts == rec.ts


def test_concurrent_threads_give_a_gap_free_chain(
    store: Store, clock: FrozenClock, entry: Entry
) -> None:
    log = AuditLog(store, clock)
    threads, per_thread = 8, 40
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                log.record(entry(n * 1000 + i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    report = verify_chain(store)
    assert report.ok, report.problem
    assert report.records_checked == threads * per_thread
    assert log.head() is not None and log.head()[0] == threads * per_thread  # type: ignore[index]


_WRITER = """
import sys
from keel.audit import AuditEntry, AuditLog
from keel.store import open_store
from keel.testing import FrozenClock

store = open_store(sys.argv[1])
log = AuditLog(store, FrozenClock())
for i in range(int(sys.argv[3])):
    log.record(AuditEntry(kind="call", agent=sys.argv[2], body={"i": i}))
store.close()
"""


def test_several_processes_interleave_on_one_store(store_url: str, store: Store) -> None:
    per_process = 60
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, store_url, f"p{n}", str(per_process)])
        for n in range(3)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    report = verify_chain(store)
    assert report.ok, report.problem
    assert report.records_checked == 3 * per_process
    for n in range(3):
        assert len(query(store, agent=f"p{n}", limit=1000)) == per_process


def test_separate_chains_are_independent(store: Store, clock: FrozenClock, entry: Entry) -> None:
    main = AuditLog(store, clock)
    ops = AuditLog(store, clock, chain="ops")
    main.record(entry(1))
    ops.record(entry(2))
    main.record(entry(3))
    assert main.head() is not None and main.head()[0] == 2  # type: ignore[index]
    assert ops.head() is not None and ops.head()[0] == 1  # type: ignore[index]
    report = verify_chain(store)
    assert report.ok
    assert report.chains == ("main", "ops")
    assert verify_chain(store, chain="ops").records_checked == 1


def test_for_call_builds_a_redacted_entry(log: AuditLog, store: Store) -> None:
    principal = Principal(agent_id="refunds", tenant="acme", run_id="run-7", roles=frozenset({"a"}))
    call = Call(
        kind="tool",
        target="send_email",
        arguments={"to": "bob@example.com", "subject": "hi"},
        principal=principal,
        step_id="s3",
        idempotency_key="idem-1",
    )
    verdict = Verdict(decision="allow", rule_id="email.allow", reason="ok", policy_hash="p1")
    redactor = Redactor(b"test-salt-0123456789abcdef")
    e = AuditEntry.for_call(
        "call",
        call,
        verdict,
        redact=redactor.redact,
        outcome={"sent": True, "echo": "bob@example.com"},
        has_outcome=True,
        latency_ms=3.5,
        trace_id="t-1",
    )
    rec = log.record(e)
    assert (rec.entry.agent, rec.entry.tenant, rec.entry.run_id) == ("refunds", "acme", "run-7")
    assert (rec.entry.tool, rec.entry.decision, rec.entry.rule_id) == (
        "send_email",
        "allow",
        "email.allow",
    )
    assert rec.entry.call_id == call.call_id
    body = query(store)[0].entry.body
    assert "bob@example.com" not in json.dumps(body)
    assert body["args"]["subject"] == "hi"
    assert body["args_digest"].startswith("sha256:")
    assert body["outcome"]["sent"] is True
    assert body["idempotency_key"] == "idem-1"
    assert body["verdict"]["policy_hash"] == "p1"
    denied = AuditEntry.for_call("decision", call, verdict)
    assert "args" not in denied.body and "outcome" not in denied.body  # no redactor: digests only


def test_newer_body_schema_is_refused_by_query(
    log: AuditLog, store: Store, store_url: str, attacker: Any, entry: Entry
) -> None:
    log.record(entry(1))
    [[body]] = attacker.rows(store_url, "SELECT body FROM audit_records")
    newer = json.dumps({**json.loads(body), "schema": 99})
    attacker.sql(store_url, ("UPDATE audit_records SET body = ?", (newer,)))
    with pytest.raises(SchemaVersionError):
        query(store)


def test_configuration_errors(store: Store, clock: FrozenClock, anchor_path: Path) -> None:
    with pytest.raises(ConfigError):
        AuditLog(store, clock, checkpoint_every=0)
    with pytest.raises(ConfigError):
        AuditLog(store, clock, chain="")
    with pytest.raises(ConfigError):
        AuditLog(store, clock, checkpoint_path=anchor_path)  # anchors need a signer
    with pytest.raises(UsageError):
        AuditLog(store, clock).checkpoint()


# -- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_every_n_records(
    store: Store, clock: FrozenClock, keys: Any, anchor_path: Path, entry: Entry
) -> None:
    log = AuditLog(store, clock, signer=keys, checkpoint_every=5, checkpoint_path=anchor_path)
    records = [log.record(entry(i)) for i in range(12)]
    with store.read() as tx:
        stored = tx.fetchall("SELECT seq, hash, key_id FROM audit_checkpoints ORDER BY seq")
    assert stored == [(5, records[4].hash, "k1"), (10, records[9].hash, "k1")]
    anchors = [Checkpoint.from_json(line) for line in anchor_path.read_text().splitlines()]
    assert [(a.seq, a.hash) for a in anchors] == [(5, records[4].hash), (10, records[9].hash)]
    assert all(a.check(keys) for a in anchors)
    report = verify_chain(store, verifier=keys, checkpoint_path=anchor_path)
    assert report.ok, report.problem
    assert (report.checkpoints_checked, report.signatures_checked) == (2, 2)


def test_explicit_checkpoint(
    store: Store, clock: FrozenClock, keys: Any, anchor_path: Path, entry: Entry
) -> None:
    log = AuditLog(store, clock, signer=keys, checkpoint_path=anchor_path)
    assert log.checkpoint() is None  # empty chain
    for i in range(3):
        log.record(entry(i))
    first = log.checkpoint()
    assert first is not None and first.seq == 3
    assert log.checkpoint() == first  # already checkpointed: the same one, not a second row
    assert len(anchor_path.read_text().splitlines()) == 1
    assert first.check(keys)
    other = type(keys)("k2")
    assert not first.check(other)  # k1 unknown to a verifier that only trusts k2


def test_anchors_wait_for_the_callers_commit(
    store: Store, clock: FrozenClock, keys: Any, anchor_path: Path, entry: Entry
) -> None:
    log = AuditLog(store, clock, signer=keys, checkpoint_every=2, checkpoint_path=anchor_path)
    log.record(entry(1))
    with pytest.raises(RuntimeError, match="own write failed"):
        append_then_fail(log, store, entry(2))  # makes checkpoint 2 in a tx that rolls back
    log.flush()
    assert not anchor_path.exists()  # never anchored: it does not exist
    with store.write() as tx:
        log.append(tx, entry(2))  # checkpoint 2 again, now committed
        assert not anchor_path.exists()  # not before the commit
    log.flush()
    assert [Checkpoint.from_json(x).seq for x in anchor_path.read_text().splitlines()] == [2]
    with store.write() as tx:
        log.append(tx, entry(3))
        log.append(tx, entry(4))  # checkpoint 4, flushed by the next append below
    log.record(entry(5))
    seqs = [Checkpoint.from_json(x).seq for x in anchor_path.read_text().splitlines()]
    assert seqs == [2, 4]
    assert verify_chain(store, verifier=keys, checkpoint_path=anchor_path).ok


def test_checkpoint_signed_payload_is_canonical(keys: Any) -> None:
    cp = Checkpoint.create(keys, "main", 7, "ab" * 32, "2026-01-01T00:00:00.000000+00:00")
    expected = canonical_json(
        {
            "chain": "main",
            "seq": 7,
            "hash": "ab" * 32,
            "ts": "2026-01-01T00:00:00.000000+00:00",
            "key_id": "k1",
        }
    ).encode()
    assert cp.signed_bytes() == expected
    assert keys.verify("k1", expected, bytes.fromhex(cp.signature))
    assert Checkpoint.from_json(cp.to_json()) == cp
    for bad in (
        "[]",
        '{"chain": "main"}',
        '{"chain":"m","seq":true,"hash":"","ts":"","key_id":"","signature":""}',
    ):
        with pytest.raises(ValueError, match=r"not a JSON object|missing or mistyped"):
            Checkpoint.from_json(bad)
