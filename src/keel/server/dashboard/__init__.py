"""The dashboard: server-rendered screens for operators at ``/`` on ``keel serve``.

Screens call the same services as the REST routes (``keel.approvals``, ``keel.runtime`` …): no
business rule lives in a template. An operator logs in with an API key, exchanged for a signed
session cookie (``keel.server.dashboard.session``: HttpOnly, SameSite=Strict, Secure over
HTTPS); every state-changing form carries the session's CSRF token, and every action checks the
key's role and tenant, like the REST routes do.

Screens so far: the approvals queue (approve / deny), the runs list with a run's steps, and
kill switches (engage with a confirmation, release; every flip recorded), and policies with
"explain this call". The other screens of issue 8 (spend, audit, health) come next.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from keel.app import App
from keel.approvals import Operator
from keel.errors import AuthenticationError, KeelError, PayloadTooLargeError
from keel.gateway.killswitch import KillScope
from keel.identity import OperatorKey
from keel.runtime.journal import RunStatus
from keel.server.dashboard.session import COOKIE, Session, Sessions
from keel.server.operators import may_switch, operator_actor
from keel.server.policies import explain_call, visible_policies

__all__ = ["mount_dashboard"]

_HERE = Path(__file__).parent
_MAX_FORM = 16 * 1024
_WAITING = ("pending", "escalated")
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
KILL_LEVELS: tuple[str, ...] = get_args(KillScope)


def _age(created: str, now: _dt.datetime) -> str:
    try:
        seconds = (now - _dt.datetime.fromisoformat(created)).total_seconds()
    except ValueError:
        return "?"
    if seconds < 90:
        return f"{max(0, int(seconds))} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


class _Form:
    """An urlencoded form body, size-capped."""

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    @classmethod
    async def read(cls, request: Request) -> _Form:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM:
                raise PayloadTooLargeError(f"the form is larger than {_MAX_FORM} bytes")
        parsed = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
        return cls({k: v[0] for k, v in parsed.items() if v})

    def get(self, name: str, default: str = "") -> str:
        return self._fields.get(name, default).strip()


def mount_dashboard(api: FastAPI, keel: App) -> None:
    """Serve the dashboard's screens and static files on ``api``."""
    sessions = Sessions(Path(keel.home) / "dashboard.key")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    api.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    api.include_router(_router(keel, sessions, env))


