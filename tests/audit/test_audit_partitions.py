"""Partitioned audit logs: several independent chains, one run per chain, every head signed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keel.audit import AuditEntry, AuditLog, verify_chain
from keel.audit.checkpoint import read_anchors
from keel.errors import ConfigError, UsageError
from keel.store import Store, open_store
from keel.testing import FrozenClock

Entry = Callable[..., AuditEntry]


def _log(store: Store, clock: FrozenClock, keys: Any = None, **options: Any) -> AuditLog:
    return AuditLog(store, clock, signer=keys, partitions=4, **options)


def test_records_of_one_run_stay_in_one_chain_and_runs_spread(
    store: Store, clock: FrozenClock, entry: Entry
) -> None:
    log = _log(store, clock)
    assert log.chains == ("main/0", "main/1", "main/2", "main/3")
    chains_of_run: dict[str, set[str]] = {}
    for i in range(120):
        record = log.record(entry(i, run_id=f"run-{i % 30}", tenant="acme"))
        chains_of_run.setdefault(f"run-{i % 30}", set()).add(record.chain)
    assert all(len(chains) == 1 for chains in chains_of_run.values())
    used = set().union(*chains_of_run.values())
    assert len(used) > 1  # 30 runs over 4 chains: more than one chain in use
    heads = log.heads()
    assert sum(seq for seq, _ in heads.values()) == 120  # gap-free per chain
    report = verify_chain(store)
    assert report.ok, report.summary()
    assert set(report.chains) == used


def test_the_chain_follows_tenant_and_run_not_the_log_instance(
    store: Store, clock: FrozenClock, entry: Entry
) -> None:
    one, two = _log(store, clock), _log(store, clock)
    sample = entry(3, tenant="acme", run_id="run-x")
    assert one.chain_for(sample) == two.chain_for(sample)
    # Without a run, calls are routed by agent.
    outside = entry(4, tenant="acme", run_id=None, agent="bot")
    assert one.chain_for(outside) == two.chain_for(
        entry(7, tenant="acme", run_id=None, agent="bot")
    )


def test_checkpoints_sign_every_chain_head_and_anchor_them(
    store: Store, clock: FrozenClock, keys: Any, entry: Entry, anchor_path: Path
) -> None:
    log = _log(store, clock, keys, checkpoint_path=anchor_path)
    for i in range(40):
        log.record(entry(i, run_id=f"run-{i}"))
    made = log.checkpoints()
    heads = log.heads()
    assert {(c.chain, c.seq, c.hash) for c in made} == {
        (chain, seq, digest) for chain, (seq, digest) in heads.items()
    }
    assert log.checkpoints() == made  # the same heads: the same checkpoints, no new rows
    anchored = {cp.chain for _, cp in read_anchors(anchor_path) if cp is not None}
    assert anchored == set(heads)
    report = verify_chain(store, verifier=keys, checkpoint_path=anchor_path)
    assert report.ok, report.summary()


def test_a_truncated_partition_is_caught_by_its_signed_head(
    store: Store,
    store_url: str,
    clock: FrozenClock,
    keys: Any,
    entry: Entry,
    anchor_path: Path,
    attacker: Any,
) -> None:
    log = _log(store, clock, keys, checkpoint_path=anchor_path)
    for i in range(40):
        log.record(entry(i, run_id=f"run-{i}"))
    log.checkpoints()
    victim, (seq, _hash) = max(log.heads().items(), key=lambda item: item[1][0])
    # The attacker removes the newest record of one chain, and its checkpoint from the table.
    attacker.sql(
        store_url,
        ("DELETE FROM audit_records WHERE chain = ? AND seq = ?", (victim, seq)),
        ("DELETE FROM audit_checkpoints WHERE chain = ?", (victim,)),
    )
    report = verify_chain(store, verifier=keys, checkpoint_path=anchor_path)
    assert not report.ok
    assert report.first_bad_chain == victim


def test_an_edited_record_in_any_partition_is_caught(
    store: Store, store_url: str, clock: FrozenClock, entry: Entry, attacker: Any
) -> None:
    log = _log(store, clock)
    for i in range(40):
        log.record(entry(i, run_id=f"run-{i}"))
    chain = sorted(log.heads())[-1]
    attacker.sql(
        store_url,
        ("UPDATE audit_records SET decision = 'allow' WHERE chain = ? AND seq = 1", (chain,)),
    )
    report = verify_chain(store)
    assert not report.ok
    assert (report.first_bad_chain, report.first_bad_seq) == (chain, 1)


def test_concurrent_appends_from_two_stores_keep_every_chain_gap_free(
    store_url: str, clock: FrozenClock, entry: Entry
) -> None:
    """Two store objects (two processes, as far as the database can tell) append at once."""
    errors: list[BaseException] = []

    def append(offset: int) -> None:
        try:
            with open_store(store_url) as own:
                log = AuditLog(own, clock, partitions=4)
                for i in range(60):
                    log.record(entry(offset + i, run_id=f"run-{(offset + i) % 16}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(n * 1000,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    with open_store(store_url) as check:
        report = verify_chain(check)
        assert report.ok, report.summary()
        assert report.records_checked == 180


def test_partition_counts_are_checked(store: Store, clock: FrozenClock) -> None:
    for bad in (0, -1, 1025, True, 2.0):
        with pytest.raises(ConfigError, match="partitions"):
            AuditLog(store, clock, partitions=bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="heads"):
        _log(store, clock).head()
