from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keel import App, KeelConfig
from keel.testing import FrozenClock

POLICY = """
policy: runtime-tests
tools:
  allow: [bank.balance, bank.transfer, bank.notify, bank.flaky]
models: {allow: ["*"]}
require_approval_if_over: {bank.transfer: 1000}
"""


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def app(tmp_path: Path, store_url: str, clock: FrozenClock) -> Iterator[App]:
    config = KeelConfig(
        store_url=store_url,
        home=tmp_path / "home",
        models={"prices": {"scripted:*": {"input": "1", "output": "1"}}},
    )
    with App(config, clock=clock) as keel_app:
        keel_app.add_policy(POLICY)
        yield keel_app