def _router(keel: App, sessions: Sessions, env: jinja2.Environment) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def current(request: Request) -> tuple[Session, OperatorKey] | None:
        session = sessions.read(request.cookies.get(COOKIE))
        if session is None:
            return None
        try:
            return session, keel.operator_keys.live(session.key_id)
        except AuthenticationError:
            return None

    def render(
        name: str, request: Request, who: tuple[Session, OperatorKey] | None, **context: Any
    ) -> HTMLResponse:
        session, key = who if who else (None, None)
        flash = request.query_params.get("msg")
        page = env.get_template(name).render(
            key=key,
            csrf=sessions.csrf(session) if session else "",
            message=flash[:300] if flash else None,
            message_kind="error" if request.query_params.get("err") else "ok",
            **context,
        )
        return HTMLResponse(page, headers=_SECURITY_HEADERS)

    def to_login(request: Request) -> RedirectResponse:
        target = urllib.parse.quote(request.url.path, safe="/")
        return RedirectResponse(f"/login?next={target}", status_code=303)

    def back(path: str, message: str, *, error: bool = False) -> RedirectResponse:
        query = {"msg": message, **({"err": "1"} if error else {})}
        return RedirectResponse(f"{path}?{urllib.parse.urlencode(query)}", status_code=303)

    def screen(
        page: str,
    ) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """A GET screen: logged-in only (else to the login form)."""

        def wrap(fn: Callable[..., Response]) -> Callable[..., Response]:
            def view(request: Request) -> Response:
                who = current(request)
                if who is None:
                    return to_login(request)
                return fn(request, who)

            view.__name__ = fn.__name__
            router.add_api_route(page, view, methods=["GET"], response_class=HTMLResponse)
            return fn

        return wrap

    async def action(request: Request) -> tuple[tuple[Session, OperatorKey], _Form] | Response:
        """A POST from a form: logged in, with the session's CSRF token."""
        who = current(request)
        if who is None:
            return to_login(request)
        form = await _Form.read(request)
        if not sessions.csrf_ok(who[0], form.get("csrf")):
            return HTMLResponse("the form's CSRF token is missing or wrong", status_code=403)
        return who, form

    @router.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        return RedirectResponse("/approvals" if current(request) else "/login", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        target = request.query_params.get("next", "/approvals")
        return render("login.html", request, None, next=_local(target), page="login")

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await _Form.read(request)
        try:
            key = keel.operator_keys.check(form.get("key"))
        except AuthenticationError as exc:
            keel.record_refusal(exc, stage="dashboard-login", route="/login")
            return back("/login", "That key is missing, unknown, revoked or wrong.", error=True)
        response = RedirectResponse(_local(form.get("next", "/approvals")), status_code=303)
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

    @router.post("/logout", response_class=HTMLResponse)
    async def logout(request: Request) -> Response:
        checked = await action(request)
        if isinstance(checked, Response):
            return checked
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @screen("/approvals")
    def approvals(request: Request, who: tuple[Session, OperatorKey]) -> Response:
        _session, key = who
        now = keel.clock.now()
        rows = []
        for status in _WAITING:
            for record in keel.approvals.list(status, key.tenant, 200):  # type: ignore[arg-type]
                data = record.to_dict()
                data["age"] = _age(data["created_at"], now)
                data["deciders"] = list(record.deciders())
                data["arguments_json"] = json.dumps(data["arguments"], indent=2, sort_keys=True)
                rows.append(data)
        rows.sort(key=lambda r: r["created_at"])
        return render(
            "approvals.html",
            request,
            who,
            approvals=rows,
            can_decide=key.allows("approver"),
            page="approvals",
        )

    @screen("/runs")
    def runs(request: Request, who: tuple[Session, OperatorKey]) -> Response:
        _session, key = who
        workflow = request.query_params.get("workflow") or None
        status = request.query_params.get("status") or None
        if status is not None and status not in RUN_STATUSES:
            status = None
        limit = 200
        records = keel.runtime.runs.find(
            status=status, workflow=workflow, tenant=key.tenant, limit=limit
        )
        return render(
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

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(run_id: str, request: Request) -> Response:
        who = current(request)
        if who is None:
            return to_login(request)
        key = who[1]
        try:
            record = keel.runtime.get(run_id)
        except KeelError:
            record = None
        if record is None or not key.covers(record.tenant):
            return back("/runs", f"No run {run_id[:80]}.", error=True)
        data = record.to_dict()
        data["error_json"] = json.dumps(data["error"], indent=2) if data["error"] else ""
        steps = [step.to_dict() for step in keel.runtime.steps(run_id)]
        return render("run.html", request, who, run=data, steps=steps, page="runs")

    @screen("/kill-switches")
    def switches(request: Request, who: tuple[Session, OperatorKey]) -> Response:
        _session, key = who
        engaged = keel.kill_switches.list()
        if key.tenant is not None:
            engaged = [s for s in engaged if s.scope == "tenant" and s.target == key.tenant]
        return render(
            "switches.html",
            request,
            who,
            switches=[dataclasses.asdict(s) for s in engaged],
            can_flip=key.allows("operator"),
            levels=KILL_LEVELS,
            refresh=keel.config.kill_switch_refresh_seconds,
            page="switches",
        )

    def flip(engage: bool) -> Callable[..., Any]:
        async def post(request: Request) -> Response:
            checked = await action(request)
            if isinstance(checked, Response):
                return checked
            (_session, key), form = checked
            here = "/kill-switches"
            if not key.allows("operator"):
                return back(here, f"Your role ({key.role}) cannot flip switches.", error=True)
            scope, target, reason = form.get("scope"), form.get("target"), form.get("reason")
            if engage and form.get("confirm") != "yes":
                return back(here, "Tick the confirmation to engage a switch.", error=True)
            if not reason:
                return back(here, "A flip needs a reason (it is recorded).", error=True)
            try:
                may_switch(key, scope, target)
                act = keel.kill_switches.engage if engage else keel.kill_switches.release
                act(scope, target, reason=reason, actor=operator_actor(key))
            except KeelError as exc:
                return back(here, f"Not done: {exc.message}", error=True)
            verb = "engaged" if engage else "released"
            return back(here, f"Kill switch {scope} {target} {verb}.")

        return post

    router.add_api_route("/kill-switches/engage", flip(True), methods=["POST"])
    router.add_api_route("/kill-switches/release", flip(False), methods=["POST"])

    _EXAMPLE = json.dumps(
        {"tool": "billing.refund", "arguments": {"amount": 250}, "agent": "a", "tenant": "t"}
    )

    def policies_page(
        request: Request, who: tuple[Session, OperatorKey], **extra: Any
    ) -> HTMLResponse:
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
        return render("policies.html", request, who, policies=summaries, page="policies", **context)

    @screen("/policies")
    def policies(request: Request, who: tuple[Session, OperatorKey]) -> Response:
        return policies_page(request, who)

    @router.post("/policies/explain", response_class=HTMLResponse)
    async def explain(request: Request) -> Response:
        checked = await action(request)
        if isinstance(checked, Response):
            return checked
        who, form = checked
        text = form.get("call")
        try:
            explanation = explain_call(keel, who[1], text.encode("utf-8"))
        except KeelError as exc:
            return back("/policies", f"Cannot explain that call: {exc.message}", error=True)
        return policies_page(request, who, call_text=text, explanation=explanation)

    def decide(verb: str) -> Callable[..., Any]:
        async def post(approval_id: str, request: Request) -> Response:
            checked = await action(request)
            if isinstance(checked, Response):
                return checked
            (_session, key), form = checked
            if not key.allows("approver"):
                return back("/approvals", f"Your role ({key.role}) cannot decide.", error=True)
            operator = Operator(key.name, frozenset({*key.labels, key.role}), key.tenant)
            try:
                if verb == "approve":
                    keel.approvals.approve(approval_id, operator, note=form.get("note"))
                else:
                    reason = form.get("reason")
                    if not reason:
                        return back("/approvals", "A denial needs a reason.", error=True)
                    keel.approvals.deny(approval_id, operator, reason=reason)
            except KeelError as exc:
                return back("/approvals", f"Not done: {exc.message}", error=True)
            done = "approved" if verb == "approve" else "denied"
            return back("/approvals", f"{approval_id} {done}.")

        return post

    router.add_api_route("/approvals/{approval_id}/approve", decide("approve"), methods=["POST"])
    router.add_api_route("/approvals/{approval_id}/deny", decide("deny"), methods=["POST"])
    return router


def _local(target: str) -> str:
    """Only a path on this server (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/approvals"
    return target


_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
