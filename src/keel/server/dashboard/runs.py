"""Runs: the list with filters, and one run's timeline."""

from __future__ import annotations

import json
from typing import get_args

from fastapi import Request
from fastapi.responses import Response

from keel.errors import KeelError
from keel.runtime.journal import RunStatus
from keel.server.dashboard.site import Site, Who

__all__ = ["register"]

RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)


def register(site: Site) -> None:
    keel = site.keel

    @site.screen("/runs")
    def runs(request: Request, who: Who) -> Response:
        key = who[1]
        workflow = request.query_params.get("workflow") or None
        status = request.query_params.get("status") or None
        if status is not None and status not in RUN_STATUSES:
            status = None
        limit = 200
        records = keel.runtime.runs.find(
            status=status, workflow=workflow, tenant=key.tenant, limit=limit
        )
        return site.render(
            "runs.html",
            request,
            who,
            runs=[r.to_dict() for r in records],
            workflows=keel.workflows,
            statuses=RUN_STATUSES,
            workflow=workflow or "",
            status=status or "",
            limit=limit,
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
        steps = [step.to_dict() for step in keel.runtime.steps(run_id)]
        return site.render("run.html", request, who, run=data, steps=steps, page="runs")
