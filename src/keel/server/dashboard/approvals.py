"""The approvals queue: what waits for a human, with everything needed to decide it."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import Response

from keel.approvals import Operator
from keel.errors import KeelError
from keel.server.dashboard.site import Form, Site, Who, age

__all__ = ["register"]

_WAITING = ("pending", "escalated")
_CONTEXT_STEPS = 8


def register(site: Site) -> None:
    keel = site.keel

    @site.screen("/approvals")
    def approvals(request: Request, who: Who) -> Response:
        key = who[1]
        now = keel.clock.now()
        records = [
            record
            for status in _WAITING
            for record in keel.approvals.list(status, key.tenant, 200)  # type: ignore[arg-type]
        ]
        steps = keel.runtime.runs.steps_of(r.run_id for r in records if r.run_id)
        rows = []
        for record in records:
            data = record.to_dict()
            data["age"] = age(data["created_at"], now)
            data["deciders"] = list(record.deciders())
            data["arguments_json"] = json.dumps(data["arguments"], indent=2, sort_keys=True)
            so_far = steps.get(record.run_id or "", [])
            data["context"] = [step.to_dict() for step in so_far[-_CONTEXT_STEPS:]]
            rows.append(data)
        rows.sort(key=lambda r: r["created_at"])
        return site.render(
            "approvals.html",
            request,
            who,
            approvals=rows,
            can_decide=key.allows("approver"),
            live=10,
            page="approvals",
        )

    def decide(verb: str) -> None:
        @site.post(f"/approvals/{{approval_id}}/{verb}")
        def post(request: Request, who: Who, form: Form, approval_id: str) -> Response:
            key = who[1]
            if not key.allows("approver"):
                return site.back("/approvals", f"Your role ({key.role}) cannot decide.", error=True)
            operator = Operator(key.name, frozenset({*key.labels, key.role}), key.tenant)
            try:
                if verb == "approve":
                    keel.approvals.approve(approval_id, operator, note=form.get("note"))
                else:
                    reason = form.get("reason")
                    if not reason:
                        return site.back("/approvals", "A denial needs a reason.", error=True)
                    keel.approvals.deny(approval_id, operator, reason=reason)
            except KeelError as exc:
                return site.back("/approvals", f"Not done: {exc.message}", error=True)
            done = "approved" if verb == "approve" else "denied"
            return site.back("/approvals", f"{approval_id} {done}.")

    decide("approve")
    decide("deny")
