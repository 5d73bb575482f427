"""A bank workflow that can die at chosen points, for the crash matrix (run as a subprocess).

    python _crash_app.py DIR STORE_URL MODE CRASH_POINT [resume]

DIR holds the bank's own database and Keel's home; STORE_URL is Keel's store (either backend).
MODE: ``keys`` (the transfer tool honours idempotency keys), ``hook`` (it does not, but has a
reconcile hook that asks the bank), ``none`` (neither). CRASH_POINT: where the process dies with
``os._exit`` (as kill -9 would): ``after_started`` (journal says started; nothing sent),
``in_tool`` (the bank moved the money; Keel recorded nothing), ``after_record`` (the audit record
and idempotency outcome committed; the journal not yet), ``after_journal`` (the step is fully
recorded), ``never``.
"""

from __future__ import annotations

import datetime as _dt
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from keel import App, KeelConfig
from keel.gateway import CallContext, Guard
from keel.testing import FrozenClock
from keel.tools import ToolContext

POLICY = "policy: bank\ntools: {allow: [bank.transfer, bank.notify, bank.balance]}\n"


def bank(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT, kind TEXT, amount INTEGER)")
    return conn


class Crash(Guard):
    name = "crash"

    def __init__(self, point: str) -> None:
        self.point = point

    def before(self, ctx: CallContext) -> None:
        target = ctx.request.tool
        if self.point == "after_started" and target == "bank.transfer":
            os._exit(137)
        if self.point == "after_journal" and target == "bank.notify":
            os._exit(137)

    def done(self, ctx: CallContext) -> None:
        if self.point == "after_record" and ctx.request.tool == "bank.transfer":
            os._exit(137)


def build(directory: Path, store_url: str, mode: str, point: str, clock: FrozenClock | None) -> App:
    config = KeelConfig(store_url=store_url, home=directory / "home")
    app = App(config, clock=clock, extra_guards=[Crash(point)])
    app.add_policy(POLICY)
    conn = bank(directory / "bank.db")

    def reconcile(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        row = conn.execute(
            "SELECT amount FROM effects WHERE key = ? AND kind = 'transfer'",
            (ctx.idempotency_key,),
        ).fetchone()
        return None if row is None else {"moved": row[0], "reconciled": True}

    @app.tool(
        "bank.transfer",
        scope="bank:write",
        effect="irreversible",
        idempotent=mode == "keys",
        reconcile=reconcile if mode == "hook" else None,
    )
    def transfer(amount: int, ctx: ToolContext) -> dict[str, Any]:
        if mode == "keys":
            conn.execute(
                "INSERT INTO effects SELECT ?, 'transfer', ? WHERE NOT EXISTS "
                "(SELECT 1 FROM effects WHERE key = ? AND kind = 'transfer')",
                (ctx.idempotency_key, amount, ctx.idempotency_key),
            )
        else:
            conn.execute(
                "INSERT INTO effects VALUES (?, 'transfer', ?)", (ctx.idempotency_key, amount)
            )
        if point == "in_tool":
            os._exit(137)
        return {"moved": amount}

    @app.tool("bank.notify", scope="bank:write", effect="reversible", idempotent=True)
    def notify(text: str, ctx: ToolContext) -> str:
        conn.execute("INSERT INTO effects VALUES (?, 'notify', 0)", (ctx.idempotency_key,))
        return "sent"

    @app.workflow("payout", agent="bank-bot", scopes=["bank:write"])
    async def payout(run: Any, amount: int) -> str:
        await run.tool("bank.transfer", {"amount": amount})
        await run.tool("bank.notify", {"text": f"moved {amount}"})
        return "done"

    return app


def main() -> None:
    directory, store_url, mode, point = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    resume = len(sys.argv) > 5
    clock = FrozenClock(_dt.datetime.now(_dt.UTC) + _dt.timedelta(hours=1)) if resume else None
    app = build(directory, store_url, mode, "never" if resume else point, clock)
    if not resume:
        app.runtime.submit("payout", 100, run_id="run-1")
    print(app.runtime.worker().drain())
    app.close()


if __name__ == "__main__":
    main()
