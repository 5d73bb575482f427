"""A failed call that may still have had its effect: its cost stays spent, its key never re-runs.

A timeout or a 5xx from a tool that changes the world proves nothing: the money may have moved.
Only an error that proves the request never left (``context["executed"] is False``) gives the
budget back and lets the same idempotency key run again.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from keel import App, KeelConfig
from keel.errors import BudgetExceeded, ToolError, ToolTimeout
from keel.testing import FrozenClock
from keel.tools import ToolContext

POLICY = """
policy: unknown-outcomes
scope: {tenant: acme}
tools: {allow: [pay.send, pay.peek]}
caps:
  - {id: money, tools: [pay.send, pay.peek], per: [tenant], window: none, max_usd: 30}
"""


class Upstream:
    """Scripted answers; counts the requests that reached it."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.effects: list[str | None] = []

    def answer(self, ctx: ToolContext) -> dict[str, Any]:
        how = self.script.pop(0) if self.script else "ok"
        if how == "refused":  # the connection was refused: the request never left
            raise ToolError("connection refused", retryable=True, context={"executed": False})
        self.effects.append(ctx.idempotency_key)
        if how == "timeout":
            raise ToolTimeout("no answer in time", retryable=True)
        if how == "5xx":
            raise ToolError("upstream answered 502", retryable=True)
        return {"ok": True}


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def app(tmp_path: Path, store_url: str, upstream: Upstream) -> Iterator[App]:
    config = KeelConfig(store_url=store_url, home=tmp_path / "home")
    with App(config, clock=FrozenClock()) as keel_app:
        keel_app.add_policy(POLICY)

        @keel_app.tool("pay.send", scope="pay:write", effect="irreversible", cost_usd=10)
        def send(to: str, ctx: ToolContext) -> dict[str, Any]:
            return upstream.answer(ctx)

        @keel_app.tool("pay.peek", scope="pay:write", effect="read", cost_usd=10)
        def peek(to: str, ctx: ToolContext) -> dict[str, Any]:
            return upstream.answer(ctx)

        yield keel_app


def _spent(app: App) -> tuple[Decimal, Decimal]:
    line = next(x for x in app.ledger.report(tenant="acme") if x.cap_id.endswith("#money"))
    return line.spent_usd, line.reserved_usd


@pytest.mark.parametrize("failure", ["timeout", "5xx"])
def test_an_ambiguous_failure_keeps_the_spend_and_never_runs_the_key_again(
    app: App, upstream: Upstream, failure: str
) -> None:
    agent = app.agent("bot", tenant="acme", scopes=["pay:write"])
    upstream.script = [failure]
    with pytest.raises(ToolError):
        agent.call("pay.send", {"to": "x"}, idempotency_key="k1")
    assert _spent(app) == (Decimal(10), Decimal(0))  # held → spent, not handed back
    # The same key again: the failure is replayed as final, the tool does not run again.
    with pytest.raises(ToolError) as again:
        agent.call("pay.send", {"to": "x"}, idempotency_key="k1")
    assert again.value.retryable is False
    assert upstream.effects == ["k1"]
    # Two more ambiguous failures and the $30 cap is spent: a fourth call is refused before it
    # reaches the upstream, although no call "succeeded".
    upstream.script = [failure, failure]
    for key in ("k2", "k3"):
        with pytest.raises(ToolError):
            agent.call("pay.send", {"to": "x"}, idempotency_key=key)
    with pytest.raises(BudgetExceeded):
        agent.call("pay.send", {"to": "x"}, idempotency_key="k4")
    assert upstream.effects == ["k1", "k2", "k3"]


def test_a_failure_that_proves_the_call_never_left_gives_everything_back(
    app: App, upstream: Upstream
) -> None:
    agent = app.agent("bot", tenant="acme", scopes=["pay:write"])
    upstream.script = ["refused"]
    with pytest.raises(ToolError) as first:
        agent.call("pay.send", {"to": "x"}, idempotency_key="k1")
    assert first.value.retryable is True
    assert _spent(app) == (Decimal(0), Decimal(0))
    result = agent.call("pay.send", {"to": "x"}, idempotency_key="k1")  # runs now
    assert result.value == {"ok": True}
    assert upstream.effects == ["k1"]
    assert _spent(app) == (Decimal(10), Decimal(0))


def test_a_failed_read_costs_nothing(app: App, upstream: Upstream) -> None:
    agent = app.agent("bot", tenant="acme", scopes=["pay:write"])
    upstream.script = ["timeout"]
    with pytest.raises(ToolTimeout):
        agent.call("pay.peek", {"to": "x"})
    assert _spent(app) == (Decimal(0), Decimal(0))
