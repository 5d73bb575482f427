"""Budgets and rate limits: reserve before a call, settle after, never overspend.

- :class:`Ledger` (``keel.ledger.ledger``): caps on money, tokens and calls per call, run,
  workflow, agent, tenant, UTC day and argument value; atomic reservations, settlement,
  release, expiry of stale holds, burn alerts, reports (counters; spend in total or grouped by
  tenant, agent, workflow, run or target).
- :class:`RateLimiter` (``keel.ledger.ratelimit``): token buckets per agent, tenant, tool and
  model, shared through the store.

``keel.ledger`` reads no policy: caps and limits arrive as plain data (:class:`Cap`,
:class:`RateLimit`). Mapping from ``keel.policy`` (``PolicySet.limits_for(principal, workflow,
kind, target)`` returns the specs that apply; :meth:`Cap.from_spec` and
:meth:`RateLimit.from_spec` convert them structurally, without importing policy)::

    CapSpec(id, per, window, max_usd, max_tokens, max_calls, sum_argument, alert_at)
      -> Cap(id, per=per, window=window, limit_usd=max_usd, limit_tokens=max_tokens,
             limit_calls=max_calls, sum_argument=sum_argument, alert_fraction=alert_at)
    RateLimitSpec(id, scope, requests, tokens, burst, interval_seconds)
      -> RateLimit(id, scope, timedelta(seconds=interval_seconds), requests=requests,
                   tokens=tokens, burst=burst)

(``tools``/``models`` of a spec are already applied by ``limits_for``.) Convert once per policy
set and target (``limits_for`` answers are cached and immutable), not per call.

(ids from ``limits_for`` are already qualified: ``<policy>#<id>``, or ``task`` /
``task-tool-calls`` for the per-task caps ``spending_limit_usd``, ``max_tokens_per_task`` and
``max_tool_calls_per_task``.)

Money is exact: ``Decimal`` USD in and out, integer micro-dollars in the store.
"""

from __future__ import annotations

from keel.ledger._money import MAX_AMOUNT_USD, MICROS_PER_USD
from keel.ledger._spend import SPEND_GROUPS, SpendFilter, SpendGroup
from keel.ledger.caps import (
    DIMENSIONS,
    WINDOWS,
    Cap,
    CapSpecLike,
    ReservationRequest,
    Window,
    argument_amount,
    argument_key,
)
from keel.ledger.forecast import (
    MIN_OBSERVATIONS,
    Backtest,
    Calibration,
    Forecast,
    InsufficientHistory,
    MixedWorkflows,
    RunObservation,
    Scenario,
    backtest,
    calibrate,
    forecast,
    render_backtest,
    render_forecast,
)
from keel.ledger.ledger import BurnAlertCaps, Ledger
from keel.ledger.ratelimit import (
    BucketKey,
    BucketState,
    RateLimit,
    RateLimiter,
    RateLimitSpecLike,
    RateScope,
    bucket_keys,
)
from keel.ledger.records import (
    BudgetLine,
    BurnAlert,
    ExpiredReservation,
    Reservation,
    Settlement,
    SettlementOutcome,
    Spend,
)

__all__ = [
    "DIMENSIONS",
    "MAX_AMOUNT_USD",
    "MICROS_PER_USD",
    "MIN_OBSERVATIONS",
    "SPEND_GROUPS",
    "WINDOWS",
    "Backtest",
    "BucketKey",
    "BucketState",
    "BudgetLine",
    "BurnAlert",
    "BurnAlertCaps",
    "Calibration",
    "Cap",
    "CapSpecLike",
    "ExpiredReservation",
    "Forecast",
    "InsufficientHistory",
    "Ledger",
    "MixedWorkflows",
    "RateLimit",
    "RateLimitSpecLike",
    "RateLimiter",
    "RateScope",
    "Reservation",
    "ReservationRequest",
    "RunObservation",
    "Scenario",
    "Settlement",
    "SettlementOutcome",
    "Spend",
    "SpendFilter",
    "SpendGroup",
    "Window",
    "argument_amount",
    "argument_key",
    "backtest",
    "bucket_keys",
    "calibrate",
    "forecast",
    "render_backtest",
    "render_forecast",
]
