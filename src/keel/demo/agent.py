"""The demo's scripted support agent: turns a ticket into proposed tool calls.

It plays the part of a language model that is helpful and naive: it follows what the ticket
asks, including instructions injected into the ticket text. Keel's job is to make that safe.
"""

from __future__ import annotations

from typing import Any

__all__ = ["propose_actions"]


def propose_actions(
    ticket: dict[str, Any], order: dict[str, Any] | None
) -> list[tuple[str, dict[str, Any]]]:
    """The calls the agent wants to make after reading ``ticket`` and looking up its order."""
    kind = ticket["kind"]
    tid = ticket["id"]
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
    if kind == "delete":
        actions.append(("crm.delete_customer", {"email": ticket["email"]}))
    if kind == "status" and order is not None:
        actions.append(
            ("tickets.reply", {"ticket_id": tid, "message": f"Your order is {order['status']}."})
        )
    return actions
