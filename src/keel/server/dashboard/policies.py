"""Policies: the active documents with their hashes, and "explain this call"."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from keel.errors import KeelError
from keel.server.dashboard.site import Form, Site, Who
from keel.server.policies import explain_call, visible_policies

__all__ = ["register"]

_EXAMPLE = json.dumps(
    {"tool": "billing.refund", "arguments": {"amount": 250}, "agent": "a", "tenant": "t"}
)


def register(site: Site) -> None:
    keel = site.keel

    def page(request: Request, who: Who, **extra: Any) -> HTMLResponse:
        summaries = [
            {
                "name": p.name,
                "version": p.version,
                "hash": p.hash,
                "source": p.source,
                "rule_count": len(p.document.rule_ids()),
                "shadow": p.shadow,
            }
            for p in visible_policies(keel, who[1])
        ]
        context = {"call_text": _EXAMPLE, "explanation": None, **extra}
        return site.render(
            "policies.html", request, who, policies=summaries, page="policies", **context
        )

    @site.screen("/policies")
    def policies(request: Request, who: Who) -> Response:
        return page(request, who)

    @site.post("/policies/explain")
    def explain(request: Request, who: Who, form: Form) -> Response:
        text = form.get("call")
        try:
            explanation = explain_call(keel, who[1], text.encode("utf-8"))
        except KeelError as exc:
            return site.back("/policies", f"Cannot explain that call: {exc.message}", error=True)
        return page(request, who, call_text=text, explanation=explanation)
