"""The approval service: requests bound to one exact call, operator decisions, single-use tokens.

Contract
--------
- **Binding.** A request is bound to one exact call: ``binding(call)`` hashes the call's kind,
  target, canonical arguments, tenant, requesting agent, the human it acts for, run id and step id.
  An approval of a $10 refund cannot authorize a $10,000 one, another step, or another agent.
- **One live request per call.** ``request`` returns the live request for the same binding
  (``pending``, ``escalated``, ``approved`` or ``executing``) instead of creating a second; once a
  request is denied, used or expired the same call may ask again.
- **Decisions.** ``approve`` / ``deny`` are refused (``AuthorizationError``) when the operator
  may not decide (see ``ApprovalRequest.deciders``), is the requester (the agent, an agent in its
  delegation chain, or the human it acts for: never for ``approve``), already approved (the
  two-person rule needs distinct people), or the request is no longer open. An unknown id and an
  id in another tenant give the same error (``approval_not_found``): no existence oracle.
- **Tokens.** When enough distinct approvals are in, the request becomes ``approved`` and may
  authorize exactly one execution of the bound call until ``token_expires`` (``token_ttl`` after
  the decision). ``claim`` takes it for a call (``executing``) before the tool runs, so two
  concurrent calls cannot both use it; ``consume`` marks it ``used`` inside the call's record
  transaction; ``release`` gives it back after a retryable failure (the retry of the same call may
  use it). A process that dies holding a claim leaves the request ``executing``: never reusable.
- **Deadlines.** A ``pending`` request whose deadline passed becomes ``escalated`` (by
  ``expire_due``, or lazily by any write that touches it): from then on only ``escalate_to`` and
  ``admin`` may decide it. An approved token that lapsed unused becomes ``expired``.
- **Audit.** Every change (request, approve, deny, refused decision, escalate, expire, claim, use,
  release) appends a ``control`` record in the same transaction as the change.

Thread safety: share one instance. Every method blocks on the store; writes hold its write lock.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final, Literal

from keel.approvals.records import (
    ACTIVE_STATUSES,
    COLUMNS,
    DECIDABLE_STATUSES,
    DEFAULT_APPROVER_ROLES,
    STATUSES,
    ApprovalEvent,
    ApprovalRequest,
    ApprovalStatus,
    Operator,
    encode_history,
    same_person,
)
from keel.audit import AuditEntry, AuditLog
from keel.canonical import canonical_json, digest
from keel.core import Call, Clock, Verdict, new_id
from keel.errors import AuthorizationError, ConfigError, InvalidRequestError, UsageError
from keel.store import RUNS_CHANNEL, Store, Transaction

__all__ = ["Approvals"]

#: Written exactly like the WHERE of the store's partial unique index, so SQLite uses it.
_ACTIVE_SQL: Final = "status IN (" + ", ".join(f"'{s}'" for s in ACTIVE_STATUSES) + ")"
_SELECT: Final = f"SELECT {COLUMNS} FROM approvals"
_INSERT: Final = (
    f"INSERT INTO approvals ({COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE: Final = (
    "UPDATE approvals SET status = ?, decisions = ?, decided_at = ?, token_expires = ?, "
    "used_at = ? WHERE approval_id = ?"
)
_MAX_ID: Final = 200
_MAX_LIST: Final = 1000
_SYSTEM: Final = "keel"


def _ts(value: _dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(_dt.UTC).isoformat(timespec="microseconds")


def _not_found(approval_id: object) -> AuthorizationError:
    shown = approval_id if isinstance(approval_id, str) and len(approval_id) <= _MAX_ID else "?"
    return AuthorizationError(
        f"no approval request {shown!r} is visible to you",
        code="approval_not_found",
        context={"approval_id": shown},
    )


class Approvals:
    """Approval requests in the store; see the module docstring for the contract.

    ``token_ttl`` is how long an approval may be used once granted; ``default_deadline`` how long
    a request waits for a decision before it escalates (``request(deadline=...)`` overrides it).
    """

    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        clock: Clock,
        *,
        token_ttl: _dt.timedelta = _dt.timedelta(hours=1),
        default_deadline: _dt.timedelta = _dt.timedelta(hours=24),
    ) -> None:
        if token_ttl <= _dt.timedelta(0):
            raise ConfigError("the approval token_ttl must be positive")
        if default_deadline <= _dt.timedelta(0):
            raise ConfigError("the approval default_deadline must be positive")
        self._store = store
        self._audit = audit
        self._clock = clock
        self.token_ttl = token_ttl
        self.default_deadline = default_deadline

    # -- the bound call ------------------------------------------------------------------------

    @staticmethod
    def binding(call: Call) -> str:
        """``sha256:<hex>`` over the canonical JSON of everything that makes the call this call."""
        principal = call.principal
        return digest(
            {
                "kind": call.kind,
                "tool": call.target,
                "arguments": dict(call.arguments),
                "tenant": principal.tenant,
                "agent": principal.agent_id,
                "on_behalf_of": principal.on_behalf_of,
                "run_id": call.run_id,
                "step_id": call.step_id,
            }
        )

    # -- the agent's side ----------------------------------------------------------------------

    def request(
        self,
        call: Call,
        verdict: Verdict,
        *,
        redact: Callable[[Any], Any],
        deadline: _dt.datetime | _dt.timedelta | None = None,
    ) -> ApprovalRequest:
        """The live request for ``call`` (created now, or the one already open for it).

        ``verdict`` must be ``require_approval`` (the request starts ``pending``) or
        ``escalate`` (it starts ``escalated``, decided by ``escalate_to``, its approvers or an
        admin). ``redact`` turns the arguments into what people may see. ``deadline`` is a time
        or a delay from now (default ``default_deadline``).
        """
        if verdict.decision not in ("require_approval", "escalate"):
            raise UsageError(
                f"a {verdict.decision!r} verdict needs no approval", code="approval_not_needed"
            )
        now = self._clock.now()
        if deadline is None:
            due = now + self.default_deadline
        elif isinstance(deadline, _dt.timedelta):
            due = now + deadline
        elif deadline.tzinfo is None:
            raise InvalidRequestError("an approval deadline must be timezone-aware (UTC)")
        else:
            due = deadline
        principal = call.principal
        binding = self.binding(call)
        with self._store.write() as tx:
            row = tx.fetchone(
                f"{_SELECT} WHERE tenant = ? AND binding = ? AND {_ACTIVE_SQL}",
                (principal.tenant, binding),
            )
            existing = self._settle(tx, ApprovalRequest.from_row(row), now) if row else None
            if existing is not None and existing.status in ACTIVE_STATUSES:
                result = existing
            else:
                result = self._create(tx, call, verdict, binding, redact, now, due)
        self._audit.flush()
        return result

    def claim(
        self, approval_id: str, call: Call, *, verdict: Verdict | None = None
    ) -> ApprovalRequest:
        """Take the approval for ``call`` before it executes (``approved`` → ``executing``).

        Refused with ``AuthorizationError`` — and nothing changes — when the id is unknown or in
        another tenant (``approval_not_found``), bound to another call
        (``approval_binding_mismatch``), not approved yet (``approval_not_approved``), denied
        (``approval_denied``), used (``approval_used``), held by another call right now
        (``approval_in_use``), lapsed (``approval_expired``), or has fewer approvals than the
        current ``verdict`` asks for (``approval_insufficient``).
        """
        now = self._clock.now()
        with self._store.write() as tx:
            request = self._load(tx, approval_id, call.principal.tenant)
            self._check_usable(request, call, now, verdict=verdict, claimed=False)
            event = ApprovalEvent(
                "claim", now, call.principal.agent_id, detail={"call_id": call.call_id}
            )
            request = self._change(tx, request, event, status="executing")
        self._audit.flush()
        return request

    def consume(self, tx: Transaction, approval_id: str, call: Call) -> ApprovalRequest:
        """Mark the approval used by ``call``, inside ``tx`` (the call's record transaction).

        Accepts an ``approved`` request (checked as in ``claim``) or one this very call claimed.
        Raises like ``claim`` otherwise; the caller's transaction then rolls back.
        """
        now = self._clock.now()
        tx.lock(_lock_name(approval_id))  # the record transaction may be a keyed one
        request = self._load(tx, approval_id, call.principal.tenant)
        self._check_usable(request, call, now, verdict=None, claimed=True)
        event = ApprovalEvent("use", now, call.principal.agent_id, detail={"call_id": call.call_id})
        return self._change(tx, request, event, status="used", used_at=now)

    def release(self, tx: Transaction, approval_id: str, call: Call) -> ApprovalRequest | None:
        """Give back an approval ``call`` claimed (``executing`` → ``approved``), inside ``tx``.

        For a call that failed with a retryable error or was stopped before it ran: the retry of
        the same call may use the approval while it is valid. Does nothing (returns None) unless
        ``call`` holds the claim. Never raises for the request's state.
        """
        tx.lock(_lock_name(approval_id))
        row = tx.fetchone(f"{_SELECT} WHERE approval_id = ?", (approval_id,))
        if row is None:
            return None
        request = ApprovalRequest.from_row(row)
        if request.status != "executing" or _claimant(request) != call.call_id:
            return None
        event = ApprovalEvent(
            "release",
            self._clock.now(),
            call.principal.agent_id,
            note="the call did not complete; the approval may serve its retry",
            detail={"call_id": call.call_id},
        )
        return self._change(tx, request, event, status="approved")

    # -- the operator's side -------------------------------------------------------------------

    def approve(self, approval_id: str, operator: Operator, *, note: str = "") -> ApprovalRequest:
        """Record ``operator``'s approval; the request is ``approved`` once enough are in.

        Refused with ``AuthorizationError`` (recorded in the audit log): ``approval_not_found``,
        ``approval_not_pending`` (already decided, used or expired), ``approval_self`` (the
        requester or the human it acts for), ``approval_not_allowed`` (not among the deciders),
        ``approval_escalated`` (the deadline passed; the request went to its escalation target),
        ``approval_duplicate_approver`` (this person already approved).
        """
        return self._decide(approval_id, operator, "approve", note)

    def deny(self, approval_id: str, operator: Operator, *, reason: str) -> ApprovalRequest:
        """Deny the request with a reason; one allowed decider's denial is final.

        Refused like ``approve`` (except that the requester may withdraw its own request).
        """
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidRequestError(
                "a denial needs a reason (it is recorded and shown to the requester)",
                code="reason_required",
            )
        return self._decide(approval_id, operator, "deny", reason.strip())

    # -- timers and reads ----------------------------------------------------------------------

    def expire_due(self, now: _dt.datetime | None = None) -> list[ApprovalRequest]:
        """Apply deadlines: ``pending`` past its deadline → ``escalated``; ``approved`` whose
        token lapsed → ``expired``. Returns the requests changed, with their new status."""
        now = now or self._clock.now()
        stamp = _ts(now)
        with self._store.write() as tx:
            rows = tx.fetchall(
                f"{_SELECT} WHERE (status = 'pending' AND deadline <= ?) "
                "OR (status = 'approved' AND token_expires <= ?) ORDER BY created_at",
                (stamp, stamp),
            )
            changed = [self._settle(tx, ApprovalRequest.from_row(row), now) for row in rows]
        self._audit.flush()
        return changed

    def get(self, approval_id: str, *, tenant: str | None = None) -> ApprovalRequest:
        """The request ``approval_id``; ``tenant`` limits the lookup to one tenant.

        Raises ``AuthorizationError`` (``approval_not_found``) for an unknown id or one in
        another tenant. Deadlines are applied by writes and ``expire_due``, not by reads.
        """
        with self._store.read() as tx:
            return self._load(tx, approval_id, tenant)

    def list(
        self,
        status: ApprovalStatus | None = None,
        tenant: str | None = None,
        limit: int = 100,
        *,
        run_id: str | None = None,
    ) -> list[ApprovalRequest]:
        """Requests, newest first, optionally of one status, one tenant and one run."""
        if status is not None and status not in STATUSES:
            raise InvalidRequestError(
                f"approval status {status!r} is not one of {', '.join(STATUSES)}",
                context={"status": status},
            )
        if not 1 <= limit <= _MAX_LIST:
            raise InvalidRequestError(f"limit must be between 1 and {_MAX_LIST}, got {limit}")
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if run_id is not None:
            clauses.append("run_id = ?")
            params.append(run_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._store.read() as tx:
            rows = tx.fetchall(
                f"{_SELECT}{where} ORDER BY created_at DESC, approval_id LIMIT ?",
                (*params, limit),
            )
        return [ApprovalRequest.from_row(row) for row in rows]

    # -- internals -----------------------------------------------------------------------------

    def _create(
        self,
        tx: Transaction,
        call: Call,
        verdict: Verdict,
        binding: str,
        redact: Callable[[Any], Any],
        now: _dt.datetime,
        due: _dt.datetime,
    ) -> ApprovalRequest:
        principal = call.principal
        escalation = verdict.decision == "escalate"
        event = ApprovalEvent(
            "request",
            now,
            principal.agent_id,
            note=verdict.reason,
            detail={
                "decision": verdict.decision,
                "on_behalf_of": principal.on_behalf_of,
                "act": list(principal.act),
                "call_id": call.call_id,
                "policy_hash": verdict.policy_hash,
            },
        )
        request = ApprovalRequest(
            approval_id=new_id("apr_"),
            tenant=principal.tenant,
            run_id=call.run_id,
            step_id=call.step_id,
            tool=call.target,
            binding=binding,
            requested_by=principal.agent_id,
            on_behalf_of=principal.on_behalf_of,
            rule_id=verdict.rule_id,
            reason=verdict.reason,
            arguments=redact(dict(call.arguments)),
            approvals_required=max(1, verdict.approvals_required),
            approvers=tuple(verdict.approvers),
            escalate_to=verdict.escalate_to,
            status="escalated" if escalation else "pending",
            history=(event,),
            created_at=now,
            deadline=due,
            decided_at=None,
            token_expires=None,
            used_at=None,
        )
        tx.execute(
            _INSERT,
            (
                request.approval_id,
                request.tenant,
                request.run_id,
                request.step_id,
                request.tool,
                request.binding,
                request.requested_by,
                request.on_behalf_of,
                request.rule_id,
                request.reason,
                canonical_json(request.arguments),
                request.approvals_required,
                canonical_json(list(request.approvers)),
                request.escalate_to,
                request.status,
                encode_history(request.history),
                _ts(request.created_at),
                _ts(request.deadline),
                None,
                None,
                None,
            ),
        )
        self._audit.append(
            tx,
            self._entry(
                request,
                event,
                {
                    "kind": request.kind,
                    "principal": principal.to_record(),
                    "args": request.arguments,
                    "approvers": list(request.approvers),
                    "escalate_to": request.escalate_to,
                    "deadline": _ts(due),
                },
            ),
        )
        return request

    def _decide(
        self, approval_id: str, operator: Operator, action: Literal["approve", "deny"], note: str
    ) -> ApprovalRequest:
        if not isinstance(note, str):
            raise InvalidRequestError("an approval note must be text")
        now = self._clock.now()
        refusal: AuthorizationError | None
        with self._store.write() as tx:
            try:
                request: ApprovalRequest | None = self._load(tx, approval_id, operator.tenant)
            except AuthorizationError as exc:
                request, refusal = None, exc
            else:
                assert request is not None
                request = self._settle(tx, request, now)
                refusal = _refusal(request, operator, action)
            if refusal is None:
                assert request is not None
                request = self._record_decision(tx, request, operator, action, note.strip(), now)
            else:
                self._audit.append(
                    tx, _refused_entry(approval_id, request, operator, action, now, refusal)
                )
        self._audit.flush()
        if refusal is not None:
            raise refusal
        assert request is not None
        return request

    def _record_decision(
        self,
        tx: Transaction,
        request: ApprovalRequest,
        operator: Operator,
        action: str,
        note: str,
        now: _dt.datetime,
    ) -> ApprovalRequest:
        event = ApprovalEvent(
            action, now, operator.name, note=note, detail={"roles": sorted(operator.roles)}
        )
        if action == "deny":
            return self._change(tx, request, event, status="denied", decided_at=now)
        if len(request.approved_by) + 1 >= request.approvals_required:
            return self._change(
                tx,
                request,
                event,
                status="approved",
                decided_at=now,
                token_expires=now + self.token_ttl,
            )
        return self._change(tx, request, event)

    def _settle(
        self, tx: Transaction, request: ApprovalRequest, now: _dt.datetime
    ) -> ApprovalRequest:
        """Apply a deadline or a token expiry that is due (the lazy half of ``expire_due``)."""
        if request.status == "pending" and request.deadline is not None and request.deadline <= now:
            target = request.escalate_to or "admin"
            event = ApprovalEvent(
                "escalate",
                now,
                _SYSTEM,
                note=f"no decision by the deadline {_ts(request.deadline)}; escalated to {target}",
            )
            return self._change(tx, request, event, status="escalated")
        if (
            request.status == "approved"
            and request.token_expires is not None
            and request.token_expires <= now
        ):
            event = ApprovalEvent("expire", now, _SYSTEM, note="the approval lapsed unused")
            return self._change(tx, request, event, status="expired")
        return request

    def _change(
        self,
        tx: Transaction,
        request: ApprovalRequest,
        event: ApprovalEvent,
        *,
        status: ApprovalStatus | None = None,
        decided_at: _dt.datetime | None = None,
        token_expires: _dt.datetime | None = None,
        used_at: _dt.datetime | None = None,
    ) -> ApprovalRequest:
        changed = replace(
            request,
            status=status or request.status,
            history=(*request.history, event),
            decided_at=decided_at or request.decided_at,
            token_expires=token_expires or request.token_expires,
            used_at=used_at or request.used_at,
        )
        tx.execute(
            _UPDATE,
            (
                changed.status,
                encode_history(changed.history),
                _ts(changed.decided_at),
                _ts(changed.token_expires),
                _ts(changed.used_at),
                changed.approval_id,
            ),
        )
        self._audit.append(tx, self._entry(changed, event))
        if changed.status in ("approved", "denied", "expired") and request.status != changed.status:
            tx.notify(RUNS_CHANNEL)  # a run waiting on this request may go on: wake workers
        return changed

    @staticmethod
    def _entry(
        request: ApprovalRequest, event: ApprovalEvent, extra: dict[str, Any] | None = None
    ) -> AuditEntry:
        body: dict[str, Any] = {
            "action": f"approval.{event.action}",
            "approval_id": request.approval_id,
            "actor": event.actor,
            "status": request.status,
            "approvals": len(request.approved_by),
            "approvals_required": request.approvals_required,
            "binding": request.binding,
        }
        if event.note:
            body["note"] = event.note
        if event.detail:
            body["detail"] = dict(event.detail)
        if request.token_expires is not None and event.action == "approve":
            body["token_expires"] = _ts(request.token_expires)
        body.update(extra or {})
        call_id = event.detail.get("call_id")
        return AuditEntry(
            kind="control",
            ts=event.at,
            tenant=request.tenant,
            agent=request.requested_by,
            run_id=request.run_id,
            step_id=request.step_id,
            tool=request.tool,
            call_id=call_id if isinstance(call_id, str) else None,
            decision=f"approval.{event.action}",
            rule_id=request.rule_id,
            body=body,
        )

    @staticmethod
    def _load(tx: Transaction, approval_id: str, tenant: str | None) -> ApprovalRequest:
        if not isinstance(approval_id, str) or not 0 < len(approval_id) <= _MAX_ID:
            raise _not_found(approval_id)
        row = tx.fetchone(f"{_SELECT} WHERE approval_id = ?", (approval_id,))
        if row is None or (tenant is not None and row[1] != tenant):
            raise _not_found(approval_id)
        return ApprovalRequest.from_row(row)

    def _check_usable(
        self,
        request: ApprovalRequest,
        call: Call,
        now: _dt.datetime,
        *,
        verdict: Verdict | None,
        claimed: bool,
    ) -> None:
        """Raise unless ``request`` may authorize ``call`` now (see ``claim``)."""
        aid = request.approval_id
        context: dict[str, Any] = {"approval_id": aid, "status": request.status}
        if request.binding != self.binding(call):
            raise AuthorizationError(
                f"approval {aid} was given for a different call (tool, arguments, run, step or "
                "requester differ); it cannot authorize this one",
                code="approval_binding_mismatch",
                context=context,
            )
        status = request.status
        if status in DECIDABLE_STATUSES:
            raise AuthorizationError(
                f"approval {aid} is still waiting for a decision ({status})",
                code="approval_not_approved",
                context=context,
            )
        if status == "denied":
            denial = request.denial
            by = denial.actor if denial else "an operator"
            why = denial.note if denial else ""
            raise AuthorizationError(
                f"approval {aid} was denied by {by}: {why}",
                code="approval_denied",
                context={**context, "denied_by": by, "reason": why},
            )
        if status == "used":
            raise AuthorizationError(
                f"approval {aid} was already used; an approval authorizes one execution",
                code="approval_used",
                context=context,
            )
        if status == "executing" and not (claimed and _claimant(request) == call.call_id):
            raise AuthorizationError(
                f"approval {aid} is being used by another call right now",
                code="approval_in_use",
                context=context,
            )
        expired = status == "expired" or (
            status == "approved" and (request.token_expires is None or request.token_expires <= now)
        )
        if expired:
            raise AuthorizationError(
                f"approval {aid} expired at {_ts(request.token_expires)}; ask for a new one",
                code="approval_expired",
                context=context,
            )
        if verdict is not None and len(request.approved_by) < verdict.approvals_required:
            raise AuthorizationError(
                f"approval {aid} has {len(request.approved_by)} approval(s); the policy now asks "
                f"for {verdict.approvals_required}",
                code="approval_insufficient",
                context=context,
            )


def _claimant(request: ApprovalRequest) -> str | None:
    """The call id that holds the latest claim on ``request``."""
    for event in reversed(request.history):
        if event.action == "claim":
            value = event.detail.get("call_id")
            return value if isinstance(value, str) else None
    return None


def _refusal(
    request: ApprovalRequest, operator: Operator, action: str
) -> AuthorizationError | None:
    """Why ``operator`` may not ``action`` (approve / deny) ``request`` now, or None."""
    aid = request.approval_id
    verb = "approved" if action == "approve" else "denied"
    context: dict[str, Any] = {"approval_id": aid, "status": request.status}
    if request.status not in DECIDABLE_STATUSES:
        return AuthorizationError(
            f"approval {aid} is already {request.status}; it can no longer be {verb}",
            code="approval_not_pending",
            context=context,
        )
    if action == "approve" and any(same_person(operator.name, who) for who in request.requesters):
        return AuthorizationError(
            f"{operator.name} asked for this call (or it acts for them); a requester can never "
            "approve its own call",
            code="approval_self",
            context=context,
        )
    deciders = request.deciders()
    if not any(operator.holds(label) for label in deciders):
        before = request.approvers or tuple(sorted(DEFAULT_APPROVER_ROLES))
        if request.escalated_by_deadline and any(operator.holds(label) for label in before):
            return AuthorizationError(
                f"the deadline of approval {aid} passed and it was escalated; only "
                f"{', '.join(deciders)} may decide it now",
                code="approval_escalated",
                context={**context, "deciders": list(deciders)},
            )
        return AuthorizationError(
            f"{operator.name} may not decide approval {aid}: it needs one of {', '.join(deciders)}",
            code="approval_not_allowed",
            context={**context, "deciders": list(deciders)},
        )
    if action == "approve" and any(same_person(operator.name, who) for who in request.approved_by):
        return AuthorizationError(
            f"{operator.name} already approved {aid}; it needs {request.approvals_required} "
            "distinct approvers",
            code="approval_duplicate_approver",
            context=context,
        )
    return None


def _refused_entry(
    approval_id: str,
    request: ApprovalRequest | None,
    operator: Operator,
    action: str,
    now: _dt.datetime,
    refusal: AuthorizationError,
) -> AuditEntry:
    """The record of an operator's refused approve / deny (who tried what, and why not)."""
    body: dict[str, Any] = {
        "action": f"approval.{action}.refused",
        "approval_id": approval_id[:_MAX_ID] if isinstance(approval_id, str) else None,
        "actor": operator.name,
        "roles": sorted(operator.roles),
        "error": {"code": refusal.code, "message": refusal.message},
    }
    if request is None:
        return AuditEntry(
            kind="control",
            ts=now,
            tenant=operator.tenant,
            decision="approval.refused",
            rule_id=f"approval:{refusal.code}",
            body=body,
        )
    return AuditEntry(
        kind="control",
        ts=now,
        tenant=request.tenant,
        agent=request.requested_by,
        run_id=request.run_id,
        step_id=request.step_id,
        tool=request.tool,
        decision="approval.refused",
        rule_id=f"approval:{refusal.code}",
        body={**body, "status": request.status},
    )


def _lock_name(approval_id: str) -> str:
    """The store lock that serializes changes of one approval in keyed transactions."""
    return f"approval:{approval_id}"
