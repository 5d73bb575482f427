from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keel import App, KeelConfig
from keel.testing import FrozenClock, RecordingTool

POLICY = """
policy: test-support
scope: {tenant: acme}
escalation: human_review
tools:
  allow: [orders.lookup, billing.refund, email.send, files.read, slow.thing]
  deny: [admin.wipe]
require_approval_if_over: {billing.refund: 200}
constraints:
  billing.refund:
    amount: {min: 0.01, max: 1000}
    destination: {pattern: "original_payment_method"}
deny_external_email: true
internal_domains: [example.com]
email_tools: [email.send]
two_person_rule: [admin.rotate]
"""

REFUND_SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "amount": {"type": "number"},
        "destination": {"type": "string"},
    },
    "required": ["order_id", "amount"],
    "additionalProperties": False,
}


class Tools:
    def __init__(self) -> None:
        self.lookup = RecordingTool(
            "orders.lookup", scope="orders:read", result={"status": "shipped"}
        )
        self.refund = RecordingTool(
            "billing.refund",
            scope="billing:write",
            effect="irreversible",
            schema=REFUND_SCHEMA,
            idempotent=True,
            result=lambda args, ctx: {"refunded": args["amount"], "key": ctx.idempotency_key},
        )
        self.email = RecordingTool("email.send", scope="email:send", effect="irreversible")
        self.wipe = RecordingTool("admin.wipe", scope="admin:write", effect="irreversible")
        self.files = RecordingTool(
            "files.read",
            scope="files:read",
            result={"text": "contact ana@mail.example, key AKIAIOSFODNN7EXAMPLE"},
        )

    def all(self) -> list[RecordingTool]:
        return [self.lookup, self.refund, self.email, self.wipe, self.files]

    def total_calls(self) -> int:
        return sum(t.calls for t in self.all())


SCOPES = ("orders:read", "billing:write", "email:send", "admin:write", "files:read")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def tmp_config(tmp_path: Path, store_url: str) -> KeelConfig:
    return KeelConfig(store_url=store_url, home=tmp_path / "home")


@pytest.fixture
def app(tmp_config: KeelConfig, clock: FrozenClock) -> Iterator[App]:
    with App(tmp_config, clock=clock) as keel_app:
        keel_app.add_policy(POLICY)
        yield keel_app


@pytest.fixture
def tools(app: App) -> Tools:
    t = Tools()
    for tool in t.all():
        app.register(tool)
    return t
