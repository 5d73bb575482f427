"""Offline verification of the audit log (ATTACKS.md #40).

``verify_chain`` streams every record of every chain (or of one) in sequence order and checks:

* content: each record's hash matches the hash of what is stored (any changed column);
* continuity: sequence numbers run 1, 2, 3, ... with no gap (deleted records), no duplicate and
  nothing below 1 (inserted records);
* links: each record's ``prev_hash`` is the stored hash of the record before it (reordering,
  records replaced by others);
* checkpoints, from the ``audit_checkpoints`` table and from an external anchor file: each
  signature is valid (with a ``verifier``), the record at the checkpoint's ``seq`` still has the
  signed hash (the log was rewritten), and the log reaches every checkpoint (truncation).

What it cannot see: records appended after the newest checkpoint by someone who can write the
database and recompute hashes (a hash chain has no secret); a checkpoint every N records and an
anchor file outside the database bound that window.

Memory is bounded by the number of checkpoints, not records: rows are streamed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from keel.audit.checkpoint import Checkpoint, Verifier, read_anchors
from keel.audit.record import GENESIS_HASH, chain_hash
from keel.store import Row, Store, Transaction

__all__ = ["Problem", "VerifyReport", "verify_chain"]

_RECORDS: Final = (
    "SELECT chain, seq, ts, kind, tenant, agent, run_id, tool, decision, rule_id, body, "
    "prev_hash, hash FROM audit_records"
)
_CHECKPOINTS: Final = "SELECT chain, seq, hash, ts, key_id, signature FROM audit_checkpoints"
_MAX_PROBLEMS: Final = 1000


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding. ``seq`` is the first record it concerns (None for file-level problems)."""

    chain: str | None
    seq: int | None
    message: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of ``verify_chain``.

    ``first_bad_seq`` / ``first_bad_chain`` name the earliest record from which the log cannot be
    trusted (in the first chain, by name, that has a problem); ``problem`` describes it. Findings
    without a place in a chain (a malformed anchor line, a record numbered below 1) leave
    ``first_bad_seq`` None when they are the only ones. ``problems`` lists every finding (at most
    1000). ``chain_records`` counts the records read per chain.
    """

    ok: bool
    records_checked: int
    chains: tuple[str, ...]
    first_bad_seq: int | None = None
    first_bad_chain: str | None = None
    problem: str | None = None
    problems: tuple[Problem, ...] = ()
    checkpoints_checked: int = 0
    signatures_checked: int = 0
    notes: tuple[str, ...] = field(default=())
    chain_records: Mapping[str, int] = field(default_factory=dict)

    def by_chain(self) -> list[dict[str, Any]]:
        """One verdict per chain, by name: ``chain``, ``ok``, ``records`` read, and where it
        cannot be trusted from (``first_bad_seq``, ``problem``) with its number of ``problems``."""
        out: list[dict[str, Any]] = []
        for chain in self.chains:
            found = [p for p in self.problems if p.chain == chain]
            placed = [p for p in found if p.seq is not None]
            first = min(placed, key=lambda p: p.seq or 0) if placed else next(iter(found), None)
            out.append(
                {
                    "chain": chain,
                    "ok": not found,
                    "records": self.chain_records.get(chain, 0),
                    "first_bad_seq": None if first is None else first.seq,
                    "problem": None if first is None else first.message,
                    "problems": len(found),
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for the REST API)."""
        return {
            "ok": self.ok,
            "records_checked": self.records_checked,
            "first_bad_chain": self.first_bad_chain,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "chains": self.by_chain(),
            "problems": [
                {"chain": p.chain, "seq": p.seq, "message": p.message} for p in self.problems
            ],
            "checkpoints_checked": self.checkpoints_checked,
            "signatures_checked": self.signatures_checked,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """One readable paragraph."""
        chains = ", ".join(self.chains) or "none"
        head = (
            f"audit log OK: {self.records_checked} records in chain(s) {chains}, "
            f"{self.checkpoints_checked} checkpoint(s), {self.signatures_checked} signature(s) "
            "checked"
            if self.ok
            else f"audit log FAILED verification: {self.problem}"
            + (f" ({len(self.problems)} problems in all)" if len(self.problems) > 1 else "")
        )
        return "; ".join((head, *self.notes))


class _Findings:
    __slots__ = ("items", "truncated")

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.truncated = False

    def add(self, chain: str | None, seq: int | None, message: str) -> None:
        if len(self.items) < _MAX_PROBLEMS:
            self.items.append(Problem(chain, seq, message))
        else:
            self.truncated = True


def _label(chain: Any) -> str:
    return chain if isinstance(chain, str) else repr(chain)


def verify_chain(
    store: Store,
    verifier: Verifier | None = None,
    chain: str | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Verify the audit log in ``store`` (every chain, or only ``chain``).

    ``verifier`` checks checkpoint signatures (without one, checkpoints are still compared with
    the log but their signatures are not checked, which the report notes). ``checkpoint_path`` is
    the external anchor file written by ``AuditLog(checkpoint_path=...)``.
    """
    findings = _Findings()
    notes: list[str] = []
    checkpoints: dict[tuple[str, int], set[Checkpoint]] = {}
    params: tuple[str, ...] = () if chain is None else (chain,)
    where = "" if chain is None else " WHERE chain = ?"

    with store.read() as tx:
        table_count = 0
        for row in _checkpoint_rows(tx, store.dialect, where, params):
            table_count += 1
            checkpoint = _checkpoint_from_row(row)
            if checkpoint is None:
                findings.add(
                    _label(row[0]), None, f"checkpoint row {row[:2]!r} is malformed (modified)"
                )
            else:
                checkpoints.setdefault((checkpoint.chain, checkpoint.seq), set()).add(checkpoint)
        if checkpoint_path is not None:
            _load_anchors(checkpoint_path, chain, table_count, checkpoints, findings)
        ends, counts = _scan(_record_rows(tx, store.dialect, chain), checkpoints, findings)

    chains = set(ends)
    if chain is not None:
        chains.add(chain)
    signatures = 0
    newest: dict[str, Checkpoint] = {}
    for (cp_chain, cp_seq), found in checkpoints.items():
        chains.add(cp_chain)
        for checkpoint in sorted(found, key=lambda c: (c.key_id, c.signature)):
            if verifier is not None:
                signatures += 1
                if not checkpoint.check(verifier):
                    findings.add(
                        cp_chain,
                        cp_seq,
                        f"checkpoint at seq {cp_seq} (key {checkpoint.key_id}): "
                        "checkpoint signature invalid",
                    )
            best = newest.get(cp_chain)
            if best is None or checkpoint.seq > best.seq:
                newest[cp_chain] = checkpoint
    for cp_chain, checkpoint in newest.items():
        end = ends.get(cp_chain, 0)
        if checkpoint.seq > end:
            where_it_ends = f"the log ends at {end}" if end else "the log has no records"
            findings.add(
                cp_chain,
                end + 1,
                f"truncated: checkpoint at seq {checkpoint.seq} signed by key "
                f"{checkpoint.key_id} but {where_it_ends}",
            )
    if checkpoints and verifier is None:
        notes.append("checkpoint signatures were not checked (no verifier given)")
    if findings.truncated:
        notes.append(f"only the first {_MAX_PROBLEMS} problems are listed")
    return _report(findings.items, counts, chains, len(checkpoints), signatures, notes)


class _Foreign:
    """A value of a type the column never holds (an attacker wrote a BLOB or a number)."""

    __slots__ = ("sqltype",)

    def __init__(self, sqltype: str) -> None:
        self.sqltype = sqltype

    def __repr__(self) -> str:
        return f"<{self.sqltype} value>"


def _raw_select(columns: tuple[str, ...], text_columns: frozenset[str], table: str) -> str:
    parts = [f"typeof({c}), CAST({c} AS BLOB)" if c in text_columns else c for c in columns]
    return f"SELECT {', '.join(parts)} FROM {table}"


def _decode_raw(row: tuple[Any, ...], columns: tuple[str, ...], text: frozenset[str]) -> Row:
    """Rebuild a row read by ``_raw_select``: text decoded (invalid UTF-8 kept as surrogates, which
    fail hashing), other types of values in text columns wrapped in ``_Foreign``."""
    out: list[Any] = []
    i = 0
    for column in columns:
        if column in text:
            sqltype, raw = row[i], row[i + 1]
            i += 2
            if sqltype == "null":
                out.append(None)
            elif sqltype == "text":
                out.append(bytes(raw).decode("utf-8", "surrogateescape"))
            else:
                out.append(_Foreign(str(sqltype)))
        else:
            out.append(row[i])
            i += 1
    return tuple(out)


_RECORD_COLUMNS: Final = (
    "chain",
    "seq",
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
_CHECKPOINT_COLUMNS: Final = ("chain", "seq", "hash", "ts", "key_id", "signature")
_NOT_TEXT: Final = frozenset({"seq"})


def _record_rows(tx: Transaction, dialect: str, chain: str | None) -> Iterator[Row]:
    """Every record row in (chain, seq) order, streamed.

    SQLite stores any bytes as TEXT, and the driver refuses to decode invalid UTF-8: from the
    first such row on, rows are read as raw bytes instead, so the verifier can name the record.
    """
    params: list[Any] = [] if chain is None else [chain]
    where = "" if chain is None else " WHERE chain = ?"
    last: tuple[Any, Any] | None = None
    try:
        for row in tx.iterate(_RECORDS + where + " ORDER BY chain, seq", params, batch=2000):
            last = (row[0], row[1])
            yield row
        return
    except Exception:
        if dialect != "sqlite":
            raise
    text = frozenset(_RECORD_COLUMNS) - _NOT_TEXT
    clauses = [] if chain is None else ["chain = ?"]
    if last is not None:
        clauses.append("(chain > ? OR (chain = ? AND seq > ?))")
        params += [last[0], last[0], last[1]]
    sql = _raw_select(_RECORD_COLUMNS, text, "audit_records")
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    for row in tx.iterate(sql + " ORDER BY chain, seq", params, batch=500):
        yield _decode_raw(row, _RECORD_COLUMNS, text)


def _checkpoint_rows(
    tx: Transaction, dialect: str, where: str, params: tuple[str, ...]
) -> Iterator[Row]:
    if dialect != "sqlite":
        yield from tx.iterate(_CHECKPOINTS + where, params)
        return
    text = frozenset(_CHECKPOINT_COLUMNS) - _NOT_TEXT
    sql = _raw_select(_CHECKPOINT_COLUMNS, text, "audit_checkpoints") + where
    for row in tx.iterate(sql, params):
        yield _decode_raw(row, _CHECKPOINT_COLUMNS, text)


def _checkpoint_from_row(row: tuple[Any, ...]) -> Checkpoint | None:
    chain, seq, hash_, ts, key_id, signature = row
    if type(seq) is not int or not all(
        type(v) is str for v in (chain, hash_, ts, key_id, signature)
    ):
        return None
    return Checkpoint(chain, seq, hash_, ts, key_id, signature)


def _load_anchors(
    path: str | os.PathLike[str],
    chain: str | None,
    table_count: int,
    checkpoints: dict[tuple[str, int], set[Checkpoint]],
    findings: _Findings,
) -> None:
    if not os.path.exists(path):
        if table_count:
            findings.add(
                None,
                None,
                f"the checkpoint anchor file {os.fspath(path)!r} is missing although the "
                "database holds checkpoints (deleted?)",
            )
        return
    for number, checkpoint in read_anchors(path):
        if checkpoint is None:
            findings.add(None, None, f"anchor file line {number} is malformed (modified)")
        elif chain is None or checkpoint.chain == chain:
            checkpoints.setdefault((checkpoint.chain, checkpoint.seq), set()).add(checkpoint)


def _scan(
    rows: Iterable[tuple[Any, ...]],
    checkpoints: dict[tuple[str, int], set[Checkpoint]],
    findings: _Findings,
) -> tuple[dict[str, int], dict[str, int]]:
    """Check every row; return the last seq of each chain and the number of rows per chain."""
    ends: dict[str, int] = {}
    counts: dict[str, int] = {}
    checked = 0
    chain_start = 0
    current: Any = object()
    label = ""
    expected = 1
    last_hash: Any = GENESIS_HASH
    hash_record = chain_hash
    add = findings.add
    for row in rows:
        chain, seq, ts, kind, tenant, agent, run_id, tool, decision, rule_id, body, prev, h = row
        checked += 1
        if chain != current or type(chain) is not type(current):
            if checked > 1:
                counts[label] = counts.get(label, 0) + checked - 1 - chain_start
            chain_start = checked - 1
            current, label = chain, _label(chain)
            expected, last_hash = 1, GENESIS_HASH
        if type(seq) is not int:
            add(label, None, f"a record has seq {seq!r}, which is not a number (modified)")
            continue
        linked = True
        if seq > expected:
            if expected == 1:
                gone = "record 1" if seq == 2 else f"records 1..{seq - 1}"
                message = f"{gone} missing (deleted) — the chain starts at seq {seq}"
            elif seq == expected + 1:
                message = (
                    f"record {expected} missing (deleted) — seq jumps from {expected - 1} to {seq}"
                )
            else:
                message = (
                    f"records {expected}..{seq - 1} missing (deleted) — seq jumps from "
                    f"{expected - 1} to {seq}"
                )
            add(label, expected, message)
            linked = False
        elif seq < expected:
            if seq < 1:  # no place in the chain: reported, but never as the first bad record
                add(label, None, f"record {seq}: sequence numbers start at 1 (inserted)")
            else:
                add(label, seq, f"record {seq} appears more than once (inserted)")
            continue
        try:
            computed: str | None = hash_record(
                chain, seq, ts, kind, tenant, agent, run_id, tool, decision, rule_id, body, prev
            )
        except (TypeError, ValueError):  # a value of the wrong type; UnicodeError is a ValueError
            computed = None
        if computed != h:
            add(label, seq, f"record {seq}: hash does not match its content (modified)")
        elif linked and prev != last_hash:
            add(
                label,
                seq,
                f"record {seq}: prev_hash does not match record {seq - 1} (reordered or altered)",
            )
        if checkpoints:
            signed = checkpoints.get((chain, seq)) if type(chain) is str else None
            if signed:
                for checkpoint in signed:
                    if checkpoint.hash != h:
                        add(
                            label,
                            seq,
                            f"record {seq} does not match the checkpoint signed by key "
                            f"{checkpoint.key_id} at seq {seq} (log rewritten)",
                        )
                        break
        last_hash = h
        expected = seq + 1
        if type(chain) is str:
            ends[chain] = seq
    if checked:
        counts[label] = counts.get(label, 0) + checked - chain_start
    return ends, counts


def _report(
    problems: list[Problem],
    counts: dict[str, int],
    chains: set[str],
    checkpoints: int,
    signatures: int,
    notes: list[str],
) -> VerifyReport:
    checked = sum(counts.values())
    ordered = tuple(sorted(chains))
    if not problems:
        return VerifyReport(
            ok=True,
            records_checked=checked,
            chains=ordered,
            checkpoints_checked=checkpoints,
            signatures_checked=signatures,
            notes=tuple(notes),
            chain_records=counts,
        )
    positioned = [p for p in problems if p.seq is not None and p.chain is not None]
    if positioned:
        first_chain = min(p.chain for p in positioned if p.chain is not None)
        in_chain = [p for p in positioned if p.chain == first_chain]
        first = min(in_chain, key=lambda p: p.seq if p.seq is not None else 0)
    else:
        first = problems[0]
    return VerifyReport(
        ok=False,
        records_checked=checked,
        chains=ordered,
        first_bad_seq=first.seq,
        first_bad_chain=first.chain,
        problem=first.message,
        problems=tuple(problems),
        checkpoints_checked=checkpoints,
        signatures_checked=signatures,
        notes=tuple(notes),
        chain_records=counts,
    )
