"""Property: every tampering of a generated chain is detected, at the right record.

For chains of random length and checkpoint interval, an attacker with the database file (and,
for truncation, the checkpoint table) changes one byte of any column of any record, deletes any
records, swaps any two, or truncates below the newest checkpoint. The verifier must fail and
``first_bad_seq`` must name the first record that was touched.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from keel.audit import AuditEntry, AuditLog, VerifyReport, verify_chain
from keel.store import open_store
from keel.testing import FrozenClock

TEXT_COLUMNS = (
    "chain",
    "ts",
    "kind",
    "tenant",
    "agent",
    "run_id",
    "tool",
    "decision",
    "rule_id",
    "body",
    "prev_hash",
    "hash",
)
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

Pristine = Callable[[int, int], tuple[bytes, bytes]]


@pytest.fixture(scope="module")
def pristine(
    tmp_path_factory: pytest.TempPathFactory, entry: Callable[..., AuditEntry], keys_module: Any
) -> Pristine:
    """``pristine(n, every)``: the bytes of a database with n records and of its anchor file."""
    cache: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    base = tmp_path_factory.mktemp("pristine")

    def get(n: int, every: int) -> tuple[bytes, bytes]:
        if (n, every) not in cache:
            db, anchors = base / f"{n}-{every}.db", base / f"{n}-{every}.anchors"
            with open_store("sqlite:///" + str(db)) as store:
                log = AuditLog(
                    store,
                    FrozenClock(),
                    signer=keys_module,
                    checkpoint_every=every,
                    checkpoint_path=anchors,
                )
                for i in range(n):
                    log.record(entry(i))
            anchors.touch()
            cache[(n, every)] = (db.read_bytes(), anchors.read_bytes())
        return cache[(n, every)]

    return get


@pytest.fixture(scope="module")
def keys_module(make_keys: Callable[[str], Any]) -> Any:
    return make_keys("k1")


@contextmanager
def copy_of(pristine: Pristine, n: int, every: int) -> Iterator[tuple[Path, Path]]:
    db_bytes, anchor_bytes = pristine(n, every)
    with tempfile.TemporaryDirectory() as tmp:
        db, anchors = Path(tmp) / "keel.db", Path(tmp) / "audit.anchors"
        db.write_bytes(db_bytes)
        anchors.write_bytes(anchor_bytes)
        yield db, anchors


def attack(db: Path, *statements: tuple[str, tuple[Any, ...]]) -> bool:
    """Run statements on the file directly; False if SQLite refused (a key collision)."""
    conn = sqlite3.connect(db)
    conn.text_factory = bytes
    try:
        for sql, params in statements:
            conn.execute(sql, params)
        conn.commit()
    except sqlite3.IntegrityError:
        return False
    finally:
        conn.close()
    return True


def read(db: Path, sql: str, params: tuple[Any, ...] = ()) -> Any:
    conn = sqlite3.connect(db)
    conn.text_factory = bytes
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def verify(
    db: Path, keys: Any, anchors: Path | None = None, chain: str | None = None
) -> VerifyReport:
    with open_store("sqlite:///" + str(db)) as store:
        return verify_chain(store, verifier=keys, chain=chain, checkpoint_path=anchors)


sizes = st.tuples(st.integers(2, 20), st.integers(2, 6))


@SETTINGS
@given(
    size=sizes,
    index=st.integers(0, 10**6),
    column=st.sampled_from((*TEXT_COLUMNS, "seq")),
    position=st.integers(0, 10**6),
    byte=st.integers(1, 255),
    as_blob=st.booleans(),
)
def test_any_single_byte_change_is_detected(
    pristine: Pristine,
    keys_module: Any,
    size: tuple[int, int],
    index: int,
    column: str,
    position: int,
    byte: int,
    as_blob: bool,
) -> None:
    n, every = size
    seq = index % n + 1
    with copy_of(pristine, n, every) as (db, anchors):
        where = " WHERE chain = 'main' AND seq = ?"
        if column == "seq":
            shift = 8 * (position % 7)
            new_seq = seq ^ (byte << shift)
            assume(not 1 <= new_seq <= n)
            assert attack(db, ("UPDATE audit_records SET seq = ?" + where, (new_seq, seq)))
        else:
            old = read(db, f"SELECT {column} FROM audit_records" + where, (seq,))
            if old is None:
                new = bytes([byte])
            else:
                p = position % len(old)
                replacement = byte if byte != old[p] else (byte % 255) + 1
                new = old[:p] + bytes([replacement]) + old[p + 1 :]
            value = "?" if as_blob else "CAST(? AS TEXT)"
            statement = f"UPDATE audit_records SET {column} = {value}" + where
            assert attack(db, (statement, (new, seq)))
        report = verify(db, keys_module, anchors)
        assert not report.ok
        if column == "chain":
            # the record left chain "main": seen from "main" it is a deletion (or, for the last
            # record, a truncation that only a checkpoint at that seq reveals)
            main = verify(db, keys_module, anchors, chain="main")
            if seq < n or n % every == 0:
                assert main.first_bad_seq == seq, main.problems
            else:
                assert main.ok
        else:
            assert (report.first_bad_chain, report.first_bad_seq) == ("main", seq), report.problems


@SETTINGS
@given(size=sizes, a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_any_deletion_is_detected(
    pristine: Pristine, keys_module: Any, size: tuple[int, int], a: int, b: int
) -> None:
    n, every = size
    first, last = sorted((a % (n - 1) + 1, b % (n - 1) + 1))  # the last record stays
    with copy_of(pristine, n, every) as (db, anchors):
        attack(db, ("DELETE FROM audit_records WHERE seq BETWEEN ? AND ?", (first, last)))
        report = verify(db, keys_module, anchors)
        assert report.first_bad_seq == first, report.problems
        assert report.problem is not None and "missing (deleted)" in report.problem


@SETTINGS
@given(size=sizes, a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_any_swap_of_two_records_is_detected(
    pristine: Pristine, keys_module: Any, size: tuple[int, int], a: int, b: int
) -> None:
    n, every = size
    i, j = a % n + 1, b % n + 1
    assume(i != j)
    i, j = min(i, j), max(i, j)
    with copy_of(pristine, n, every) as (db, anchors):
        assert attack(
            db,
            ("UPDATE audit_records SET seq = -1 WHERE seq = ?", (i,)),
            ("UPDATE audit_records SET seq = ? WHERE seq = ?", (i, j)),
            ("UPDATE audit_records SET seq = ? WHERE seq = -1", (j,)),
        )
        report = verify(db, keys_module, anchors)
        assert report.first_bad_seq == i, report.problems


@SETTINGS
@given(
    size=sizes,
    cut=st.integers(0, 10**6),
    drop_checkpoints=st.booleans(),
    use_anchor_file=st.booleans(),
)
def test_any_truncation_below_a_checkpoint_is_detected(
    pristine: Pristine,
    keys_module: Any,
    size: tuple[int, int],
    cut: int,
    drop_checkpoints: bool,
    use_anchor_file: bool,
) -> None:
    n, every = size
    newest_checkpoint = n // every * every
    assume(newest_checkpoint > 0)
    keep = cut % newest_checkpoint  # records 1..keep survive, keep < the newest checkpoint
    assume(use_anchor_file or not drop_checkpoints)  # without either, nothing remembers the end
    with copy_of(pristine, n, every) as (db, anchors):
        statements = [("DELETE FROM audit_records WHERE seq > ?", (keep,))]
        if drop_checkpoints:
            statements.append(("DELETE FROM audit_checkpoints WHERE seq > ?", (keep,)))
        attack(db, *statements)
        report = verify(db, keys_module, anchors if use_anchor_file else None)
        assert report.first_bad_seq == keep + 1, report.problems
        assert report.problem is not None and report.problem.startswith(
            f"truncated: checkpoint at seq {newest_checkpoint} signed by key k1"
        )
