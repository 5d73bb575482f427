"""The demo's durable workflows: support refunds and procurement, run by ``keel worker``.

``demo_app()`` builds the App a worker process serves (``keel worker --app
keel.demo.workflows:demo_app``), from the demo folder named by ``KEEL_DEMO_DIR``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from keel.app import App
from keel.configfile import load_config
from keel.demo.agent import SYSTEM_REPLY, SYSTEM_TRIAGE, propose_actions
from keel.demo.models import scripted_models
from keel.demo.shop import Shop
from keel.demo.tools import register_procurement_tools, register_tools
from keel.errors import BudgetExceeded, KeelError, UsageError
from keel.runtime import Run
from keel.testing import FaultPlan

__all__ = ["PROCUREMENT_SCOPES", "SUPPORT_SCOPES", "build_demo_app", "demo_app"]

SUPPORT_SCOPES = (
    "tickets:read",
    "tickets:write",
    "orders:read",
    "billing:write",
    "email:send",
    "crm:write",
    "models:invoke",
)
PROCUREMENT_SCOPES = ("procurement:read", "procurement:write", "models:invoke")


def _ask(text: str, system: str, max_tokens: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }


def build_demo_app(directory: Path) -> App:
    """The demo's App: store, policies, tools, scripted models and both workflows."""
    app = App(load_config(directory / "keel.yaml"))
    tickets = {
        t["id"]: t for t in json.loads((directory / "tickets.json").read_text(encoding="utf-8"))
    }
    shop = Shop(directory / "shop.db")
    register_tools(app, shop, tickets)
    register_procurement_tools(app, shop)
    triage, writer = scripted_models()
    # Models misbehave now and then (seeded, so every demo run is the same): a quarter of the
    # tool calls the triage model asks for arrive malformed; the attempt fails (recorded) and
    # the runtime retries the step.
    triage.faults = FaultPlan(seed=11, malformed_json=0.25)
    app.add_model("triage-small", triage)
    app.add_model("writer-medium", writer)

    @app.workflow(
        "support", agent="support-bot", scopes=SUPPORT_SCOPES, roles=("support",), tenant="acme"
    )
    async def support(run: Run, ticket: dict[str, Any]) -> dict[str, Any]:
        """Triage a ticket, look its order up, act on it, reply."""
        read = await run.tool("tickets.read", {"ticket_id": ticket["id"]})
        body = f"{read['order_id']}: {read['body']}" if ticket["kind"] == "loop" else read["body"]
        triage_answer = await run.model(_ask(body, SYSTEM_TRIAGE, 40), task_class="triage")
        category = triage_answer["choices"][0]["text"] or "category: loop"
        order = await run.tool("orders.lookup", {"order_id": ticket["order_id"]}, tainted=True)
        run.state["category"] = category
        if ticket["kind"] == "loop":
            return {"category": category, "loop": await _runaway(run, body)}
        actions: dict[str, str] = {}
        for name, args in propose_actions(ticket, order):
            try:
                await run.tool(name, args, tainted=True)
                actions[name] = "done"
            except KeelError as exc:
                actions[name] = exc.code
        if ticket["kind"] == "status":
            draft = await run.model(
                _ask(f"Order status: {order['status']}", SYSTEM_REPLY, 120), task_class="reply"
            )
            await run.tool(
                "tickets.reply",
                {"ticket_id": ticket["id"], "message": draft["choices"][0]["text"]},
            )
            actions["tickets.reply"] = "done"
        return {"category": category, "actions": actions}

    @app.workflow("procurement", agent="procurement-bot", scopes=PROCUREMENT_SCOPES, tenant="acme")
    async def procurement(run: Run, request: dict[str, Any]) -> dict[str, Any]:
        """Assess a purchase request, quote it, buy it (a person approves big ones), notify."""
        await run.model(
            _ask(f"Assess: {request['item']} from {request['vendor']}", SYSTEM_TRIAGE, 30),
            task_class="triage",
        )
        args = {"vendor": request["vendor"], "item": request["item"], "amount": request["amount"]}
        try:
            quote = await run.tool("procurement.quote", args)
        except KeelError as exc:
            await run.tool(
                "procurement.notify",
                {"requester": request["requester"], "message": f"escalated: {exc.message}"},
            )
            run.escalate(f"{request['vendor']} cannot be used: {exc.message}")
        try:
            order = await run.tool("procurement.purchase", {**args, "amount": quote["price"]})
        except KeelError as exc:
            await run.tool(
                "procurement.notify",
                {"requester": request["requester"], "message": f"not bought: {exc.message}"},
            )
            if exc.code in ("policy_denied",):
                run.escalate(f"over the spending limit: {exc.message}")
            return {"status": "declined", "reason": exc.code}
        await run.tool(
            "procurement.notify",
            {"requester": request["requester"], "message": f"ordered: {order['purchase_id']}"},
        )
        return {"status": "placed", "purchase_id": order["purchase_id"]}

    return app


async def _runaway(run: Run, body: str) -> str:
    """A model that never finishes: it asks for the same lookup, turn after turn."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": body}]
    for _ in range(50):
        answer = await run.model({"messages": messages, "max_tokens": 40}, task_class="triage")
        choice = answer["choices"][0]
        if not choice["tool_calls"]:
            return "finished"
        call = choice["tool_calls"][0]
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        try:
            result = await run.tool(call["name"], json.loads(call["arguments"]), tainted=True)
        except BudgetExceeded:
            return "stopped by the task cap"
        except KeelError as exc:
            if "budget" in str(exc.context.get("error", {})) or exc.code == "budget_exceeded":
                return "stopped by the task cap"
            result = exc.message
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(result)})
    return "gave up"


def demo_app() -> App:
    """The demo's App, for ``keel worker`` and ``keel serve --app keel.demo.workflows:demo_app``:
    the demo folder is ``KEEL_DEMO_DIR``, else ``./keel-demo`` (where ``keel demo`` writes it)."""
    directory = Path(os.environ.get("KEEL_DEMO_DIR") or "keel-demo")
    if not (directory / "keel.yaml").is_file():
        raise UsageError(
            f"no demo in {directory.resolve()}: run `keel demo` first, or set KEEL_DEMO_DIR to "
            "the folder it wrote"
        )
    return build_demo_app(directory)
