"""One process of the fault-injection check (bench/jepsen.py): a worker, a client or a replica.

    python bench/_jepsen_node.py worker  DIR NAME [--skew SECONDS]
    python bench/_jepsen_node.py client  DIR NAME SECONDS [--skew SECONDS]
    python bench/_jepsen_node.py replica DIR NAME TENANT CALLS

Every process builds the same App from DIR/keel.yaml (a PostgreSQL store shared by all) and
registers the same tools and workflow. The upstream "payments" service is an HTTP server run by
the harness (URL in DIR/upstream.url); it does *not* deduplicate, so any repeated effect shows.

A client appends one JSON line per acknowledged outcome to DIR/history/NAME.jsonl (flushed
before it moves on): what it asked for and what Keel answered, with the audit record's
chain and seq. A process killed with -9 loses at most the line it was about to write.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from keel import App
from keel.configfile import load_config
from keel.core import SystemClock
from keel.errors import KeelError, ToolError, ToolTimeout
from keel.tools import ToolContext

TENANT = "acme"
AGENT = "pay-bot"
SCOPES = ("pay:write", "pay:read")
CHARGE_USD = Decimal(10)

POLICY = """\
policy: payments-{tenant}
version: 1
scope: {{tenant: {tenant}}}
tools:
  allow: [pay.charge, pay.lookup, pay.refund]
approvers: [finance]
rules:
  - id: refunds-need-a-person
    tool: pay.refund
    decision: require_approval
    reason: refunds wait for finance
caps:
  - id: charges-per-tenant
    tools: [pay.charge]
    per: [tenant]
    max_usd: {cap}
