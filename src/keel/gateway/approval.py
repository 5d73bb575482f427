"""The approval guard: a call a person must approve waits for them, then runs exactly once.

In the chain after idempotency (a replayed outcome executes nothing and needs no approval):

- verdict ``allow`` / ``deny``, or a shadow verdict (nothing executes): pass;
- ``require_approval`` / ``escalate`` without an approval id: create (or find) the request bound to
  this exact call and stop with ``ApprovalRequired`` (``context["approval_id"]``);
- with ``CallRequest.approval_id``: ``before`` claims the approval for this call (refused with an
  ``AuthorizationError`` if it is not an approval of this very call, usable now), so a concurrent
  second call with the same id is refused before the tool runs. ``after`` — inside the call's
  record transaction — marks it used when the call has an outcome the idempotency layer keeps
  (success, or a failure a retry cannot fix); after a retryable failure, or when the call is
  stopped, the claim is released and the retry of the same call may use the approval. So the
  approval is used iff the call's record commits with a final outcome; a process that dies
  mid-call leaves it claimed (never reusable; the runtime reconciles the step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keel.approvals import ApprovalRequest, Approvals
from keel.errors import ApprovalRequired
from keel.gateway.context import CallContext
from keel.gateway.guards import Guard
from keel.store import Transaction

__all__ = ["ApprovalGuard"]


class ApprovalGuard(Guard):
    """Requests approvals and accepts approval tokens; see the module docstring.

    ``redact`` turns a call's arguments into what the people deciding may see.
    """

    name = "approval"
    keyed_safe = True  # consume/release lock the approval's name before reading it

    def __init__(self, approvals: Approvals, redact: Callable[[Any], Any]) -> None:
        self._approvals = approvals
        self._redact = redact

    def before(self, ctx: CallContext) -> None:
        verdict = ctx.verdict
        if verdict is None or verdict.decision in ("allow", "deny") or verdict.shadow:
            return
        call = ctx.call
        assert call is not None
        approval_id = ctx.request.approval_id
        if approval_id is not None:
            request = self._approvals.claim(approval_id, call, verdict=verdict)
            ctx.notes["approval"] = {
                "approval_id": request.approval_id,
                "approved_by": list(request.approved_by),
                "rule_id": request.rule_id,
                "claimed": True,
            }
            return
        request = self._approvals.request(call, verdict, redact=self._redact)
        ctx.notes["approval"] = {"approval_id": request.approval_id, "status": request.status}
        raise _required(request)

    def after(self, ctx: CallContext, tx: Transaction) -> None:
        approval_id = self._claimed(ctx)
        if approval_id is None:
            return
        assert ctx.call is not None
        error = ctx.error
        if error is not None and getattr(error, "retryable", False):
            self._approvals.release(tx, approval_id, ctx.call)
        else:
            self._approvals.consume(tx, approval_id, ctx.call)

    def abort(self, ctx: CallContext, tx: Transaction) -> None:
        approval_id = self._claimed(ctx)
        if approval_id is not None and ctx.call is not None:
            self._approvals.release(tx, approval_id, ctx.call)

    @staticmethod
    def _claimed(ctx: CallContext) -> str | None:
        """The approval this call claimed in ``before`` (only then do after/abort run with it)."""
        approval_id = ctx.request.approval_id
        note = ctx.notes.get("approval")
        if approval_id is None or not isinstance(note, dict) or note.get("claimed") is not True:
            return None
        return approval_id


def _required(request: ApprovalRequest) -> ApprovalRequired:
    escalated = request.status == "escalated"
    if request.status in ("approved", "executing"):
        what = (
            f"was approved by {', '.join(request.approved_by)}; send it again with "
            f"approval_id={request.approval_id}"
        )
    elif escalated:
        what = f"was escalated to {request.escalate_to or 'an admin'} ({request.approval_id})"
    else:
        what = f"needs approval ({request.approval_id})"
    return ApprovalRequired(
        f"{request.reason} — the call {what}",
        code="escalated" if escalated else "approval_required",
        context={
            "approval_id": request.approval_id,
            "status": request.status,
            "rule_id": request.rule_id,
            "approvals_required": request.approvals_required,
            "approvals": len(request.approved_by),
            "approvers": list(request.approvers),
            "escalate_to": request.escalate_to,
            "deadline": None if request.deadline is None else request.deadline.isoformat(),
        },
    )
