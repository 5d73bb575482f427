"""Approvals: requests bound to one exact call, operator decisions, single-use approval tokens.

    approvals = Approvals(store, audit, clock)
    request = approvals.request(call, verdict, redact=redactor.redact)    # the agent asks
    approvals.approve(request.approval_id, Operator("ana", frozenset({"approver"})))
    approvals.claim(request.approval_id, call)       # the gateway, before the tool runs
    approvals.consume(tx, request.approval_id, call)  # ... and in the call's record transaction

Owns the ``approvals`` table. Layer 3: imports ``keel.errors``, ``keel.core``, ``keel.canonical``,
``keel.store`` and ``keel.audit``; never ``keel.gateway`` (the gateway's ``ApprovalGuard`` imports
this package, not the reverse).
"""

from __future__ import annotations

from keel.approvals.records import (
    ACTIVE_STATUSES,
    DECIDABLE_STATUSES,
    DEFAULT_APPROVER_ROLES,
    HISTORY_SCHEMA_VERSION,
    ApprovalEvent,
    ApprovalKind,
    ApprovalRequest,
    ApprovalStatus,
    Operator,
)
from keel.approvals.service import Approvals

__all__ = [
    "ACTIVE_STATUSES",
    "DECIDABLE_STATUSES",
    "DEFAULT_APPROVER_ROLES",
    "HISTORY_SCHEMA_VERSION",
    "ApprovalEvent",
    "ApprovalKind",
    "ApprovalRequest",
    "ApprovalStatus",
    "Approvals",
    "Operator",
]
