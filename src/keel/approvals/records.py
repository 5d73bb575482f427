"""What an approval request is: its status, its history, who may act on it.

An ``ApprovalRequest`` is one row of the ``approvals`` table, read into a frozen dataclass. Its
``history`` (the ``decisions`` column) is a JSON document with a schema version::

    {"schema": 1, "events": [{"action": "request", "at": "...", "actor": "refund-bot", ...}, ...]}

Actions: ``request`` (the agent asked; ``detail`` holds ``decision``, ``on_behalf_of``, ``act``),
``approve``, ``deny`` (an operator decided; ``detail`` holds the operator's ``roles``),
``escalate`` (the deadline passed), ``expire`` (the approval token lapsed unused), ``use`` (the
approved call executed; ``detail`` holds its ``call_id``) and ``release`` (the approved call failed
with a retryable error: the token may serve the retry).

Compatibility: adding an optional key to an event does not change the schema version; anything
else does. Readers refuse a newer version with ``SchemaVersionError`` (upgrade Keel to read it).
"""

from __future__ import annotations

import datetime as _dt
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from keel.canonical import canonical_json, parse_json
from keel.errors import InvalidRequestError, SchemaVersionError

__all__ = [
    "ACTIVE_STATUSES",
    "DECIDABLE_STATUSES",
    "DEFAULT_APPROVER_ROLES",
    "HISTORY_SCHEMA_VERSION",
    "ApprovalEvent",
    "ApprovalKind",
    "ApprovalRequest",
    "ApprovalStatus",
    "Operator",
    "same_person",
]

#: ``pending`` → ``approved`` | ``denied`` | ``escalated`` (deadline); ``escalated`` →
#: ``approved`` | ``denied``; ``approved`` → ``executing`` (a call holds the token) → ``used``
#: (or back to ``approved`` after a retryable failure); ``approved`` → ``expired`` (token lapsed).
ApprovalStatus = Literal[
    "pending", "escalated", "approved", "executing", "used", "denied", "expired"
]
STATUSES: Final[tuple[str, ...]] = get_args(ApprovalStatus)
#: Statuses of a live request: at most one per bound call (a unique index in the store).
ACTIVE_STATUSES: Final = ("pending", "escalated", "approved", "executing")
#: Statuses in which an operator may still approve or deny.
DECIDABLE_STATUSES: Final = ("pending", "escalated")
#: Who may decide a request whose verdict names no approvers.
DEFAULT_APPROVER_ROLES: Final = frozenset({"approver", "admin"})

#: ``approval``: a ``require_approval`` verdict; ``escalation``: an ``escalate`` verdict.
ApprovalKind = Literal["approval", "escalation"]

HISTORY_SCHEMA_VERSION: Final = 1


def _norm(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold().strip()


def same_person(a: str | None, b: str | None) -> bool:
    """Whether two identity labels name the same actor (NFKC, case-insensitive, trimmed)."""
    return a is not None and b is not None and _norm(a) == _norm(b)


@dataclass(frozen=True, slots=True)
class Operator:
    """A person acting on approvals, as authenticated by a surface (server session, CLI user).

    ``roles`` are matched against a request's ``approvers`` (roles or names); ``tenant`` limits
    the operator to one tenant (None: every tenant). An operator outside a request's tenant
    cannot tell it from an unknown id.
    """

    name: str
    roles: frozenset[str] = frozenset()
    tenant: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidRequestError("an operator needs a non-empty name")
        if any(unicodedata.category(c).startswith("C") for c in self.name):
            raise InvalidRequestError(
                "an operator name may not contain control or invisible characters"
            )
        if not isinstance(self.roles, frozenset):
            object.__setattr__(self, "roles", frozenset(self.roles))

    def holds(self, label: str) -> bool:
        """Whether ``label`` (a role or a person) designates this operator."""
        return label in self.roles or same_person(label, self.name)


def _ts(value: _dt.datetime) -> str:
    return value.astimezone(_dt.UTC).isoformat(timespec="microseconds")


def _parse_ts(value: str | None) -> _dt.datetime | None:
    return None if value is None else _dt.datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class ApprovalEvent:
    """One entry of a request's history: who did what, when, and why."""

    action: str
    at: _dt.datetime
    actor: str
    note: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"action": self.action, "at": _ts(self.at), "actor": self.actor}
        if self.note:
            record["note"] = self.note
        if self.detail:
            record["detail"] = dict(self.detail)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ApprovalEvent:
        at = _parse_ts(str(record["at"]))
        assert at is not None
        return cls(
            action=str(record["action"]),
            at=at,
            actor=str(record["actor"]),
            note=str(record.get("note", "")),
            detail=dict(record.get("detail") or {}),
        )


def encode_history(events: tuple[ApprovalEvent, ...]) -> str:
    return canonical_json(
        {"schema": HISTORY_SCHEMA_VERSION, "events": [e.to_record() for e in events]}
    )


