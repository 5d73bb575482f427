"""Fixtures for the HTTP tool tests: a loopback server, a secret store, an egress policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.net import EgressPolicy
from keel.secrets import SecretStore
from keel.store import Store, open_store

from ._helpers import SECRET
from ._server import Loopback


@pytest.fixture
def server() -> Iterator[Loopback]:
    with Loopback() as loopback:
        yield loopback


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'keel.db'}") as opened:
        yield opened


@pytest.fixture
def secrets(store: Store, tmp_path: Path) -> SecretStore:
    home = tmp_path / "home"
    secrets = SecretStore(store, home / "master.key", environ={"CRM_ENV_TOKEN": "env-token"})
    secrets.put("crm_token", SECRET, actor="test")
    return secrets


@pytest.fixture
def egress() -> EgressPolicy:
    """Loopback is refused by default; these tests allow 127.0.0.1 (and only it)."""
    return EgressPolicy(allow=["127.0.0.1"])
