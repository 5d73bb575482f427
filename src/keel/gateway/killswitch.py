"""Kill switches: stop calls now, globally or per tenant, agent, workflow or tool.

State lives in the store, so a switch flipped by ``keel kill`` in another process takes effect
here within ``refresh_seconds`` (≤ 1 s); a switch flipped through this object takes effect on the
very next call. Every change is appended to the audit log in the same transaction.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass
from typing import Literal, get_args

from keel.audit import AuditEntry, AuditLog
from keel.core import Call, Clock
from keel.errors import UsageError
from keel.store import Store
from keel.tools import check_tool_name

__all__ = ["KillScope", "KillSwitch", "KillSwitches"]

KillScope = Literal["global", "tenant", "agent", "workflow", "tool"]
_SCOPES: tuple[str, ...] = get_args(KillScope)


@dataclass(frozen=True, slots=True)
class KillSwitch:
    scope: str
    target: str
    reason: str
    actor: str
    updated_at: str


class KillSwitches:
    """The engaged kill switches, cached per process and refreshed from the store."""

    def __init__(
        self, store: Store, audit: AuditLog, clock: Clock, *, refresh_seconds: float = 0.25
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._exact: dict[tuple[str, str], KillSwitch] = {}
        self._tool_patterns: tuple[tuple[str, KillSwitch], ...] = ()

    # -- operator side -----------------------------------------------------------------------

    def engage(self, scope: str, target: str = "*", *, reason: str, actor: str) -> KillSwitch:
        return self._set(scope, target, engaged=True, reason=reason, actor=actor)

    def release(self, scope: str, target: str = "*", *, reason: str, actor: str) -> KillSwitch:
        return self._set(scope, target, engaged=False, reason=reason, actor=actor)

    def _set(
        self, scope: str, target: str, *, engaged: bool, reason: str, actor: str
    ) -> KillSwitch:
        if scope not in _SCOPES:
            raise UsageError(
                f"kill switch scope {scope!r} is not one of {', '.join(_SCOPES)}",
                context={"scope": scope},
            )
        target = "*" if scope == "global" else target
        if not target or (target == "*" and scope != "global"):
            raise UsageError(f"a {scope} kill switch needs a target (the {scope} to stop)")
        if scope == "tool":
            check_tool_name(target.removesuffix(".*"), what="tool pattern")
        if not reason.strip():
            raise UsageError("a kill switch change needs a reason")
        now = self._clock.now().isoformat()
        switch = KillSwitch(scope, target, reason, actor, now)
        with self._store.write() as tx:
            tx.execute(
                "INSERT INTO kill_switches (scope, target, engaged, reason, actor, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, target) DO UPDATE SET "
                "engaged = excluded.engaged, reason = excluded.reason, actor = excluded.actor, "
                "updated_at = excluded.updated_at",
                (scope, target, int(engaged), reason, actor, now),
            )
            self._audit.append(
                tx,
                AuditEntry(
                    kind="control",
                    tool=target if scope == "tool" else None,
                    agent=target if scope == "agent" else None,
                    tenant=target if scope == "tenant" else None,
                    decision="engage" if engaged else "release",
                    rule_id=f"kill:{scope}",
                    body={
                        "action": "kill_switch.engage" if engaged else "kill_switch.release",
                        "scope": scope,
                        "target": target,
                        "reason": reason,
                        "actor": actor,
                    },
                ),
            )
        self._audit.flush()
        self.refresh()
        return switch

    def list(self) -> list[KillSwitch]:
        """Every engaged switch, read from the store now."""
        with self._store.read() as tx:
            rows = tx.fetchall(
                "SELECT scope, target, reason, actor, updated_at FROM kill_switches "
                "WHERE engaged = 1 ORDER BY scope, target"
            )
        return [KillSwitch(*row) for row in rows]

    # -- hot path ----------------------------------------------------------------------------

    def refresh(self) -> None:
        switches = self.list()
        exact = {(s.scope, s.target): s for s in switches}
        patterns = tuple(
            (s.target, s)
            for s in switches
            if s.scope == "tool" and any(c in s.target for c in "*?[")
        )
        with self._lock:
            self._exact = exact
            self._tool_patterns = patterns
            self._loaded_at = self._clock.monotonic()

    def engaged_for(self, call: Call) -> KillSwitch | None:
        """The switch that stops ``call``, or None. Reads the store at most every refresh period."""
        if self._clock.monotonic() - self._loaded_at >= self._refresh:
            self.refresh()
        exact = self._exact
        if not exact:
            return None
        principal = call.principal
        hit = (
            exact.get(("global", "*"))
            or exact.get(("tenant", principal.tenant))
            or exact.get(("agent", principal.agent_id))
            or (exact.get(("workflow", call.workflow)) if call.workflow else None)
            or exact.get(("tool", call.target))
        )
        if hit is not None:
            return hit
        for actor in principal.act:  # a stopped agent also stops the agents it delegated to
            hit = exact.get(("agent", actor))
            if hit is not None:
                return hit
        for pattern, switch in self._tool_patterns:
            if fnmatch.fnmatchcase(call.target, pattern):
                return switch
        return None
