"""Health: circuit breakers, approvals waiting by age, what calls came to over the last hour
and day, the model response cache, and runs by state.

Each figure comes from the reader ``/metrics`` uses, or from the audit log:

- breakers: ``CircuitBreakerGuard.states()`` (in this process's memory; global);
- approvals: ``keel.telemetry.metrics.open_approvals`` (per tenant);
- calls: ``keel.audit.summary.tally`` over the window's records (per tenant), and whether the
  newest executed calls failed by ``keel.telemetry.observer.call_outcome`` on their records;
- cache: ``ResponseCache.stats()`` (this process since it started; global);
- runs: ``RunStore.counts()``, of the key's tenant for a tenant key.
"""

from __future__ import annotations

import datetime as _dt
import urllib.parse
from collections import Counter
from typing import Any, Final, get_args

from fastapi import Request
from fastapi.responses import Response

from keel.app import App
from keel.audit import Record, query
from keel.audit.summary import Tally, tally
from keel.gateway import BreakerState
from keel.identity import OperatorKey
from keel.runtime.journal import RunStatus
from keel.server.dashboard.site import Site, Who, age
from keel.telemetry.metrics import OpenApprovals, open_approvals
from keel.telemetry.observer import call_outcome

__all__ = ["register"]

#: The executed calls whose records are read for failures: the newest of the last day.
FAILURE_SAMPLE: Final = 1000
_WINDOWS: Final = (("Last hour", _dt.timedelta(hours=1)), ("Last day", _dt.timedelta(days=1)))
RUN_STATUSES: Final[tuple[str, ...]] = get_args(RunStatus)
_ATTENTION: Final = frozenset({"failed", "parked", "escalated", "killed"})


def register(site: Site) -> None:
    keel = site.keel

    @site.screen("/health")
    def health(request: Request, who: Who) -> Response:
        key = who[1]
        now = keel.clock.now().astimezone(_dt.UTC)
        waiting = open_approvals(keel.store, now, tenant=key.tenant)
        stats = keel.model_cache.stats()
        looked = stats.hits + stats.misses
        return site.render(
            "health.html",
            request,
            who,
            now=now.isoformat(timespec="seconds"),
            breakers=[_breaker(b, now) for b in keel.breaker.states()],
            pending=_approvals(waiting["pending"], now),
            escalated=_approvals(waiting["escalated"], now),
            windows=_windows(keel, key, now),
            sample=FAILURE_SAMPLE,
            cache={
                "hits": stats.hits,
                "misses": stats.misses,
                "bypassed": stats.bypassed,
                "stored": stats.stored,
                "rate": _percent(stats.hits, looked),
            },
            runs=_runs(keel, key),
            page="health",
        )


def _breaker(state: BreakerState, now: _dt.datetime) -> dict[str, Any]:
    data = state.to_dict()
    data["status_text"] = state.status.replace("_", "-")
    data["error_rate_text"] = _percent(state.failures, state.calls)
    data["reopens_at"] = (
        (now + _dt.timedelta(seconds=state.retry_after_seconds)).strftime("%H:%M:%S")
        if state.status == "open"
        else None
    )
    data["opened"] = state.opened_at.isoformat(timespec="seconds") if state.opened_at else None
    return data


def _approvals(waiting: OpenApprovals, now: _dt.datetime) -> dict[str, Any]:
    return {
        "count": waiting.count,
        "under_hour": waiting.under_hour,
        "under_day": waiting.under_day,
        "over_day": waiting.over_day,
        "oldest": age(waiting.oldest.isoformat(), now) if waiting.oldest else None,
    }


def _windows(keel: App, key: OperatorKey, now: _dt.datetime) -> list[dict[str, Any]]:
    """Each window's tally, and failures among its newest executed calls (one read of up to
    ``FAILURE_SAMPLE`` records serves both windows: the hour's are the newest of the day's)."""
    longest = now - max(span for _, span in _WINDOWS)
    executed = query(
        keel.store, kind="call", since=longest, tenant=key.tenant, limit=FAILURE_SAMPLE
    )
    out = []
    for label, span in _WINDOWS:
        since = now - span
        counts = tally(keel.store, since, tenant=key.tenant)
        out.append(_window(label, since, counts, executed, key))
    return out


def _window(
    label: str, since: _dt.datetime, counts: Tally, executed: list[Record], key: OperatorKey
) -> dict[str, Any]:
    sample = [r for r in executed if r.ts >= since]
    complete = len(executed) < FAILURE_SAMPLE or executed[-1].ts < since
    outcomes = [call_outcome(r.entry.kind, r.entry.body) for r in sample]
    failed = outcomes.count("error")
    codes = Counter(
        str(r.entry.body["error"].get("code", "error"))
        for r, outcome in zip(sample, outcomes, strict=True)
        if outcome == "error" and isinstance(r.entry.body.get("error"), dict)
    )
    stamp = since.strftime("%Y-%m-%dT%H:%M:%S")

    def search(**filters: str) -> str:
        return "/audit?" + urllib.parse.urlencode({**filters, "since": stamp})

    return {
        "label": label,
        "since": stamp,
        "records": counts.records,
        "calls": counts.calls,
        "executed": counts.executed,
        "refused": counts.refused,
        "held": counts.held,
        "answered": counts.answered,
        "control": counts.control,
        "capped": counts.capped,
        "deny_rate": _percent(counts.refused, counts.calls),
        "sampled": len(sample),
        "sample_complete": complete,
        "failed": failed,
        "error_rate": _percent(failed, len(sample)),
        "codes": codes.most_common(5),
        "links": {
            "executed": search(kind="call"),
            "refused": search(decision="deny"),
            "held": search(decision="require_approval"),
            "all": search(),
        },
        "tenant": key.tenant,
    }


def _runs(keel: App, key: OperatorKey) -> list[dict[str, Any]]:
    """Runs by state: all of them for a key of every tenant, else the key's tenant's."""
    counts = keel.runtime.runs.counts(key.tenant)
    found = {status: counts.get(status, 0) for status in RUN_STATUSES}
    return [
        {
            "status": status,
            "count": n,
            "attention": status in _ATTENTION and n > 0,
            "link": f"/runs?status={status}",
        }
        for status, n in found.items()
    ]


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "—"
