"""Fixtures for approvals: a real App on a fresh store of each backend, a clock, tools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keel import App, KeelConfig
from keel.approvals import Approvals, Operator
from keel.testing import FrozenClock, RecordingTool

POLICY = """
policy: approvals-test
scope: {tenant: acme}
escalation: human_review
tools:
  allow: [billing.refund, admin.rotate, vendor.pay, files.read]
require_approval_if_over: {billing.refund: 200}
two_person_rule: [admin.rotate]
rules:
  - id: fraud-review
    tool: billing.refund
    when: {arguments: {amount: {gt: 50000}}}
    decision: escalate
    reason: very large refunds go to fraud review
    escalate_to: fraud_review
  - id: vendor-payments
    tool: vendor.pay
    decision: require_approval
    reason: vendor payments need the finance lead
    approvers: [finance-lead]
"""

SCOPES = ("billing:write", "admin:write", "vendor:pay", "files:read")

REFUND_SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["order_id", "amount"],
    "additionalProperties": False,
}

ANA = Operator("ana", frozenset({"approver"}))
BOB = Operator("bob", frozenset({"approver"}))


class Tools:
    def __init__(self) -> None:
        self.refund = RecordingTool(
            "billing.refund",
            scope="billing:write",
            effect="irreversible",
            schema=REFUND_SCHEMA,
            result=lambda args, ctx: {"refunded": args["amount"]},
        )
        self.rotate = RecordingTool("admin.rotate", scope="admin:write", effect="irreversible")
        self.pay = RecordingTool("vendor.pay", scope="vendor:pay", effect="irreversible")
        self.files = RecordingTool("files.read", scope="files:read", result={"text": "ok"})

    def all(self) -> list[RecordingTool]:
        return [self.refund, self.rotate, self.pay, self.files]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def config(tmp_path: Path, store_url: str) -> KeelConfig:
    return KeelConfig(store_url=store_url, home=tmp_path / "home")


@pytest.fixture
def app(config: KeelConfig, clock: FrozenClock) -> Iterator[App]:
    with App(config, clock=clock) as keel_app:
        keel_app.add_policy(POLICY)
        yield keel_app


@pytest.fixture
def tools(app: App) -> Tools:
    t = Tools()
    for tool in t.all():
        app.register(tool)
    return t


@pytest.fixture
def approvals(app: App) -> Approvals:
    return app.approvals
