"""Property: every tampering of a generated chain is detected, at the right record.

For chains of random length and checkpoint interval, an attacker with the database (and, for
truncation, the checkpoint table) changes one byte of any column of any record, deletes any
records, swaps any two, or truncates below the newest checkpoint. The verifier must fail and
``first_bad_seq`` must name the first record that was touched.

Each test runs on both backends, with one store for all its examples: every example first puts
the same pristine chain back (built once per length and interval, then copied row by row). On
SQLite the attacker works on raw bytes and may store them as a BLOB or as invalid UTF-8 text
(SQLite keeps whatever it is given); PostgreSQL refuses both, so there it changes one character.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from keel.audit import AuditEntry, AuditLog, VerifyReport, verify_chain
from keel.store import Store
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
#: Examples per backend: PostgreSQL costs more per example (round trips).
EXAMPLES = {"sqlite": 120, "postgres": 50}
TABLES = ("audit_records", "audit_checkpoints")


class Chains:
    """One store for a whole property test; ``restore(n, every)`` makes it hold a pristine
    signed chain of ``n`` records (a checkpoint every ``every``) and its anchor file."""

    def __init__(
        self, store: Store, backend: str, keys: Any, entry: Callable[..., AuditEntry], folder: Path
    ) -> None:
        self.store = store
        self.raw = backend == "sqlite"
        self.keys = keys
        self.entry = entry
        self.anchors = folder / "audit.anchors"
        self.settings = settings(
            max_examples=EXAMPLES[backend],
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        self._pristine: dict[tuple[int, int], tuple[dict[str, list[Any]], bytes]] = {}

    def restore(self, n: int, every: int) -> None:
        with self.store.write() as tx:
            for table in TABLES:
                tx.execute(f"DELETE FROM {table}")
        if (n, every) not in self._pristine:
            self.anchors.unlink(missing_ok=True)
            log = AuditLog(
                self.store,
                FrozenClock(),
                signer=self.keys,
                checkpoint_every=every,
                checkpoint_path=self.anchors,
            )
            for i in range(n):
                log.record(self.entry(i))
            self.anchors.touch()
            with self.store.read() as tx:
                rows = {table: tx.fetchall(f"SELECT * FROM {table}") for table in TABLES}
            self._pristine[(n, every)] = (rows, self.anchors.read_bytes())
            return
        rows, anchor_bytes = self._pristine[(n, every)]
        with self.store.write() as tx:
            for table in TABLES:
                for row in rows[table]:
                    marks = ", ".join("?" * len(row))
                    tx.execute(f"INSERT INTO {table} VALUES ({marks})", row)
        self.anchors.write_bytes(anchor_bytes)

    def attack(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run statements on the tables directly, in one transaction."""
        with self.store.write() as tx:
            for sql, params in statements:
                tx.execute(sql, params)

    def read(self, column: str, seq: int) -> bytes | str | None:
        """A record's column as stored: raw bytes on SQLite, text on PostgreSQL."""
        value = f"CAST({column} AS BLOB)" if self.raw else column
        with self.store.read() as tx:
            row = tx.fetchone(
                f"SELECT {value} FROM audit_records WHERE chain = 'main' AND seq = ?", (seq,)
            )
        assert row is not None
        result: bytes | str | None = row[0]
        return result

    def changed(self, old: bytes | str | None, position: int, byte: int) -> bytes | str:
        """``old`` with its byte (SQLite) or character (PostgreSQL) at ``position`` replaced."""
        if old is None:
            return bytes([byte]) if self.raw else chr(byte)
        p = position % len(old)
        if isinstance(old, bytes):
            replacement = byte if byte != old[p] else (byte % 255) + 1
            return old[:p] + bytes([replacement]) + old[p + 1 :]
        replacement = byte if byte != ord(old[p]) else (byte % 255) + 1
        return old[:p] + chr(replacement) + old[p + 1 :]

    def verify(self, anchors: bool = True, chain: str | None = None) -> VerifyReport:
        return verify_chain(
            self.store,
            verifier=self.keys,
            chain=chain,
            checkpoint_path=self.anchors if anchors else None,
        )


@pytest.fixture(scope="module")
def keys_module(make_keys: Callable[[str], Any]) -> Any:
    return make_keys("k1")


@pytest.fixture
def chains(
    store: Store,
    backend: str,
    keys_module: Any,
    entry: Callable[..., AuditEntry],
    tmp_path: Path,
) -> Chains:
    return Chains(store, backend, keys_module, entry, tmp_path)


