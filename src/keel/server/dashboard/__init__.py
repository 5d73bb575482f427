"""The dashboard: server-rendered screens for operators at ``/`` on ``keel serve``.

Screens call the same services as the REST routes (``keel.approvals``, ``keel.runtime`` …): no
business rule lives in a template. An operator logs in with an API key, exchanged for a signed
session cookie (``keel.server.dashboard.session``: HttpOnly, SameSite=Strict, Secure over
HTTPS); every state-changing form carries the session's CSRF token, and every action checks the
key's role and tenant, like the REST routes do.

One module a screen, each with a ``register(site)``: approvals, runs, spend, kill switches,
audit, policies, health. The frame they share (sessions, templates, forms) is ``site``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from keel.app import App
from keel.errors import AuthenticationError
from keel.server.dashboard import approvals, audit, health, policies, runs, spend, switches
from keel.server.dashboard.session import COOKIE, Sessions
from keel.server.dashboard.site import HERE, Form, Site, Who, local_path

__all__ = ["mount_dashboard"]


def mount_dashboard(api: FastAPI, keel: App) -> None:
    """Serve the dashboard's screens and static files on ``api``."""
    site = Site(keel, Sessions(Path(keel.home) / "dashboard.key"))
    _login(site)
    for screen in (approvals, runs, spend, switches, audit, policies, health):
        screen.register(site)
    api.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    api.include_router(site.router)


def _login(site: Site) -> None:
    router, sessions = site.router, site.sessions

    @router.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        target = "/approvals" if site.current(request) else "/login"
        return RedirectResponse(target, status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        target = request.query_params.get("next", "/approvals")
        return site.render("login.html", request, None, next=local_path(target), page="login")

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await Form.read(request)
        try:
            key = await run_in_threadpool(site.keel.operator_keys.check, form.get("key"))
        except AuthenticationError as exc:
            await run_in_threadpool(
                site.keel.record_refusal, exc, stage="dashboard-login", route="/login"
            )
            return site.back(
                "/login", "That key is missing, unknown, revoked or wrong.", error=True
            )
        response = RedirectResponse(local_path(form.get("next", "/approvals")), status_code=303)
        response.set_cookie(
            COOKIE,
            sessions.issue(key.key_id),
            max_age=sessions.ttl,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @site.post("/logout")
    def logout(request: Request, who: Who, form: Form) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response
