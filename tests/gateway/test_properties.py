"""Property: a call that Keel does not allow never reaches the tool."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel import App, KeelConfig
from keel.errors import KeelError
from keel.gateway import CallRequest
from keel.testing import FrozenClock

from .conftest import POLICY, SCOPES, Tools

calls = st.fixed_dictionaries(
    {
        "tool": st.sampled_from(
            ["billing.refund", "orders.lookup", "email.send", "admin.wipe", "files.read", "nope.x"]
        ),
        "amount": st.one_of(
            st.integers(-10, 3000), st.decimals(-5, 2000, places=2).map(str), st.just("ten")
        ),
        "destination": st.sampled_from(["original_payment_method", "ACCT-9", ""]),
        "to": st.sampled_from(
            ["ops@example.com", "x@evil.example", "a@example.com, b@evil.example"]
        ),
        "scopes": st.sets(st.sampled_from(SCOPES)),
        "tenant": st.sampled_from(["acme", "globex"]),
        "kill": st.sampled_from(
            [None, ("tool", "billing.refund"), ("tenant", "acme"), ("agent", "bot")]
        ),
        "token": st.sampled_from(["valid", "forged", "expired"]),
        "key": st.sampled_from([None, "k1", "k2"]),
    }
)


TOOL_SCOPES = {
    "billing.refund": "billing:write",
    "orders.lookup": "orders:read",
    "email.send": "email:send",
    "admin.wipe": "admin:write",
    "files.read": "files:read",
}


def _must_deny(spec: dict[str, object], tool: str) -> str | None:
    """Conditions under which Keel must refuse, whatever else holds (an independent oracle)."""
    if spec["token"] != "valid":
        return f"{spec['token']} token"
    if tool not in TOOL_SCOPES:
        return "unknown tool"
    if TOOL_SCOPES[tool] not in spec["scopes"]:  # type: ignore[operator]
        return "missing scope"
    if spec["tenant"] != "acme":
        return "no policy for the tenant"
    if tool == "admin.wipe":
        return "tool on the deny list"
    kill = spec["kill"]
    if kill in (("tenant", "acme"), ("agent", "bot")) or kill == ("tool", tool):
        return f"kill switch {kill}"
    if tool == "email.send" and spec["to"] != "ops@example.com":
        return "external email"
    if tool == "billing.refund" and spec["destination"] != "original_payment_method":
        return "refund destination"
    return None


#: Examples per backend: PostgreSQL costs more per example (connections, round trips).
EXAMPLES = {"sqlite": 150, "postgres": 40}


def test_a_denied_call_never_executes(backend: str, example_store_url: Callable[[], str]) -> None:
    @settings(
        max_examples=EXAMPLES[backend],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(calls, min_size=1, max_size=6))
    def check(sequence: list[dict[str, object]]) -> None:
        _run_sequence(example_store_url(), sequence)

    check()


def _run_sequence(store_url: str, sequence: list[dict[str, object]]) -> None:
    clock = FrozenClock()
    with tempfile.TemporaryDirectory() as tmp:
        config = KeelConfig(store_url=store_url, home=Path(tmp) / "home")
        with App(config, clock=clock) as app:
            app.add_policy(POLICY)
            tools = Tools()
            for tool in tools.all():
                app.register(tool)
            for spec in sequence:
                kill = spec["kill"]
                if kill is not None:
                    app.kill_switches.engage(*kill, reason="prop", actor="test")  # type: ignore[misc]
                token = app.mint_token("bot", tenant=spec["tenant"], scopes=spec["scopes"])  # type: ignore[arg-type]
                if spec["token"] == "forged":
                    token = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
                tool = str(spec["tool"])
                args: dict[str, object] = {}
                if tool == "billing.refund":
                    args = {
                        "order_id": "A",
                        "amount": spec["amount"],
                        "destination": spec["destination"],
                    }
                elif tool == "email.send":
                    args = {"to": spec["to"]}
                before = tools.total_calls()
                if spec["token"] == "expired":
                    clock.advance(minutes=16)
                must_deny = _must_deny(spec, tool)
                try:
                    result = app.call(
                        CallRequest(
                            tool=tool, arguments=args, token=token, idempotency_key=spec["key"]
                        )  # type: ignore[arg-type]
                    )
                except KeelError:
                    executed_ok = False
                else:
                    executed_ok = not result.shadow and not result.replayed
                    assert result.verdict.decision == "allow"
                assert tools.total_calls() - before == (1 if executed_ok else 0)
                if must_deny:
                    assert not executed_ok, f"{must_deny} but the call executed"
                if kill is not None:
                    app.kill_switches.release(*kill, reason="prop", actor="test")  # type: ignore[misc]
            assert app.verify_audit().ok
