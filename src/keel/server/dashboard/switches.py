"""Kill switches: what is engaged at every level; engage (with a confirmation) and release."""

from __future__ import annotations

import dataclasses
from typing import get_args

from fastapi import Request
from fastapi.responses import Response

from keel.errors import KeelError
from keel.gateway.killswitch import KillScope
from keel.server.dashboard.site import Form, Site, Who
from keel.server.operators import may_switch, operator_actor

__all__ = ["register"]

KILL_LEVELS: tuple[str, ...] = get_args(KillScope)
_HERE = "/kill-switches"


def register(site: Site) -> None:
    keel = site.keel

    @site.screen(_HERE)
    def switches(request: Request, who: Who) -> Response:
        key = who[1]
        engaged = keel.kill_switches.list()
        if key.tenant is not None:
            engaged = [s for s in engaged if s.scope == "tenant" and s.target == key.tenant]
        return site.render(
            "switches.html",
            request,
            who,
            switches=[dataclasses.asdict(s) for s in engaged],
            can_flip=key.allows("operator"),
            levels=KILL_LEVELS,
            refresh=keel.config.kill_switch_refresh_seconds,
            page="switches",
        )

    def flip(engage: bool) -> None:
        @site.post(f"{_HERE}/{'engage' if engage else 'release'}")
        def post(request: Request, who: Who, form: Form) -> Response:
            key = who[1]
            if not key.allows("operator"):
                return site.back(_HERE, f"Your role ({key.role}) cannot flip switches.", error=True)
            scope, target, reason = form.get("scope"), form.get("target"), form.get("reason")
            if engage and form.get("confirm") != "yes":
                return site.back(_HERE, "Tick the confirmation to engage a switch.", error=True)
            if not reason:
                return site.back(_HERE, "A flip needs a reason (it is recorded).", error=True)
            try:
                may_switch(key, scope, target)
                act = keel.kill_switches.engage if engage else keel.kill_switches.release
                act(scope, target, reason=reason, actor=operator_actor(key))
            except KeelError as exc:
                return site.back(_HERE, f"Not done: {exc.message}", error=True)
            verb = "engaged" if engage else "released"
            return site.back(_HERE, f"Kill switch {scope} {target} {verb}.")

    flip(True)
    flip(False)
