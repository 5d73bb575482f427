"""The dashboard's frame: sessions, templates, forms and the two kinds of handler.

A *screen* is a GET page for a logged-in operator (others go to the login form); an *action* is
a POST from one of the dashboard's own forms: logged in and carrying the session's CSRF token.
Screens call the same services as the REST routes; no business rule lives in a template.
"""

from __future__ import annotations

import datetime as _dt
import urllib.parse
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from keel.app import App
from keel.errors import AuthenticationError, PayloadTooLargeError
from keel.identity import OperatorKey
from keel.server.dashboard.session import COOKIE, Session, Sessions

__all__ = ["Form", "Site", "Who", "age", "local_path", "usd"]

HERE = Path(__file__).parent
_MAX_FORM = 16 * 1024

Who = tuple[Session, OperatorKey]
"""The logged-in session and the live operator key behind it."""

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def age(created: str, now: _dt.datetime) -> str:
    """``created`` (ISO 8601) as a short age: "40 s", "12 min", "3.5 h", "2.0 d"."""
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


def local_path(target: str, default: str = "/approvals") -> str:
    """Only a path on this server (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def usd(value: Decimal | None) -> str:
    """Dollars: cents from a dollar up (``$1,234.57``), every significant digit to the
    micro-dollar below (``$0.25``, ``$0.000042``); ``—`` for no value."""
    if value is None:
        return "—"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    whole, _, fraction = f"{value:.6f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


class Form:
    """An urlencoded form body, size-capped."""

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    @classmethod
    async def read(cls, request: Request) -> Form:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM:
                raise PayloadTooLargeError(f"the form is larger than {_MAX_FORM} bytes")
        parsed = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
        return cls({k: v[0] for k, v in parsed.items() if v})

    def get(self, name: str, default: str = "") -> str:
        return self._fields.get(name, default).strip()


class Site:
    """What every screen module registers on: the App, sessions, templates and the router."""

    def __init__(self, keel: App, sessions: Sessions) -> None:
        self.keel = keel
        self.sessions = sessions
        self.router = APIRouter(include_in_schema=False)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["usd"] = usd

    def current(self, request: Request) -> Who | None:
        """The logged-in operator, or None (no cookie, a bad one, or a revoked key)."""
        session = self.sessions.read(request.cookies.get(COOKIE))
        if session is None:
            return None
        try:
            return session, self.keel.operator_keys.live(session.key_id)
        except AuthenticationError:
            return None

    def render(self, name: str, request: Request, who: Who | None, **context: Any) -> HTMLResponse:
        session, key = who if who else (None, None)
        flash = request.query_params.get("msg")
        page = self.env.get_template(name).render(
            key=key,
            csrf=self.sessions.csrf(session) if session else "",
            message=flash[:300] if flash else None,
            message_kind="error" if request.query_params.get("err") else "ok",
            **context,
        )
        return HTMLResponse(page, headers=SECURITY_HEADERS)

    @staticmethod
    def to_login(request: Request) -> RedirectResponse:
        target = urllib.parse.quote(request.url.path, safe="/")
        return RedirectResponse(f"/login?next={target}", status_code=303)

    @staticmethod
    def back(path: str, message: str, *, error: bool = False) -> RedirectResponse:
        """Back to ``path`` (a local page), with a message shown at its top."""
        query = {"msg": message, **({"err": "1"} if error else {})}
        return RedirectResponse(f"{path}?{urllib.parse.urlencode(query)}", status_code=303)

    def screen(self, path: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """A GET screen at ``path``: ``fn(request, who, **path_params)``; logged-in only."""

        def wrap(fn: Callable[..., Response]) -> Callable[..., Response]:
            def view(request: Request) -> Response:
                who = self.current(request)
                if who is None:
                    return self.to_login(request)
                return fn(request, who, **request.path_params)

            view.__name__ = fn.__name__
            self.router.add_api_route(path, view, methods=["GET"], response_class=HTMLResponse)
            return fn

        return wrap

    async def action(self, request: Request) -> tuple[Who, Form] | Response:
        """A POST from a form: logged in, with the session's CSRF token (else a response)."""
        who = self.current(request)
        if who is None:
            return self.to_login(request)
        form = await Form.read(request)
        if not self.sessions.csrf_ok(who[0], form.get("csrf")):
            return HTMLResponse("the form's CSRF token is missing or wrong", status_code=403)
        return who, form

    def post(self, path: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """A state-changing form handler at ``path``: ``fn(request, who, form, **path_params)``,
        reached only with a live session and the right CSRF token."""

        def wrap(fn: Callable[..., Response]) -> Callable[..., Response]:
            async def handler(request: Request) -> Response:
                checked = await self.action(request)
                if isinstance(checked, Response):
                    return checked
                who, form = checked
                return await run_in_threadpool(fn, request, who, form, **request.path_params)

            handler.__name__ = fn.__name__
            self.router.add_api_route(path, handler, methods=["POST"], response_class=HTMLResponse)
            return fn

        return wrap