def decode_history(text: str) -> tuple[ApprovalEvent, ...]:
    document = parse_json(text, what="approval history")
    version = document.get("schema") if isinstance(document, dict) else None
    if not isinstance(version, int):
        raise InvalidRequestError("approval history has no schema version")
    if version > HISTORY_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"approval history schema {version} was written by a newer Keel "
            f"(this one reads up to {HISTORY_SCHEMA_VERSION}); upgrade Keel to read it",
            context={"schema": version, "supported": HISTORY_SCHEMA_VERSION},
        )
    return tuple(ApprovalEvent.from_record(e) for e in document.get("events", []))


#: Column order of every SELECT of the approvals table (``ApprovalRequest.from_row``).
COLUMNS: Final = (
    "approval_id, tenant, run_id, step_id, tool, binding, requested_by, on_behalf_of, rule_id, "
    "reason, arguments, approvals_required, approvers, escalate_to, status, decisions, "
    "created_at, deadline, decided_at, token_expires, used_at"
)


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A request for a person's approval, bound to one exact call (``binding``).

    ``arguments`` are the call's arguments after redaction, for display; the ``binding`` covers
    the real ones. ``approvers`` lists the roles or people who may decide (empty: anyone with a
    role in ``DEFAULT_APPROVER_ROLES``). ``token_expires`` is set once the request is approved:
    the single-use approval is valid until then.
    """

    approval_id: str
    tenant: str
    run_id: str | None
    step_id: str | None
    tool: str
    binding: str
    requested_by: str
    on_behalf_of: str | None
    rule_id: str
    reason: str
    arguments: Any
    approvals_required: int
    approvers: tuple[str, ...]
    escalate_to: str | None
    status: ApprovalStatus
    history: tuple[ApprovalEvent, ...]
    created_at: _dt.datetime
    deadline: _dt.datetime | None
    decided_at: _dt.datetime | None
    token_expires: _dt.datetime | None
    used_at: _dt.datetime | None

    @property
    def kind(self) -> ApprovalKind:
        first = self.history[0] if self.history else None
        if first is not None and first.detail.get("decision") == "escalate":
            return "escalation"
        return "approval"

    @property
    def requesters(self) -> tuple[str, ...]:
        """Everyone on whose behalf the call was asked: agent, its delegators, its human."""
        first = self.history[0] if self.history else None
        act = tuple(str(a) for a in first.detail.get("act", ())) if first else ()
        people = (self.requested_by, *act)
        return people if self.on_behalf_of is None else (*people, self.on_behalf_of)

    @property
    def approved_by(self) -> tuple[str, ...]:
        return tuple(e.actor for e in self.history if e.action == "approve")

    @property
    def denial(self) -> ApprovalEvent | None:
        return next((e for e in self.history if e.action == "deny"), None)

    @property
    def escalated_by_deadline(self) -> bool:
        return any(e.action == "escalate" for e in self.history)

    def deciders(self) -> tuple[str, ...]:
        """The roles or people who may decide now (see ``Approvals.approve``)."""
        if self.status == "escalated":
            labels = list(self.approvers) if self.kind == "escalation" else []
            if self.escalate_to:
                labels.append(self.escalate_to)
            labels.append("admin")
            return tuple(dict.fromkeys(labels))
        return self.approvers or tuple(sorted(DEFAULT_APPROVER_ROLES))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary, as surfaces show it."""
        return {
            "approval_id": self.approval_id,
            "kind": self.kind,
            "status": self.status,
            "tenant": self.tenant,
            "tool": self.tool,
            "arguments": self.arguments,
            "binding": self.binding,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "requested_by": self.requested_by,
            "on_behalf_of": self.on_behalf_of,
            "rule_id": self.rule_id,
            "reason": self.reason,
            "approvals_required": self.approvals_required,
            "approved_by": list(self.approved_by),
            "approvers": list(self.approvers),
            "escalate_to": self.escalate_to,
            "created_at": _ts(self.created_at),
            "deadline": None if self.deadline is None else _ts(self.deadline),
            "decided_at": None if self.decided_at is None else _ts(self.decided_at),
            "token_expires": None if self.token_expires is None else _ts(self.token_expires),
            "used_at": None if self.used_at is None else _ts(self.used_at),
            "history": [e.to_record() for e in self.history],
        }

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ApprovalRequest:
        status = str(row[14])
        if status not in STATUSES:
            raise InvalidRequestError(f"approval {row[0]} has an unknown status {status!r}")
        created = _parse_ts(row[16])
        assert created is not None
        approvers = parse_json(row[12], what="approvers")
        return cls(
            approval_id=row[0],
            tenant=row[1],
            run_id=row[2],
            step_id=row[3],
            tool=row[4],
            binding=row[5],
            requested_by=row[6],
            on_behalf_of=row[7],
            rule_id=row[8],
            reason=row[9],
            arguments=parse_json(row[10], what="approval arguments"),
            approvals_required=int(row[11]),
            approvers=tuple(str(a) for a in approvers),
            escalate_to=row[13],
            status=status,  # type: ignore[arg-type]  # checked against STATUSES above
            history=decode_history(row[15]),
            created_at=created,
            deadline=_parse_ts(row[17]),
            decided_at=_parse_ts(row[18]),
            token_expires=_parse_ts(row[19]),
            used_at=_parse_ts(row[20]),
        )
