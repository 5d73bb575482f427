"""The demo's system of record: orders, refunds, replies and outgoing mail in a SQLite file.

It stands in for the real systems an agent acts on (Stripe, Zendesk, a mail server). Refunds
honour idempotency keys the way a payment provider does: the same key never pays twice.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import threading
import uuid
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["Shop", "load_tickets"]


def _data(name: str) -> str:
    return resources.files("keel.demo").joinpath("data").joinpath(name).read_text(encoding="utf-8")


def load_tickets() -> list[dict[str, Any]]:
    return [json.loads(line) for line in _data("tickets.jsonl").splitlines() if line.strip()]


class Shop:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, customer TEXT,
                email TEXT, amount TEXT, currency TEXT, status TEXT, payment_method TEXT);
            CREATE TABLE IF NOT EXISTS refunds (refund_id TEXT PRIMARY KEY, order_id TEXT,
                amount TEXT, currency TEXT, destination TEXT, reason TEXT,
                idempotency_key TEXT UNIQUE, created_at TEXT);
            CREATE TABLE IF NOT EXISTS replies (ticket_id TEXT, message TEXT, created_at TEXT,
                idempotency_key TEXT UNIQUE);
            CREATE TABLE IF NOT EXISTS outbox (message_id TEXT PRIMARY KEY, recipient TEXT,
                subject TEXT, body TEXT, created_at TEXT, idempotency_key TEXT UNIQUE);
            CREATE TABLE IF NOT EXISTS deleted_customers (email TEXT, created_at TEXT);
            CREATE TABLE IF NOT EXISTS purchases (purchase_id TEXT PRIMARY KEY, vendor TEXT,
                item TEXT, amount TEXT, idempotency_key TEXT UNIQUE, created_at TEXT);
            """
        )
        if self._conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0:
            rows = [json.loads(line) for line in _data("orders.jsonl").splitlines() if line]
            self._conn.executemany(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        o["order_id"],
                        o["customer"],
                        o["email"],
                        str(o["amount"]),
                        o["currency"],
                        o["status"],
                        o["payment_method"],
                    )
                    for o in rows
                ],
            )

    @staticmethod
    def _now() -> str:
        return _dt.datetime.now(_dt.UTC).isoformat()

    def order(self, order_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT order_id, customer, email, amount, currency, status, payment_method "
            "FROM orders WHERE order_id = ?",
            (order_id,),
        ).fetchone()
        if row is None:
            return None
        keys = ("order_id", "customer", "email", "amount", "currency", "status", "payment_method")
        return dict(zip(keys, row, strict=True))

    def refund(
        self,
        order_id: str,
        amount: Decimal,
        currency: str,
        destination: str,
        reason: str,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        with self._lock:
            if idempotency_key is not None:
                row = self._conn.execute(
                    "SELECT refund_id, amount FROM refunds WHERE idempotency_key = ?",
                    (idempotency_key,),
                ).fetchone()
                if row is not None:
                    return {"refund_id": row[0], "amount": row[1], "status": "succeeded"}
            refund_id = "re_" + uuid.uuid4().hex[:16]
            self._conn.execute(
                "INSERT INTO refunds VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    refund_id,
                    order_id,
                    str(amount),
                    currency,
                    destination,
                    reason,
                    idempotency_key,
                    self._now(),
                ),
            )
        return {"refund_id": refund_id, "amount": str(amount), "status": "succeeded"}

    def purchase(
        self, vendor: str, item: str, amount: Decimal, idempotency_key: str | None
    ) -> dict[str, Any]:
        """Place an order; like a real procurement API, one key places one order."""
        with self._lock:
            if idempotency_key is not None:
                row = self._conn.execute(
                    "SELECT purchase_id FROM purchases WHERE idempotency_key = ?",
                    (idempotency_key,),
                ).fetchone()
                if row is not None:
                    return {"purchase_id": row[0], "status": "placed"}
            purchase_id = "po_" + uuid.uuid4().hex[:12]
            self._conn.execute(
                "INSERT INTO purchases VALUES (?, ?, ?, ?, ?, ?)",
                (purchase_id, vendor, item, str(amount), idempotency_key, self._now()),
            )
        return {"purchase_id": purchase_id, "status": "placed"}

    def reply(self, ticket_id: str, message: str, idempotency_key: str | None = None) -> None:
        """Post a reply; like a real helpdesk API, one key posts one reply."""
        self._conn.execute(
            "INSERT INTO replies VALUES (?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
            (ticket_id, message, self._now(), idempotency_key),
        )

    def send_mail(
        self, recipient: str, subject: str, body: str, idempotency_key: str | None = None
    ) -> str:
        """Queue an email; like a real mail API, one key sends one message."""
        with self._lock:
            if idempotency_key is not None:
                row = self._conn.execute(
                    "SELECT message_id FROM outbox WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    return str(row[0])
            message_id = "msg_" + uuid.uuid4().hex[:16]
            self._conn.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
                (message_id, recipient, subject, body, self._now(), idempotency_key),
            )
        return message_id

    def delete_customer(self, email: str) -> None:
        self._conn.execute("INSERT INTO deleted_customers VALUES (?, ?)", (email, self._now()))

    def count(self, table: str) -> int:
        if table not in ("refunds", "replies", "outbox", "deleted_customers", "purchases"):
            raise ValueError(table)
        return int(self._conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        self._conn.close()