"""


class SkewedClock(SystemClock):
    """The machine clock, wrong by ``offset`` seconds (as on a machine whose NTP failed)."""

    def __init__(self, offset: float) -> None:
        self.offset = _dt.timedelta(seconds=offset)

    def now(self) -> _dt.datetime:
        return super().now() + self.offset


def _upstream(directory: Path) -> str:
    return (directory / "upstream.url").read_text(encoding="utf-8").strip()


def _post(url: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def build(directory: Path, skew: float = 0.0) -> App:
    config = load_config(directory / "keel.yaml")
    app = App(config, clock=SkewedClock(skew) if skew else None)
    for path in sorted(directory.glob("policy-*.yaml")):
        app.load_policy(path)
    base = _upstream(directory)

    def effect(kind: str, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        payload = {
            "kind": kind,
            "key": ctx.idempotency_key,
            "call_id": ctx.call_id,
            "tenant": ctx.tenant,
            **arguments,
        }
        try:
            return _post(f"{base}/effect", payload, timeout=0.5)
        except urllib.error.HTTPError as exc:
            if exc.code == 503:  # the service refused before acting: provably not executed
                raise ToolError(
                    "payments unavailable (503)",
                    code="upstream_unavailable",
                    retryable=True,
                    context={"executed": False},
                ) from None
            raise ToolError(f"payments failed ({exc.code})", retryable=True) from None
        except (TimeoutError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ConnectionRefusedError):
                raise ToolError(
                    "payments refused the connection",
                    retryable=True,
                    context={"executed": False},
                ) from None
            raise ToolTimeout(f"payments did not answer: {reason}", retryable=True) from None

    def lookup_effect(kind: str, ctx: ToolContext) -> Any:
        try:
            found = _post(f"{base}/lookup", {"kind": kind, "key": ctx.idempotency_key}, 2.0)
        except (OSError, urllib.error.URLError):
            raise ToolError("payments lookup failed", retryable=True) from None
        return found.get("effect")

    @app.tool(
        "pay.charge",
        scope="pay:write",
        effect="irreversible",
        cost_usd=CHARGE_USD,
        reconcile=lambda arguments, ctx: lookup_effect("charge", ctx),
    )
    def charge(order: str, cents: int, ctx: ToolContext) -> dict[str, Any]:
        return effect("charge", {"order": order, "cents": cents}, ctx)

    @app.tool(
        "pay.refund",
        scope="pay:write",
        effect="irreversible",
        reconcile=lambda arguments, ctx: lookup_effect("refund", ctx),
    )
    def refund(order: str, cents: int, ctx: ToolContext) -> dict[str, Any]:
        return effect("refund", {"order": order, "cents": cents}, ctx)

    @app.tool("pay.lookup", scope="pay:read")
    def lookup(order: str) -> dict[str, Any]:
        return {"order": order, "known": True}

    @app.workflow("order", agent=AGENT, scopes=SCOPES, tenant=TENANT, max_step_attempts=3)
    async def order(run: Any, data: Any) -> dict[str, Any]:
        await run.tool("pay.lookup", {"order": data["order"]})
        charged = await run.tool("pay.charge", {"order": data["order"], "cents": 1000})
        result: dict[str, Any] = {"charged": charged}
        if data.get("refund"):
            result["refunded"] = await run.tool(
                "pay.refund", {"order": data["order"], "cents": 500}
            )
        return result

    return app


# -- roles -------------------------------------------------------------------------------------


def worker(directory: Path, name: str, skew: float) -> None:
    app = build(directory, skew)
    w = app.runtime.worker(worker_id=name, lease=3.0)
    w.serve(poll=0.2)


class History:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the process
        self._lock = threading.Lock()

    def write(self, **line: Any) -> None:
        text = json.dumps(line, sort_keys=True, default=str)
        with self._lock:
            self._file.write(text + "\n")
            self._file.flush()


def _outcome(history: History, what: str, key: str | None, call: Any) -> str:
    """Make one call; write what Keel acknowledged; return ok / the error code."""
    try:
        result = call()
    except KeelError as exc:
        context = exc.context
        if "record_seq" in context:  # the gateway recorded it: an acknowledged outcome
            history.write(
                what=what,
                key=key,
                ok=False,
                code=exc.code,
                call_id=context.get("call_id"),
                chain=context.get("record_chain"),
                seq=context.get("record_seq"),
                approval_id=context.get("approval_id"),
            )
        return exc.code
    history.write(
        what=what,
        key=key,
        ok=True,
        call_id=result.call_id,
        chain=result.record_chain,
        seq=result.record_seq,
        replayed=result.replayed,
    )
    return "ok"


def client(directory: Path, name: str, seconds: float, skew: float) -> None:
    """Submit runs and make keyed charges directly (retrying with the same key), some with keys
    another client uses at the same moment, until ``seconds`` pass."""
    app = build(directory, skew)
    agent = app.agent(AGENT, tenant=TENANT, scopes=SCOPES)
    history = History(directory / "history" / f"{name}.jsonl")
    rng = random.Random(f"{name}-{os.getpid()}")
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        time.sleep(0.1)  # a steady load, so the budget runs out late in the check, not at once
        roll = rng.random()
        if roll < 0.35:
            try:
                record = app.runtime.submit(
                    "order", {"order": f"{name}-o{i}-{os.getpid()}", "refund": rng.random() < 0.3}
                )
            except KeelError:  # the store is restarting: nothing was acknowledged
                time.sleep(0.2)
                continue
            history.write(what="submit", run_id=record.run_id, ok=True)
            continue
        # Keys shared between clients (the minute's slot) race across gateway processes.
        shared = roll < 0.6
        key = f"shared-{int(time.time()) // 2}-{rng.randrange(3)}" if shared else f"{name}-{i}"
        key = f"{key}-{os.getpid()}" if not shared else key
        order = key
        for _attempt in range(3):
            code = _outcome(
                history,
                "charge",
                key,
                lambda order=order, key=key: agent.call(
                    "pay.charge", {"order": order, "cents": 1000}, idempotency_key=key
                ),
            )
            if code in ("ok", "budget_exceeded", "policy_denied", "idempotency_mismatch"):
                break
            time.sleep(0.05)
    history.write(what="done", ok=True)


def replica(directory: Path, name: str, tenant: str, calls: int) -> None:
    """ATTACKS.md #35: wait for 'go', then make ``calls`` $10 charges at once from threads."""
    app = build(directory)
    agent = app.agent(AGENT, tenant=tenant, scopes=SCOPES)
    history = History(directory / "history" / f"{name}.jsonl")
    agent.token  # noqa: B018 - mint before the race
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    barrier = threading.Barrier(calls)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        barrier.wait()
        key = f"{name}-{n}"
        code = _outcome(
            history,
            "race",
            key,
            lambda: agent.call("pay.charge", {"order": key, "cents": 1000}, idempotency_key=key),
        )
        with lock:
            outcomes.append(code)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"ok": outcomes.count("ok"), "outcomes": sorted(outcomes)}), flush=True)
    app.close()


def killwatch(directory: Path, name: str) -> None:
    """Call a cheap tool in a loop; print the wall time of the first call a kill switch stops."""
    app = build(directory)
    agent = app.agent(AGENT, tenant=TENANT, scopes=SCOPES)
    agent.call("pay.lookup", {"order": "warm-up"})
    print("ready", flush=True)
    end = time.monotonic() + 10
    refused_at = None
    while time.monotonic() < end:
        try:
            agent.call("pay.lookup", {"order": "probe"})
        except KeelError as exc:
            if exc.code == "kill_switch":
                refused_at = time.time()
                break
        time.sleep(0.005)
    print(json.dumps({"refused_at": refused_at}), flush=True)
    app.close()


def main(argv: list[str]) -> None:
    skew = 0.0
    if "--skew" in argv:
        at = argv.index("--skew")
        skew = float(argv[at + 1])
        del argv[at : at + 2]
    role, directory, name = argv[0], Path(argv[1]), argv[2]
    if role == "worker":
        worker(directory, name, skew)
    elif role == "client":
        client(directory, name, float(argv[3]), skew)
    elif role == "replica":
        replica(directory, name, argv[3], int(argv[4]))
    elif role == "killwatch":
        killwatch(directory, name)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
