"""Pinned definitions of upstream MCP tools: approval on first sight, rug-pull detection.

Each upstream tool's definition (description, title, input and output schema, annotations) is
hashed. The first time Keel sees a tool, the digest is pinned: automatically when the upstream is
configured with ``approve_new_tools: auto`` and screening found nothing, else the tool waits as
``pending`` for an operator. When an upstream later offers a different definition for a pinned
tool (a rug pull, ATTACKS.md #27) the tool becomes ``changed`` and is disabled — it is neither
listed nor callable — until an operator approves the new definition (``keel mcp tools review``).
If the upstream goes back to the approved definition, the tool is usable again.

Every change of state leaves a ``control`` record in the audit log. The table is
``mcp_tool_pins`` (migration 9); rows are shared by every replica.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from keel.audit import AuditEntry, AuditLog
from keel.canonical import canonical_json, digest
from keel.core import Clock
from keel.errors import InvalidRequestError, NotFoundError
from keel.store import Store, Transaction

__all__ = ["PinState", "Pins", "definition_digest"]

PinStatus = Literal["approved", "pending", "changed", "rejected"]
_DIGEST_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def definition_digest(definition: Mapping[str, Any]) -> str:
    """``sha256:`` over the parts of a tool definition a model sees or a caller relies on."""
    return digest({key: definition.get(key) for key in _DIGEST_KEYS})


@dataclass(frozen=True, slots=True)
class PinState:
    """One upstream tool's pin: what was approved, what is offered now."""

    upstream: str
    tool: str
    status: PinStatus
    approved_digest: str | None
    offered_digest: str
    offered: Mapping[str, Any]
    findings: tuple[str, ...]
    first_seen: str
    last_seen: str
    decided_by: str | None
    decided_at: str | None

    @property
    def usable(self) -> bool:
        """Listed and callable: approved, and what is offered is what was approved."""
        return self.status == "approved" and self.offered_digest == self.approved_digest

    def to_dict(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "tool": self.tool,
            "status": self.status,
            "usable": self.usable,
            "approved_digest": self.approved_digest,
            "offered_digest": self.offered_digest,
            "findings": list(self.findings),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "offered": dict(self.offered),
        }


def _ts(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.UTC).isoformat(timespec="seconds")


def _row(row: Sequence[Any]) -> PinState:
    return PinState(
        upstream=row[0],
        tool=row[1],
        status=row[2],
        approved_digest=row[3],
        offered_digest=row[4],
        offered=json.loads(row[5]),
        findings=tuple(json.loads(row[6])),
        first_seen=row[7],
        last_seen=row[8],
        decided_by=row[9],
        decided_at=row[10],
    )


_COLUMNS = (
    "upstream, tool, status, approved_digest, offered_digest, offered, findings, first_seen, "
    "last_seen, decided_by, decided_at"
)


