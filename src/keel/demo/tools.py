"""The demo's tools: ordinary functions registered with ``@app.tool``. No governance in here."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from keel.app import App
from keel.demo.shop import Shop
from keel.errors import ToolError
from keel.tools import ToolContext

__all__ = ["register_procurement_tools", "register_tools"]

_CATALOG = {"Vendor_A": Decimal("1.00"), "Vendor_B": Decimal("0.97"), "Vendor_C": Decimal("0.80")}


def register_tools(app: App, shop: Shop, tickets: dict[str, dict[str, Any]]) -> None:
    @app.tool("tickets.read", scope="tickets:read", effect="read")
    def read_ticket(ticket_id: str) -> dict[str, Any]:
        """Read a support ticket (its text is untrusted customer input)."""
        ticket = tickets.get(ticket_id)
        if ticket is None:
            raise ToolError(f"no ticket {ticket_id}", retryable=False)
        return {k: ticket[k] for k in ("id", "customer", "email", "order_id", "subject", "body")}

    @app.tool("orders.lookup", scope="orders:read", effect="read")
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Look up an order by id."""
        order = shop.order(order_id)
        if order is None:
            raise ToolError(f"no order {order_id}", retryable=False)
        return order

    @app.tool("tickets.reply", scope="tickets:write", effect="reversible", idempotent=True)
    def reply(ticket_id: str, message: str, ctx: ToolContext) -> dict[str, str]:
        """Post a reply on a ticket. Honours idempotency keys: one key, one reply."""
        shop.reply(ticket_id, message, ctx.idempotency_key)
        return {"status": "posted"}

    @app.tool(
        "billing.refund",
        scope="billing:write",
        effect="irreversible",
        idempotent=True,
        cost_usd="0.002",
    )
    def refund(
        order_id: str,
        amount: Decimal,
        currency: str,
        destination: str,
        reason: str,
        ctx: ToolContext,
    ) -> dict[str, Any]:
        """Refund money on an order. Honours idempotency keys: one key, one refund."""
        return shop.refund(order_id, amount, currency, destination, reason, ctx.idempotency_key)

    @app.tool("email.send", scope="email:send", effect="irreversible", idempotent=True)
    def send_email(to: str, subject: str, body: str, ctx: ToolContext) -> dict[str, str]:
        """Send an email. Honours idempotency keys: one key, one message."""
        return {"message_id": shop.send_mail(to, subject, body, ctx.idempotency_key)}

    @app.tool("crm.delete_customer", scope="crm:write", effect="irreversible")
    def delete_customer(email: str) -> dict[str, str]:
        """Delete a customer record."""
        shop.delete_customer(email)
        return {"status": "deleted"}


def register_procurement_tools(app: App, shop: Shop) -> None:
    @app.tool("procurement.quote", scope="procurement:read", effect="read")
    def quote(vendor: str, item: str, amount: Decimal) -> dict[str, Any]:
        """A vendor's price for an item (Vendor_C is cheapest, and not an approved vendor)."""
        factor = _CATALOG.get(vendor)
        if factor is None:
            raise ToolError(f"unknown vendor {vendor}", retryable=False)
        return {
            "vendor": vendor,
            "item": item,
            "price": str((amount * factor).quantize(Decimal("0.01"))),
        }

    @app.tool(
        "procurement.purchase",
        scope="procurement:write",
        effect="irreversible",
        idempotent=True,
        cost_usd="0.001",
    )
    def purchase(vendor: str, item: str, amount: Decimal, ctx: ToolContext) -> dict[str, Any]:
        """Place a purchase order. Honours idempotency keys: one key, one order."""
        return shop.purchase(vendor, item, amount, ctx.idempotency_key)

    @app.tool("procurement.notify", scope="procurement:write", effect="reversible", idempotent=True)
    def notify(requester: str, message: str, ctx: ToolContext) -> dict[str, str]:
        """Tell the requester what happened. Honours idempotency keys: one key, one message."""
        message_id = shop.send_mail(
            requester, "Your purchase request", message, ctx.idempotency_key
        )
        return {"message_id": message_id}
