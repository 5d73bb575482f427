"""Overhead of one governed call, against a direct function call and a cedarpy decision.

    python bench/governed_call.py [--calls 20000]

The governed call runs the whole pipeline in process with a warm token cache: token check,
schema validation, kill switch, scope, policy (bench_policy.yaml: 20 rules), idempotency claim and
completion, audit append with hash chaining on a SQLite WAL file. cedarpy decides the same rules
with its policies and entities parsed once. Targets: p50 ≤ 100 µs, p99 ≤ 300 µs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from keel import App, KeelConfig
from keel.core import Call, Principal

HERE = Path(__file__).resolve().parent

CEDAR_POLICIES = """
permit(principal == Agent::"support-bot", action in [Action::"billing.refund", Action::"orders.lookup", Action::"tickets.read", Action::"tickets.reply", Action::"tickets.close", Action::"email.send", Action::"crm.update"], resource);
forbid(principal, action == Action::"billing.delete_all", resource);
forbid(principal, action == Action::"admin.reset", resource);
forbid(principal, action == Action::"crm.delete", resource) unless { context.approved };
forbid(principal, action == Action::"billing.refund", resource) when { context.amount_cents > 20000 } unless { context.approved };
forbid(principal, action == Action::"billing.refund", resource) when { context.amount_cents < 1 || context.amount_cents > 100000 };
forbid(principal, action == Action::"billing.refund", resource) unless { ["USD", "EUR", "GBP"].contains(context.currency) };
forbid(principal, action == Action::"billing.refund", resource) unless { context.destination == "original_payment_method" };
forbid(principal, action == Action::"billing.refund", resource) when { context.reason_length > 500 };
forbid(principal, action == Action::"crm.update", resource) unless { ["phone", "address", "tier"].contains(context.field) };
forbid(principal, action == Action::"email.send", resource) unless { context.to_domain == "example.com" };
forbid(principal, action == Action::"billing.refund", resource) when { principal.roles.contains("trainee") };
forbid(principal, action == Action::"billing.refund", resource) when { context.tainted && context.amount_cents > 50000 };
forbid(principal, action == Action::"billing.refund", resource) when { context.order_id like "VIP-*" } unless { context.approved };
forbid(principal, action == Action::"billing.refund", resource) when { context.currency == "GBP" } unless { context.approved };
forbid(principal, action == Action::"crm.update", resource) when { context.field == "tier" } unless { context.approved };
forbid(principal, action == Action::"email.send", resource) when { context.to like "*,*" };
forbid(principal, action == Action::"tickets.close", resource) unless { principal.roles.contains("supervisor") || context.approved };
forbid(principal, action, resource) when { principal.tenant != "acme" };
forbid(principal, action, resource) when { context.killed };
"""


def refund(
    order_id: str, amount: Decimal, currency: str, destination: str, reason: str
) -> dict[str, Any]:
    return {"order_id": order_id, "amount": str(amount), "status": "succeeded"}


def measure(fn: Callable[[int], Any], n: int, warmup: int = 500) -> list[float]:
    for i in range(warmup):
        fn(-i - 1)
    samples = []
    gc.collect()
    gc.disable()
    try:
        clock = time.perf_counter_ns
        for i in range(n):
            start = clock()
            fn(i)
            samples.append((clock() - start) / 1000.0)
    finally:
        gc.enable()
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    n = args.calls
    results: dict[str, list[float]] = {}
    arguments = {
        "order_id": "ORD-1001",
        "amount": "40.00",
        "currency": "USD",
        "destination": "original_payment_method",
        "reason": "damaged",
    }

    results["direct function call"] = measure(
        lambda i: refund("ORD-1001", Decimal("40.00"), "USD", "original_payment_method", "damaged"),
        n,
    )

    try:
        import cedarpy
    except ImportError:
        cedarpy = None
    if cedarpy is not None:
        policies = cedarpy.PolicySet.from_str(CEDAR_POLICIES)
        entities = cedarpy.Entities.from_json_str(
            '[{"uid": {"type": "Agent", "id": "support-bot"}, '
            '"attrs": {"roles": ["support"], "tenant": "acme"}, "parents": []}]'
        )
        request = {
            "principal": 'Agent::"support-bot"',
            "action": 'Action::"billing.refund"',
            "resource": 'Tool::"billing"',
            "context": {
                "amount_cents": 4000,
                "currency": "USD",
                "destination": "original_payment_method",
                "reason_length": 7,
                "order_id": "ORD-1001",
                "tainted": False,
                "approved": False,
                "killed": False,
                "field": "",
                "to": "",
                "to_domain": "",
            },
        }
        decision = cedarpy.is_authorized(request, policies, entities).decision
        assert decision == cedarpy.Decision.Allow, decision
        results["cedarpy decision (parsed once)"] = measure(
            lambda i: cedarpy.is_authorized(request, policies, entities), n
        )

    with tempfile.TemporaryDirectory() as tmp:
        floor = sqlite3.connect(f"{tmp}/floor.db", isolation_level=None)
        floor.execute("PRAGMA journal_mode=WAL")
        floor.execute("PRAGMA synchronous=NORMAL")
        floor.execute("PRAGMA wal_autocheckpoint=10000")
        floor.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body TEXT)")
        row = "x" * 1200

        def commit_one(i: int) -> None:
            floor.execute("BEGIN IMMEDIATE")
            floor.execute("INSERT INTO t (body) VALUES (?)", (row,))
            floor.execute("COMMIT")

        results["floor: one 1.2 KB insert + WAL commit"] = measure(commit_one, n)
        floor.close()

    for label, in_memory in (("", False), (", in-memory store", True)):
        run_keel(results, arguments, n, label, in_memory)

    report(results)


def run_keel(
    results: dict[str, list[float]], arguments: dict[str, Any], n: int, label: str, in_memory: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = "sqlite:///:memory:" if in_memory else f"sqlite:///{tmp}/bench.db"
        config = KeelConfig(store_url=url, home=Path(tmp) / "home", audit_anchor_file=False)
        with App(config) as app:
            app.load_policy(HERE / "bench_policy.yaml")
            app.tool(
                "billing.refund", scope="billing:write", effect="irreversible", idempotent=True
            )(refund)
            agent = app.agent(
                "support-bot", tenant="acme", scopes=["billing:write"], roles=["support"]
            )
            principal = Principal(
                agent_id="support-bot",
                tenant="acme",
                roles=frozenset({"support"}),
                scopes=frozenset({"billing:write"}),
            )
            call = Call(
                kind="tool",
                target="billing.refund",
                arguments={**arguments, "amount": Decimal("40.00")},
                principal=principal,
            )
            now = _dt.datetime.now(_dt.UTC)
            assert app.explain(call, "irreversible")["verdict"] == "allow"
            if not in_memory:
                results["keel policy decision (20 rules)"] = measure(
                    lambda i: app.evaluate(call, "irreversible", now), n
                )
                results["keel token verify (cached)"] = measure(
                    lambda i: app.verifier.verify(agent.token), n
                )
                results["keel governed call, no idempotency key"] = measure(
                    lambda i: agent.call("billing.refund", arguments), n
                )
            results[f"keel governed call (idempotency key){label}"] = measure(
                lambda i: agent.call("billing.refund", arguments, idempotency_key=f"k{i}"), n
            )
            assert app.verify_audit().ok


def report(results: dict[str, list[float]]) -> None:
    width = max(len(k) for k in results)
    print(f"\n{'measurement':{width}}  {'p50 µs':>9}  {'p99 µs':>9}  {'mean µs':>9}")
    for name, samples in results.items():
        print(
            f"{name:{width}}  {pct(samples, 0.5):9.1f}  {pct(samples, 0.99):9.1f}  "
            f"{statistics.fmean(samples):9.1f}"
        )
    full = results["keel governed call (idempotency key)"]
    p50, p99 = pct(full, 0.5), pct(full, 0.99)
    print(f"\ngoverned call: p50 {p50:.1f} µs (target ≤ 100), p99 {p99:.1f} µs (target ≤ 300)")
    cedar = results.get("cedarpy decision (parsed once)")
    if cedar:
        print(f"governed call p50 / one cedarpy decision p50 = {p50 / pct(cedar, 0.5):.2f}")
    direct = pct(results["direct function call"], 0.5)
    print(
        f"governed call p50 / direct call p50 = {p50 / direct:.0f}× ({p50 - direct:.1f} µs added)"
    )


if __name__ == "__main__":
    main()
