"""The demo's scripted support agent.

It plays a helpful, naive agent: it reads the ticket, asks a small model to triage it, looks the
order up, does what the ticket asks (including instructions injected into the ticket text), has
a medium model draft replies, and — for one unlucky ticket — follows a model that loops forever.
Keel's job is to make all of that safe, metered and recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keel.app import Agent
from keel.errors import ApprovalRequired, BudgetExceeded, KeelError

__all__ = ["Attempt", "SupportAgent", "propose_actions"]

SYSTEM_TRIAGE = "Classify the support ticket: refund, status, billing, account or suspicious."
SYSTEM_REPLY = "Draft a short, friendly reply to the customer."


@dataclass
class Attempt:
    """One governed call the agent made, with what Keel decided."""

    ticket: str
    tool: str
    detail: str
    decision: str
    rule_id: str
    reason: str
    value: Any = None


@dataclass
class TicketLog:
    attempts: list[Attempt] = field(default_factory=list)


def propose_actions(
    ticket: dict[str, Any], order: dict[str, Any] | None
) -> list[tuple[str, dict[str, Any]]]:
    """The tool calls the agent wants to make after reading ``ticket`` and its order."""
    actions: list[tuple[str, dict[str, Any]]] = []
    if ticket.get("refund_amount") is not None:
        actions.append(
            (
                "billing.refund",
                {
                    "order_id": ticket["order_id"],
                    "amount": ticket["refund_amount"],
                    "currency": "USD",
                    "destination": ticket.get("destination", "original_payment_method"),
                    "reason": ticket["subject"],
                },
            )
        )
    if ticket.get("email_to"):
        actions.append(
            (
                "email.send",
                {
                    "to": ticket["email_to"],
                    "subject": f"Re: {ticket['subject']}",
                    "body": ticket.get("email_body", f"Invoice for order {ticket['order_id']}"),
                },
            )
        )
    if ticket["kind"] == "delete":
        actions.append(("crm.delete_customer", {"email": ticket["email"]}))
    return actions


def summary(tool: str, args: Mapping[str, Any]) -> str:
    if tool == "billing.refund":
        return f"${float(args['amount']):,.2f} → {args['destination']}"
    if tool == "email.send":
        return f"to {args['to']}"
    if tool == "crm.delete_customer":
        return "delete customer record"
    if tool == "tickets.reply":
        return str(args["message"])[:60]
    if "messages" in args:
        return "model: " + str(args["messages"][-1].get("content", ""))[:50]
    return ", ".join(f"{k}={v}" for k, v in args.items())


class SupportAgent:
    """Works one ticket at a time through governed calls. ``record`` receives every attempt."""

    def __init__(self, agent: Agent, record: Callable[[Attempt], None], workflow: str = "support"):
        self.agent = agent
        self.record = record
        self.workflow = workflow

    def handle(self, ticket: dict[str, Any], *, run_id: str | None = None) -> None:
        run = run_id or f"run-{ticket['id']}"
        steps = iter(range(1, 1000))

        def tool(name: str, args: dict[str, Any], *, tainted: bool = True) -> Any:
            return self._attempt(ticket, name, args, run, next(steps), tainted=tainted)

        def model(text: str, system: str, task: str, max_tokens: int) -> Any:
            request = {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": text},
                ],
                "max_tokens": max_tokens,
            }
            return self._attempt(ticket, task, request, run, next(steps), model=True)

        read = tool("tickets.read", {"ticket_id": ticket["id"]}, tainted=False)
        if read is None:
            return
        body = f"{read['order_id']}: {read['body']}" if ticket["kind"] == "loop" else read["body"]
        triage = model(body, SYSTEM_TRIAGE, "triage", 40)
        order = tool("orders.lookup", {"order_id": ticket["order_id"]})
        if ticket["kind"] == "loop" and triage is not None:
            self._loop(ticket, body, run, steps)
            return
        for name, args in propose_actions(ticket, order):
            tool(name, args)
        if ticket["kind"] == "status" and order is not None:
            draft = model(f"Order status: {order['status']}", SYSTEM_REPLY, "reply", 120)
            if draft is not None:
                tool("tickets.reply", {"ticket_id": ticket["id"], "message": draft["text"]})

    def _loop(self, ticket: dict[str, Any], body: str, run: str, steps: Any) -> None:
        """A model that never finishes: it asks for the same lookup turn after turn."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": body}]
        for _ in range(100):
            try:
                outcome = self.agent.model(
                    {"messages": messages, "max_tokens": 40},
                    task_class="triage",
                    run_id=run,
                    step_id=str(next(steps)),
                    workflow=self.workflow,
                    tainted=True,
                )
            except KeelError as exc:
                self._refused(ticket, "triage", {"messages": messages}, exc)
                return
            call = outcome.response.tool_calls[0] if outcome.response.tool_calls else None
            if call is None:
                return
            messages.append(outcome.response.to_message().to_dict())
            try:
                result = self.agent.call(
                    call.name,
                    call.arguments or {},
                    run_id=run,
                    step_id=str(next(steps)),
                    workflow=self.workflow,
                    tainted=True,
                )
            except ApprovalRequired as exc:
                # The burn alert asks a person; this runaway agent does not wait and goes on.
                self._refused(ticket, call.name, call.arguments or {}, exc)
                continue
            except BudgetExceeded as exc:
                self._refused(ticket, call.name, call.arguments or {}, exc)
                return
            except KeelError as exc:  # e.g. arguments that break the schema: tell the model
                self._refused(ticket, call.name, call.arguments or {}, exc)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": exc.message})
                continue
            messages.append({"role": "tool", "tool_call_id": call.id, "content": str(result.value)})

    def _attempt(
        self,
        ticket: dict[str, Any],
        name: str,
        args: dict[str, Any],
        run: str,
        step: int,
        *,
        tainted: bool = True,
        model: bool = False,
    ) -> Any:
        try:
            if model:
                outcome = self.agent.model(
                    args,
                    task_class=name,
                    run_id=run,
                    step_id=str(step),
                    workflow=self.workflow,
                    tainted=True,
                )
                result = outcome.result
                value: Any = {"text": outcome.response.text}
                label = f"model ({outcome.route.tier if outcome.route else 'direct'})"
            else:
                result = self.agent.call(
                    name,
                    args,
                    run_id=run,
                    step_id=str(step),
                    workflow=self.workflow,
                    tainted=tainted,
                )
                value = result.value
                label = name
        except KeelError as exc:
            self._refused(ticket, name, args, exc)
            return None
        decision = "replayed" if result.replayed else result.verdict.decision
        self.record(
            Attempt(
                ticket["id"],
                label,
                summary(name, args),
                decision,
                result.verdict.rule_id,
                result.verdict.reason,
                value,
            )
        )
        return value

    def _refused(
        self, ticket: dict[str, Any], name: str, args: Mapping[str, Any], exc: KeelError
    ) -> None:
        decision = "require_approval" if isinstance(exc, ApprovalRequired) else "deny"
        if exc.code == "escalated":
            decision = "escalate"
        self.record(
            Attempt(
                ticket["id"],
                name,
                summary(name, args),
                decision,
                str(exc.context.get("rule_id", exc.code)),
                exc.message,
            )
        )
