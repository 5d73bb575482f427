"""Runs: the list with filters (workflow, tenant, state, time) and one run's timeline."""

from __future__ import annotations

import datetime as _dt
import json
import urllib.parse
from typing import get_args

from fastapi import Request
from fastapi.responses import Response

from keel.audit import query
from keel.errors import KeelError
from keel.runtime.journal import RunStatus
from keel.server.dashboard import timeline
from keel.server.dashboard.site import Site, Who

__all__ = ["RUN_STATUSES", "WINDOWS", "register"]

RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
#: The time filters offered: label → how far back from now.
WINDOWS: dict[str, _dt.timedelta] = {
    "1h": _dt.timedelta(hours=1),
    "24h": _dt.timedelta(days=1),
    "7d": _dt.timedelta(days=7),
    "30d": _dt.timedelta(days=30),
}
_PAGE = 100
#: States in which a run can still change by itself (its page refreshes itself).
_ACTIVE = frozenset({"pending", "running", "waiting"})
_RUN_RECORDS = 2000


def register(site: Site) -> None:
    keel = site.keel

    @site.screen("/runs")
    def runs(request: Request, who: Who) -> Response:
        key = who[1]
        params = request.query_params
        workflow = (params.get("workflow") or "")[:200] or None
        status = params.get("status") or None
        if status is not None and status not in RUN_STATUSES:
            return site.back("/runs", f"Unknown state {status[:40]!r}.", error=True)
        tenant = key.tenant or (params.get("tenant") or "")[:200] or None
        window = params.get("window") or ""
        if window and window not in WINDOWS:
            return site.back("/runs", f"Unknown time window {window[:20]!r}.", error=True)
        since = keel.clock.now() - WINDOWS[window] if window else None
        before = _cursor(params.get("before"))
        records = keel.runtime.runs.find(
            status=status,
            workflow=workflow,
            tenant=tenant,
            since=since,
            before=before,
            limit=_PAGE,
        )
        chosen = {
            "workflow": workflow or "",
            "status": status or "",
            "tenant": "" if key.tenant else tenant or "",
            "window": window,
        }
        older = None
        if len(records) == _PAGE:
            stamp, run_id = records[-1].cursor()
            query_ = {k: v for k, v in chosen.items() if v}
            older = "/runs?" + urllib.parse.urlencode({**query_, "before": f"{stamp}|{run_id}"})
        return site.render(
            "runs.html",
            request,
            who,
            runs=[r.to_dict() for r in records],
            workflows=sorted(keel.workflows),
            statuses=RUN_STATUSES,
            windows=list(WINDOWS),
            chosen=chosen,
            paged=before is not None,
            older=older,
            limit=_PAGE,
            page="runs",
        )

    @site.screen("/runs/{run_id}")
    def run(request: Request, who: Who, run_id: str) -> Response:
        key = who[1]
        try:
            record = keel.runtime.get(run_id)
        except KeelError:
            record = None
        if record is None or not key.covers(record.tenant):
            return site.back("/runs", f"No run {run_id[:80]}.", error=True)
        data = record.to_dict()
        data["error_json"] = json.dumps(data["error"], indent=2) if data["error"] else ""
        records = query(keel.store, run_id=run_id, limit=_RUN_RECORDS)
        steps, events, total = timeline.build(keel.runtime.steps(run_id), records)
        return site.render(
            "run.html",
            request,
            who,
            run=data,
            steps=steps,
            events=events,
            total_usd=total,
            truncated=len(records) == _RUN_RECORDS,
            record_limit=_RUN_RECORDS,
            live=3 if record.status in _ACTIVE else 0,
            page="runs",
        )


def _cursor(text: str | None) -> tuple[str, str] | None:
    """``created_at|run_id`` from an "older" link; anything else starts at the newest."""
    if not text or len(text) > 300 or "|" not in text:
        return None
    stamp, run_id = text.split("|", 1)
    try:
        _dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return stamp, run_id
