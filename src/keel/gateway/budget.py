"""The budget guards: rate limits, then ledger reservations, from the policy's caps and limits.

The policy decides which caps and rate limits apply to a call (``limits_for``); the ledger holds
the money. A call reserves its worst-case cost before it runs and settles the actual cost in the
same transaction as its audit record; a call stopped later in the chain releases its hold.
Crossing a burn-alert fraction of a cap turns an ``allow`` into ``require_approval``.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Literal, Protocol

from keel.core import Cost, Principal, Verdict
from keel.errors import BudgetExceeded, RateLimited
from keel.gateway.context import CallContext
from keel.gateway.guards import Guard
from keel.ledger import Cap, Ledger, RateLimit, RateLimiter, ReservationRequest, bucket_keys
from keel.store import Transaction

__all__ = ["LedgerGuard", "LimitsCache", "LimitsSource", "RateLimitGuard"]


class _LimitsLike(Protocol):
    @property
    def caps(self) -> tuple[object, ...]: ...

    @property
    def rate_limits(self) -> tuple[object, ...]: ...


class LimitsSource(Protocol):
    """Which caps and rate limits apply to a call (``keel.policy.PolicySet.limits_for``)."""

    def limits_for(
        self,
        principal: Principal,
        workflow: str | None,
        kind: Literal["tool", "model"],
        target: str,
    ) -> _LimitsLike: ...


class LimitsCache:
    """Policy specs converted to ledger types, once per (immutable, cached) Limits object."""

    def __init__(self, source: LimitsSource) -> None:
        self._source = source
        self._cache: dict[int, tuple[object, tuple[Cap, ...], tuple[RateLimit, ...]]] = {}
        self._lock = threading.Lock()

    def get(self, ctx: CallContext) -> tuple[tuple[Cap, ...], tuple[RateLimit, ...]]:
        """The caps and rate limits of this call, looked up once per call (both guards ask)."""
        if ctx.limits is not None:
            return ctx.limits  # type: ignore[no-any-return]
        call = ctx.call
        assert call is not None
        limits = self._source.limits_for(call.principal, call.workflow, call.kind, call.target)
        found = self._cache.get(id(limits))
        if found is None or found[0] is not limits:
            caps = tuple(Cap.from_spec(spec) for spec in limits.caps)  # type: ignore[arg-type]
            rates = tuple(
                RateLimit.from_spec(spec)  # type: ignore[arg-type]
                for spec in limits.rate_limits
            )
            found = (limits, caps, rates)
            with self._lock:
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache[id(limits)] = found
        ctx.limits = (found[1], found[2])
        return found[1], found[2]


def _estimate(ctx: CallContext) -> Cost:
    if ctx.estimate is None:
        assert ctx.tool is not None
        assert ctx.arguments is not None
        ctx.estimate = ctx.tool.estimate_cost(ctx.arguments)
    return ctx.estimate


class RateLimitGuard(Guard):
    """Token buckets per agent, tenant, tool and model; refuses with a retry-after."""

    name = "rate_limit"

    def __init__(self, limiter: RateLimiter, converted: LimitsCache) -> None:
        self._limiter = limiter
        self._converted = converted

    def before(self, ctx: CallContext) -> None:
        _caps, rates = self._converted.get(ctx)
        if not rates:
            return
        call = ctx.call
        assert call is not None
        keys = bucket_keys(
            rates, call.principal, call.kind, call.target, tokens=_estimate(ctx).tokens
        )
        try:
            self._limiter.acquire(keys)
        except RateLimited as exc:
            exc.context.setdefault("rule_id", f"rate:{exc.context.get('limit')}")
            raise


class LedgerGuard(Guard):
    """Reserve the worst case before the call; settle the actual cost after; fail closed."""

    name = "budget"
    keyed_safe = True  # settle/release are conditional single-statement updates

    def __init__(self, ledger: Ledger, converted: LimitsCache) -> None:
        self._ledger = ledger
        self._converted = converted

    def before(self, ctx: CallContext) -> None:
        caps, _rates = self._converted.get(ctx)
        if not caps:
            return
        call = ctx.call
        assert call is not None
        estimate = _estimate(ctx)
        try:
            reservation = self._ledger.reserve(
                ReservationRequest.for_call(
                    call, amount_usd=estimate.usd, tokens=estimate.tokens, caps=caps
                )
            )
        except BudgetExceeded as exc:
            exc.context.setdefault("rule_id", f"budget:{exc.context.get('cap')}")
            raise
        ctx.reservation = reservation.id
        ctx.notes["reserved_usd"] = str(estimate.usd)
        verdict = ctx.verdict
        if reservation.burn_alert and verdict is not None and verdict.decision == "allow":
            alert = reservation.burn_alerts[0]
            ctx.verdict = Verdict(
                decision="require_approval",
                rule_id=f"burn:{alert.cap_id}",
                reason=f"this call takes cap {alert.cap_id!r} past its burn-alert line "
                f"({alert.fraction:.0%} of the limit); a person confirms before spending more",
                policy_hash=verdict.policy_hash,
                approvals_required=1,
                escalate_to=verdict.escalate_to,
            )

    def after(self, ctx: CallContext, tx: Transaction) -> None:
        if ctx.reservation is None:
            return
        if ctx.error is None:
            cost = ctx.cost
            self._ledger.settle(ctx.reservation, cost.usd, cost.tokens, tx=tx)
        elif _may_have_run(ctx):
            # A timeout or a 5xx from a tool that changes the world proves nothing: the effect
            # (and its cost) may have happened. Keep the hold as spent; never hand it back.
            held = Decimal(str(ctx.notes.get("reserved_usd", "0")))
            self._ledger.settle(ctx.reservation, held, 0, tx=tx)
            ctx.notes["spent_on_unknown_outcome"] = str(held)
        else:
            self._ledger.release(ctx.reservation, tx=tx)

    def abort(self, ctx: CallContext, tx: Transaction) -> None:
        if ctx.reservation is not None:
            self._ledger.release(ctx.reservation, tx=tx)

    def extend(self, ctx: CallContext, cost: Cost) -> None:
        if ctx.reservation is None:
            return
        try:
            total = self._ledger.extend(ctx.reservation, cost.usd, cost.tokens)
        except BudgetExceeded as exc:
            exc.context.setdefault("rule_id", f"budget:{exc.context.get('cap')}")
            raise
        ctx.notes["reserved_usd"] = str(total)


def _may_have_run(ctx: CallContext) -> bool:
    """Whether a failed call may still have had its effect (and cost): not for tools that only
    read, nor when the adapter proved the request never left (``context["executed"] is False``)."""
    tool = ctx.tool
    if tool is None or tool.spec.effect == "read":
        return False
    error = ctx.error
    context = getattr(error, "context", None)
    return not (isinstance(context, dict) and context.get("executed") is False)
