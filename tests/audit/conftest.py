"""Fixtures for the audit tests: a fresh store on each backend, a frozen clock, Ed25519 keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keel.audit import AuditEntry, AuditLog
from keel.store import Store, open_store
from keel.testing import FrozenClock

SALT = b"test-salt-0123456789abcdef"


class Ed25519Keys:
    """A tiny signer and verifier (what identity's KeySet provides in the real app)."""

    def __init__(self, key_id: str = "k1") -> None:
        self.key_id = key_id
        self._private = Ed25519PrivateKey.generate()
        self._public: dict[str, Ed25519PublicKey] = {key_id: self._private.public_key()}

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def trust(self, other: Ed25519Keys) -> None:
        self._public.update(other._public)

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        public = self._public.get(key_id)
        if public is None:
            return False
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def sample_entry(i: int, **overrides: Any) -> AuditEntry:
    """A varied entry: all three kinds, some absent fields, some non-ASCII text."""
    kind = ("call", "decision", "control")[i % 3]
    fields: dict[str, Any] = {
        "kind": kind,
        "tenant": "zürich" if i % 4 == 0 else "acme",
        "agent": None if kind == "control" else f"agent-{i % 2}",
        "run_id": f"run-{i % 3}",
        "step_id": f"step-{i}",
        "tool": "kill_switch" if kind == "control" else ("refund" if i % 2 else "lookup"),
        "call_id": f"call-{i}",
        "decision": "engage" if kind == "control" else ("allow" if kind == "call" else "deny"),
        "rule_id": None if kind == "control" else f"rule-{i % 5}",
        "body": {"n": i, "note": "café ☕" if i % 5 == 0 else "ok", "args": {"amount": str(i)}},
    }
    fields.update(overrides)
    return AuditEntry(**fields)


class Attacker:
    """Edits the tables directly with SQL, bypassing the audit log (on either backend).

    It has the database: it opens the store at ``url`` and runs its statements in one write
    transaction (SQL with ``?`` placeholders, as every backend takes them).
    """

    def sql(self, url: str, *statements: tuple[str, tuple[Any, ...]] | str) -> None:
        with open_store(url) as store, store.write() as tx:
            for statement in statements:
                if isinstance(statement, str):
                    tx.execute(statement)
                else:
                    tx.execute(*statement)

    def rows(self, url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with open_store(url) as store, store.read() as tx:
            return tx.fetchall(statement, params)


@pytest.fixture(scope="session")
def attacker() -> Attacker:
    return Attacker()


@pytest.fixture(scope="session")
def entry() -> Callable[..., AuditEntry]:
    """``entry(i, **overrides)``: the i-th sample entry."""
    return sample_entry


@pytest.fixture(scope="session")
def make_keys() -> Callable[[str], Ed25519Keys]:
    return Ed25519Keys


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def keys() -> Ed25519Keys:
    return Ed25519Keys("k1")


@pytest.fixture
def anchor_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.anchors"


@pytest.fixture
def log(store: Store, clock: FrozenClock) -> AuditLog:
    return AuditLog(store, clock)


@pytest.fixture
def filled(store: Store, clock: FrozenClock, entry: Callable[..., AuditEntry]) -> Store:
    """``store`` with 30 sample records, a minute apart."""
    log = AuditLog(store, clock)
    for i in range(30):
        log.record(entry(i))
        clock.advance(minutes=1)
    return store