sizes = st.tuples(st.integers(2, 20), st.integers(2, 6))


def test_any_single_byte_change_is_detected(chains: Chains) -> None:
    @chains.settings
    @given(
        size=sizes,
        index=st.integers(0, 10**6),
        column=st.sampled_from((*TEXT_COLUMNS, "seq")),
        position=st.integers(0, 10**6),
        byte=st.integers(1, 255),
        as_blob=st.booleans(),
    )
    def check(
        size: tuple[int, int], index: int, column: str, position: int, byte: int, as_blob: bool
    ) -> None:
        n, every = size
        seq = index % n + 1
        chains.restore(n, every)
        where = " WHERE chain = 'main' AND seq = ?"
        if column == "seq":
            shift = 8 * (position % 7)
            new_seq = seq ^ (byte << shift)
            assume(not 1 <= new_seq <= n)
            chains.attack(("UPDATE audit_records SET seq = ?" + where, (new_seq, seq)))
        else:
            new = chains.changed(chains.read(column, seq), position, byte)
            # SQLite only: the bytes go in as a BLOB, or as text that may not be valid UTF-8.
            value = "?" if as_blob or not chains.raw else "CAST(? AS TEXT)"
            statement = f"UPDATE audit_records SET {column} = {value}" + where
            chains.attack((statement, (new, seq)))
        report = chains.verify()
        assert not report.ok
        if column == "chain":
            # the record left chain "main": seen from "main" it is a deletion (or, for the last
            # record, a truncation that only a checkpoint at that seq reveals)
            main = chains.verify(chain="main")
            if seq < n or n % every == 0:
                assert main.first_bad_seq == seq, main.problems
            else:
                assert main.ok
        else:
            assert (report.first_bad_chain, report.first_bad_seq) == ("main", seq), report.problems

    check()


def test_any_deletion_is_detected(chains: Chains) -> None:
    @chains.settings
    @given(size=sizes, a=st.integers(0, 10**6), b=st.integers(0, 10**6))
    def check(size: tuple[int, int], a: int, b: int) -> None:
        n, every = size
        first, last = sorted((a % (n - 1) + 1, b % (n - 1) + 1))  # the last record stays
        chains.restore(n, every)
        chains.attack(("DELETE FROM audit_records WHERE seq BETWEEN ? AND ?", (first, last)))
        report = chains.verify()
        assert report.first_bad_seq == first, report.problems
        assert report.problem is not None and "missing (deleted)" in report.problem

    check()


def test_any_swap_of_two_records_is_detected(chains: Chains) -> None:
    @chains.settings
    @given(size=sizes, a=st.integers(0, 10**6), b=st.integers(0, 10**6))
    def check(size: tuple[int, int], a: int, b: int) -> None:
        n, every = size
        i, j = a % n + 1, b % n + 1
        assume(i != j)
        i, j = min(i, j), max(i, j)
        chains.restore(n, every)
        chains.attack(
            ("UPDATE audit_records SET seq = -1 WHERE seq = ?", (i,)),
            ("UPDATE audit_records SET seq = ? WHERE seq = ?", (i, j)),
            ("UPDATE audit_records SET seq = ? WHERE seq = -1", (j,)),
        )
        report = chains.verify()
        assert report.first_bad_seq == i, report.problems

    check()


def test_any_truncation_below_a_checkpoint_is_detected(chains: Chains) -> None:
    @chains.settings
    @given(
        size=sizes,
        cut=st.integers(0, 10**6),
        drop_checkpoints=st.booleans(),
        use_anchor_file=st.booleans(),
    )
    def check(
        size: tuple[int, int], cut: int, drop_checkpoints: bool, use_anchor_file: bool
    ) -> None:
        n, every = size
        newest_checkpoint = n // every * every
        assume(newest_checkpoint > 0)
        keep = cut % newest_checkpoint  # records 1..keep survive, keep < the newest checkpoint
        assume(use_anchor_file or not drop_checkpoints)  # else nothing remembers the end
        chains.restore(n, every)
        statements = [("DELETE FROM audit_records WHERE seq > ?", (keep,))]
        if drop_checkpoints:
            statements.append(("DELETE FROM audit_checkpoints WHERE seq > ?", (keep,)))
        chains.attack(*statements)
        report = chains.verify(anchors=use_anchor_file)
        assert report.first_bad_seq == keep + 1, report.problems
        assert report.problem is not None and report.problem.startswith(
            f"truncated: checkpoint at seq {newest_checkpoint} signed by key k1"
        )

    check()