class Pins:
    """The pin table. Thread-safe (every method is one store transaction)."""

    def __init__(self, store: Store, audit: AuditLog, clock: Clock) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock

    def observe(
        self,
        upstream: str,
        tool: str,
        definition: Mapping[str, Any],
        findings: Sequence[str],
        *,
        auto_approve: bool,
    ) -> PinState:
        """Record what ``upstream`` offers as ``tool`` now and return the resulting pin."""
        offered_digest = definition_digest(definition)
        now = _ts(self._clock.now())
        offered = canonical_json(dict(definition))
        findings_json = json.dumps(sorted(findings))
        with self._store.write(locks=(f"mcp-pin:{upstream}",)) as tx:
            current = self._load(tx, upstream, tool)
            if current is None:
                status: PinStatus = "approved" if auto_approve and not findings else "pending"
                approved = offered_digest if status == "approved" else None
                decided_by = "auto:first-use" if status == "approved" else None
                tx.execute(
                    f"INSERT INTO mcp_tool_pins ({_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        upstream,
                        tool,
                        status,
                        approved,
                        offered_digest,
                        offered,
                        findings_json,
                        now,
                        now,
                        decided_by,
                        now if decided_by else None,
                    ),
                )
                self._record(
                    tx,
                    "mcp_tool_pinned" if status == "approved" else "mcp_tool_quarantined",
                    upstream,
                    tool,
                    {"digest": offered_digest, "findings": sorted(findings), "by": decided_by},
                )
                state = self._load(tx, upstream, tool)
                assert state is not None
                return state
            if current.offered_digest == offered_digest:
                if current.last_seen != now:
                    tx.execute(
                        "UPDATE mcp_tool_pins SET last_seen = ? WHERE upstream = ? AND tool = ?",
                        (now, upstream, tool),
                    )
                return current
            status = current.status
            if status == "approved" and offered_digest != current.approved_digest:
                status = "changed"
            elif status == "changed" and offered_digest == current.approved_digest:
                status = "approved"
            tx.execute(
                "UPDATE mcp_tool_pins SET status = ?, offered_digest = ?, offered = ?, "
                "findings = ?, last_seen = ? WHERE upstream = ? AND tool = ?",
                (status, offered_digest, offered, findings_json, now, upstream, tool),
            )
            if status == "changed":
                self._record(
                    tx,
                    "mcp_tool_changed",
                    upstream,
                    tool,
                    {
                        "approved_digest": current.approved_digest,
                        "offered_digest": offered_digest,
                        "findings": sorted(findings),
                        "disabled": True,
                    },
                )
            elif status == "approved" and current.status == "changed":
                self._record(tx, "mcp_tool_restored", upstream, tool, {"digest": offered_digest})
            state = self._load(tx, upstream, tool)
            assert state is not None
            return state

    def approve(
        self, upstream: str, tool: str, *, actor: str, digest: str | None = None
    ) -> PinState:
        """Pin what ``upstream`` offers now for ``tool`` (only if it is still ``digest``, when
        given: a review approves what the reviewer saw, not what arrived since)."""
        return self._decide(upstream, tool, "approved", actor, digest)

    def reject(self, upstream: str, tool: str, *, actor: str) -> PinState:
        """Keep the tool disabled whatever the upstream offers, until approved."""
        return self._decide(upstream, tool, "rejected", actor, None)

    def _decide(
        self, upstream: str, tool: str, status: PinStatus, actor: str, expected: str | None
    ) -> PinState:
        now = _ts(self._clock.now())
        with self._store.write(locks=(f"mcp-pin:{upstream}",)) as tx:
            current = self._load(tx, upstream, tool)
            if current is None:
                raise NotFoundError(
                    f"no upstream tool {upstream}.{tool} has been seen",
                    context={"upstream": upstream, "tool": tool},
                )
            if expected is not None and expected != current.offered_digest:
                raise InvalidRequestError(
                    f"{upstream}.{tool} changed since it was reviewed (offered "
                    f"{current.offered_digest}, reviewed {expected}); review it again",
                    code="pin_changed_since_review",
                )
            approved = current.offered_digest if status == "approved" else current.approved_digest
            tx.execute(
                "UPDATE mcp_tool_pins SET status = ?, approved_digest = ?, decided_by = ?, "
                "decided_at = ? WHERE upstream = ? AND tool = ?",
                (status, approved, actor, now, upstream, tool),
            )
            self._record(
                tx,
                f"mcp_tool_{status}",
                upstream,
                tool,
                {"digest": current.offered_digest, "by": actor, "was": current.status},
            )
            state = self._load(tx, upstream, tool)
            assert state is not None
        self._audit.flush()
        return state

    def get(self, upstream: str, tool: str) -> PinState | None:
        with self._store.read() as tx:
            return self._load(tx, upstream, tool)

    def list(self, *, upstream: str | None = None, status: str | None = None) -> list[PinState]:
        sql = f"SELECT {_COLUMNS} FROM mcp_tool_pins"
        where, params = [], []
        if upstream is not None:
            where.append("upstream = ?")
            params.append(upstream)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._store.read() as tx:
            rows = tx.fetchall(sql + " ORDER BY upstream, tool", params)
        return [_row(row) for row in rows]

    @staticmethod
    def _load(tx: Transaction, upstream: str, tool: str) -> PinState | None:
        row = tx.fetchone(
            f"SELECT {_COLUMNS} FROM mcp_tool_pins WHERE upstream = ? AND tool = ?",
            (upstream, tool),
        )
        return None if row is None else _row(row)

    def _record(
        self, tx: Transaction, action: str, upstream: str, tool: str, body: dict[str, Any]
    ) -> None:
        self._audit.append(
            tx,
            AuditEntry(
                kind="control",
                tool=tool,
                decision=action,
                rule_id=f"mcp.pin:{upstream}",
                body={"upstream": upstream, "upstream_tool": tool, **body},
            ),
        )
