"""Verification finds every kind of tampering, and where it starts (ATTACKS.md #40).

The attacker edits the tables directly with SQL (on either backend), and the anchor file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keel.audit import AuditEntry, AuditLog, VerifyReport, chain_hash, verify_chain
from keel.store import Store, open_store
from keel.testing import FrozenClock

Entry = Callable[..., AuditEntry]
COLUMNS = "chain, seq, ts, kind, tenant, agent, run_id, tool, decision, rule_id, body, prev_hash"


def build(
    url: str,
    entry: Entry,
    n: int,
    keys: Any = None,
    every: int = 1000,
    anchors: Path | None = None,
) -> None:
    with open_store(url) as store:
        log = AuditLog(
            store, FrozenClock(), signer=keys, checkpoint_every=every, checkpoint_path=anchors
        )
        for i in range(n):
            log.record(entry(i))


def check(url: str, **kwargs: Any) -> VerifyReport:
    with open_store(url) as store:
        return verify_chain(store, **kwargs)


@pytest.fixture
def chain10(store_url: str, entry: Entry) -> str:
    """The URL of a store holding a chain of 10 records."""
    build(store_url, entry, 10)
    return store_url


@pytest.fixture
def sqlite_chain10(tmp_path: Path, entry: Entry) -> str:
    """Like ``chain10``, always on SQLite (for attacks only SQLite's loose typing allows)."""
    url = f"sqlite:///{tmp_path / 'keel.db'}"
    build(url, entry, 10)
    return url


def test_untouched_log_verifies(chain10: str) -> None:
    report = check(chain10)
    assert report.ok
    assert report.records_checked == 10
    assert report.chains == ("main",)
    assert report.first_bad_seq is None and report.problem is None
    assert report.summary().startswith("audit log OK: 10 records")


def test_empty_log_verifies(store: Store) -> None:
    report = verify_chain(store)
    assert report.ok and report.records_checked == 0 and report.chains == ()


def test_modified_record(chain10: str, attacker: Any) -> None:
    attacker.sql(chain10, "UPDATE audit_records SET tool = 'wire_money' WHERE seq = 7")
    report = check(chain10)
    assert not report.ok
    assert report.first_bad_seq == 7 and report.first_bad_chain == "main"
    assert report.problem == "record 7: hash does not match its content (modified)"
    assert "FAILED" in report.summary()


def test_deleted_record(chain10: str, attacker: Any) -> None:
    attacker.sql(chain10, "DELETE FROM audit_records WHERE seq = 4")
    report = check(chain10)
    assert report.first_bad_seq == 4
    assert report.problem == "record 4 missing (deleted) — seq jumps from 3 to 5"


def test_deleted_range_and_first_record(chain10: str, attacker: Any) -> None:
    attacker.sql(chain10, "DELETE FROM audit_records WHERE seq IN (1, 2, 6, 7, 8)")
    report = check(chain10)
    assert report.first_bad_seq == 1
    assert report.problem == "records 1..2 missing (deleted) — the chain starts at seq 3"
    assert [p.seq for p in report.problems] == [1, 6]
    assert report.problems[1].message == "records 6..8 missing (deleted) — seq jumps from 5 to 9"


def test_swapped_records(chain10: str, attacker: Any) -> None:
    attacker.sql(
        chain10,
        "UPDATE audit_records SET seq = -1 WHERE seq = 3",
        "UPDATE audit_records SET seq = 3 WHERE seq = 6",
        "UPDATE audit_records SET seq = 6 WHERE seq = -1",
    )
    report = check(chain10)
    assert report.first_bad_seq == 3
    assert report.problem == "record 3: hash does not match its content (modified)"


def rehash(url: str, attacker: Any, seq: int, prev_hash: str | None = None) -> None:
    """What a smarter attacker does: recompute the hash of a record it changed."""
    [row] = attacker.rows(url, f"SELECT {COLUMNS} FROM audit_records WHERE seq = ?", (seq,))
    values = list(row)
    if prev_hash is not None:
        values[11] = prev_hash
    attacker.sql(
        url,
        (
            "UPDATE audit_records SET prev_hash = ?, hash = ? WHERE seq = ?",
            (values[11], chain_hash(*values), seq),
        ),
    )


def test_reordered_records_with_recomputed_hashes(chain10: str, attacker: Any) -> None:
    attacker.sql(
        chain10,
        "UPDATE audit_records SET seq = -1 WHERE seq = 8",
        "UPDATE audit_records SET seq = 8 WHERE seq = 9",
        "UPDATE audit_records SET seq = 9 WHERE seq = -1",
    )
    rehash(chain10, attacker, 8)
    rehash(chain10, attacker, 9)
    report = check(chain10)
    assert report.first_bad_seq == 8
    assert report.problem == "record 8: prev_hash does not match record 7 (reordered or altered)"


def test_inserted_records(chain10: str, attacker: Any) -> None:
    # a record slipped in before the start of the chain
    attacker.sql(
        chain10,
        f"INSERT INTO audit_records ({COLUMNS}, hash) SELECT chain, 0, ts, kind, tenant, agent, "
        "run_id, tool, decision, rule_id, body, prev_hash, hash FROM audit_records WHERE seq = 1",
    )
    report = check(chain10)
    assert not report.ok
    assert report.problem == "record 0: sequence numbers start at 1 (inserted)"


def test_inserted_in_the_middle_with_recomputed_hash(chain10: str, attacker: Any) -> None:
    """Making room shifts the later records, whose hashes cover their seq: the chain breaks at
    the first shifted record even though the forged one is self-consistent."""
    for seq in range(10, 4, -1):
        attacker.sql(chain10, f"UPDATE audit_records SET seq = {seq + 1} WHERE seq = {seq}")
    attacker.sql(
        chain10,
        f"INSERT INTO audit_records ({COLUMNS}, hash) SELECT chain, 5, ts, kind, tenant, agent, "
        "run_id, 'wire_money', decision, rule_id, body, hash, '' FROM audit_records WHERE seq = 4",
    )
    rehash(chain10, attacker, 5)
    report = check(chain10)
    assert report.first_bad_seq == 6
    assert report.problem == "record 6: hash does not match its content (modified)"


def test_duplicate_rows_after_dropping_the_primary_key(chain10: str, attacker: Any) -> None:
    attacker.sql(
        chain10,
        "CREATE TABLE audit_copy AS SELECT * FROM audit_records",
        "DROP TABLE audit_records",
        "ALTER TABLE audit_copy RENAME TO audit_records",
        "INSERT INTO audit_records SELECT * FROM audit_records WHERE seq = 5",
    )
    report = check(chain10)
    assert report.first_bad_seq == 5
    assert report.problem == "record 5 appears more than once (inserted)"


def test_invalid_utf8_and_foreign_types_are_named(sqlite_chain10: str, attacker: Any) -> None:
    """SQLite-only: PostgreSQL refuses invalid UTF-8 and bytes in a text column outright."""
    attacker.sql(
        sqlite_chain10,
        ("UPDATE audit_records SET tenant = CAST(? AS TEXT) WHERE seq = 6", (b"ac\xffme",)),
        ("UPDATE audit_records SET agent = ? WHERE seq = 8", (b"agent-1",)),
    )
    report = check(sqlite_chain10)
    assert report.first_bad_seq == 6
    assert [p.seq for p in report.problems] == [6, 8]
    assert all("hash does not match" in p.message for p in report.problems)


def test_non_numeric_seq(sqlite_chain10: str, attacker: Any) -> None:
    """SQLite-only: PostgreSQL refuses text in an integer column outright."""
    attacker.sql(sqlite_chain10, "UPDATE audit_records SET seq = 'x' WHERE seq = 10")
    report = check(sqlite_chain10)
    assert not report.ok  # the last record's seq became text: it is not in the chain any more
    assert report.problem == "a record has seq 'x', which is not a number (modified)"


# -- checkpoints and truncation ------------------------------------------------------------------


@pytest.fixture
def signed(store_url: str, entry: Entry, keys: Any, anchor_path: Path) -> str:
    build(store_url, entry, 23, keys=keys, every=5, anchors=anchor_path)
    return store_url


def test_signed_log_verifies(signed: str, keys: Any, anchor_path: Path) -> None:
    report = check(signed, verifier=keys, checkpoint_path=anchor_path)
    assert report.ok, report.problem
    assert (report.checkpoints_checked, report.signatures_checked) == (4, 4)
    unsigned = check(signed)
    assert unsigned.ok
    assert unsigned.notes == ("checkpoint signatures were not checked (no verifier given)",)


def test_truncation_caught_by_the_checkpoint_table(signed: str, attacker: Any, keys: Any) -> None:
    attacker.sql(signed, "DELETE FROM audit_records WHERE seq > 17")
    report = check(signed, verifier=keys)
    assert report.first_bad_seq == 18
    assert report.problem == (
        "truncated: checkpoint at seq 20 signed by key k1 but the log ends at 17"
    )


def test_truncation_of_records_and_checkpoints_caught_by_the_anchor_file(
    signed: str, attacker: Any, keys: Any, anchor_path: Path
) -> None:
    attacker.sql(
        signed,
        "DELETE FROM audit_records WHERE seq > 12",
        "DELETE FROM audit_checkpoints WHERE seq > 12",
    )
    assert check(signed, verifier=keys).ok  # the database alone looks consistent
    report = check(signed, verifier=keys, checkpoint_path=anchor_path)
    assert report.first_bad_seq == 13
    assert report.problem == (
        "truncated: checkpoint at seq 20 signed by key k1 but the log ends at 12"
    )


def test_everything_deleted(signed: str, attacker: Any, keys: Any, anchor_path: Path) -> None:
    attacker.sql(signed, "DELETE FROM audit_records", "DELETE FROM audit_checkpoints")
    report = check(signed, verifier=keys, checkpoint_path=anchor_path)
    assert report.first_bad_seq == 1 and report.first_bad_chain == "main"
    assert report.problem == (
        "truncated: checkpoint at seq 20 signed by key k1 but the log has no records"
    )


def test_deleted_anchor_file(signed: str, keys: Any, anchor_path: Path) -> None:
    anchor_path.unlink()
    report = check(signed, verifier=keys, checkpoint_path=anchor_path)
    assert not report.ok
    assert report.problem is not None and "anchor file" in report.problem


def test_malformed_anchor_line(signed: str, keys: Any, anchor_path: Path) -> None:
    with anchor_path.open("a") as handle:
        handle.write("{not json\n")
    report = check(signed, verifier=keys, checkpoint_path=anchor_path)
    assert report.problem == "anchor file line 5 is malformed (modified)"


def test_forged_checkpoint_signature(signed: str, attacker: Any, keys: Any) -> None:
    attacker.sql(
        signed,
        "UPDATE audit_checkpoints SET signature = '00' || substr(signature, 3) WHERE seq = 10",
    )
    report = check(signed, verifier=keys)
    assert report.first_bad_seq == 10
    assert report.problem == "checkpoint at seq 10 (key k1): checkpoint signature invalid"


def test_checkpoint_of_an_unknown_key(signed: str, make_keys: Callable[[str], Any]) -> None:
    report = check(signed, verifier=make_keys("k2"))
    assert not report.ok
    assert all("signature invalid" in p.message for p in report.problems)


def test_rewritten_log_is_caught_by_the_signed_checkpoint(
    signed: str, attacker: Any, keys: Any, anchor_path: Path
) -> None:
    """The attacker changes record 3 and recomputes every hash after it: the chain is
    self-consistent again, but no longer matches what was signed at seq 5."""
    attacker.sql(signed, "UPDATE audit_records SET decision = 'allow' WHERE seq = 3")
    [[prev_hash]] = attacker.rows(signed, "SELECT hash FROM audit_records WHERE seq = 2")
    for seq in range(3, 24):
        rehash(signed, attacker, seq, prev_hash)
        [[prev_hash]] = attacker.rows(
            signed, "SELECT hash FROM audit_records WHERE seq = ?", (seq,)
        )
    report = check(signed, verifier=keys)
    assert report.first_bad_seq == 5
    assert report.problem == (
        "record 5 does not match the checkpoint signed by key k1 at seq 5 (log rewritten)"
    )
    # rewriting the checkpoints too only moves the failure to their signatures
    attacker.sql(
        signed,
        "UPDATE audit_checkpoints SET hash = (SELECT hash FROM audit_records r "
        "WHERE r.chain = audit_checkpoints.chain AND r.seq = audit_checkpoints.seq)",
    )
    report = check(signed, verifier=keys)
    assert report.problem == "checkpoint at seq 5 (key k1): checkpoint signature invalid"
    anchored = check(signed, checkpoint_path=anchor_path)  # even unsigned, the file disagrees
    assert anchored.first_bad_seq == 5


def test_several_chains(store: Store, store_url: str, attacker: Any, entry: Entry) -> None:
    for name in ("main", "billing"):
        log = AuditLog(store, FrozenClock(), chain=name)
        for i in range(4):
            log.record(entry(i))
    attacker.sql(store_url, "DELETE FROM audit_records WHERE chain = 'main' AND seq = 2")
    report = verify_chain(store)
    assert report.chains == ("billing", "main")
    assert (report.first_bad_chain, report.first_bad_seq) == ("main", 2)
    assert verify_chain(store, chain="billing").ok


def test_the_report_streams_large_logs(store_url: str, entry: Entry) -> None:
    with open_store(store_url) as store:
        log = AuditLog(store, FrozenClock())
        with store.write() as tx:  # one transaction: building the log is not what is tested
            for i in range(5000):
                log.append(tx, entry(i))
    report = check(store_url)
    assert report.ok and report.records_checked == 5000


def test_rows_can_be_read_back_like_the_verifier_does(chain10: str, attacker: Any) -> None:
    """The raw rows the attacker sees hash to the stored hash (the test helper is sound)."""
    for row in attacker.rows(chain10, f"SELECT {COLUMNS}, hash FROM audit_records"):
        assert chain_hash(*row[:12]) == row[12]
    assert json.loads(attacker.rows(chain10, "SELECT body FROM audit_records")[0][0])["n"] == 0
