from __future__ import annotations

import json
import subprocess
import sys

import pytest

from keel import App, KeelConfig
from keel.audit import query
from keel.errors import KillSwitchEngaged, UsageError
from keel.identity import delegate
from keel.testing import FrozenClock

from .conftest import SCOPES, Tools


@pytest.mark.parametrize(
    ("scope", "target"),
    [
        ("global", "*"),
        ("tenant", "acme"),
        ("agent", "bot"),
        ("workflow", "support"),
        ("tool", "orders.lookup"),
        ("tool", "orders.*"),
    ],
)
def test_each_scope_stops_the_next_call(app: App, tools: Tools, scope: str, target: str) -> None:
    agent = app.agent("bot", tenant="acme", scopes=SCOPES)
    agent.call("orders.lookup", {}, workflow="support")
    app.kill_switches.engage(scope, target, reason="incident 42", actor="oncall")
    with pytest.raises(KillSwitchEngaged) as info:
        agent.call("orders.lookup", {}, workflow="support")
    assert "incident 42" in info.value.message
    assert tools.lookup.calls == 1
    app.kill_switches.release(scope, target, reason="fixed", actor="oncall")
    agent.call("orders.lookup", {}, workflow="support")
    assert tools.lookup.calls == 2


def test_unrelated_targets_are_not_stopped(app: App, tools: Tools) -> None:
    app.kill_switches.engage("tenant", "globex", reason="x", actor="o")
    app.kill_switches.engage("tool", "billing.*", reason="x", actor="o")
    app.agent("bot", tenant="acme", scopes=SCOPES).call("orders.lookup", {})
    assert tools.lookup.calls == 1


def test_changes_are_recorded(app: App, tools: Tools) -> None:
    app.kill_switches.engage("agent", "bot", reason="loop detected", actor="sre@example.com")
    record = query(app.store, limit=1)[0]
    assert record.entry.kind == "control"
    assert record.entry.body["reason"] == "loop detected"
    assert record.entry.body["actor"] == "sre@example.com"
    assert app.verify_audit().ok


def test_bad_switches_are_usage_errors(app: App) -> None:
    with pytest.raises(UsageError):
        app.kill_switches.engage("planet", "earth", reason="x", actor="o")
    with pytest.raises(UsageError):
        app.kill_switches.engage("tenant", "", reason="x", actor="o")
    with pytest.raises(UsageError):
        app.kill_switches.engage("tenant", "acme", reason=" ", actor="o")


def test_stopping_an_agent_stops_the_agents_it_delegated_to(app: App, tools: Tools) -> None:
    parent = app.mint_token("router", tenant="acme", scopes=SCOPES)
    child = delegate(app.issuer, app.verifier, parent, "refunds", ["orders:read"])
    from keel.gateway import CallRequest

    app.call(CallRequest(tool="orders.lookup", arguments={}, token=child))
    record = query(app.store, limit=1)[0]
    assert record.entry.body["principal"]["act"] == ["router"]
    app.kill_switches.engage("agent", "router", reason="compromised", actor="o")
    with pytest.raises(KillSwitchEngaged):
        app.call(CallRequest(tool="orders.lookup", arguments={}, token=child))


def test_another_process_flipping_a_switch_is_seen_after_the_refresh(
    tmp_config: KeelConfig, clock: FrozenClock, tools: Tools
) -> None:
    """`keel kill` in a separate process; this process sees it on its next refresh (≤ 1 s)."""
    with App(tmp_config, clock=clock) as app:
        app.add_policy("policy: p\ntools: {allow: [orders.lookup]}\n")
        app.register(tools.lookup)
        agent = app.agent("bot", tenant="acme", scopes=SCOPES)
        agent.call("orders.lookup", {})
        config_file = tmp_config.home.parent / "keel.yaml"
        config_file.write_text(
            f"store_url: {json.dumps(tmp_config.store_url)}\nhome: {tmp_config.home}\n",
            encoding="utf-8",
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "keel.cli",
                "kill",
                "tool",
                "orders.lookup",
                "--reason",
                "from another process",
                "--config",
                str(config_file),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        clock.advance(seconds=app.config.kill_switch_refresh_seconds)
        with pytest.raises(KillSwitchEngaged):
            agent.call("orders.lookup", {})
        assert tools.lookup.calls == 1
