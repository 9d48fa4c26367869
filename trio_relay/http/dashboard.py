"""The dashboard's routes: the login page, the one-time login, the page and its files.

Without a session nothing is served but the login page (``/`` and ``/login`` answer it,
every file answers 401). ``/login?code=`` redeems a code from ``trio-relay dashboard``
and sets the session cookie (HttpOnly, SameSite=Strict); ``POST /logout`` ends it. The page
then talks to the broker over ``/control`` (native.py) with that cookie. Every answer
forbids framing and sends no referrer (the login URL carries a code).
"""

from __future__ import annotations

import html
from importlib import resources
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from trio_relay.http.guard import Refused
from trio_relay.http.sessions import COOKIE, SESSION_TTL, Session

if TYPE_CHECKING:
    from trio_relay.http.site import Site

STATIC = resources.files("trio_relay.http") / "static"
#: The files the page loads, and their types: nothing else under static/ is served.
FILES = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "vendor/xterm/xterm.js": "text/javascript",
    "vendor/xterm/xterm.css": "text/css",
    "vendor/addon-fit/addon-fit.js": "text/javascript",
}
HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        # xterm.js styles its DOM renderer with a <style> element of its own
        "default-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self';"
        " img-src 'self' data:; frame-ancestors 'none'"
    ),
}

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trio-relay: log in</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>trio-relay</h1>
<p>{message}</p>
<p>Run <code>trio-relay dashboard</code> where the broker runs: it prints (and opens) a
one-time login link.</p>
</body></html>
"""


def routes(site: Site) -> list[BaseRoute]:
    async def index(request: Request) -> Response:
        session = _session(site, request)
        if session is None:
            return _login_page("You are not logged in.", 200)
        page = (STATIC / "index.html").read_text()
        return HTMLResponse(page.replace("{{csrf}}", session.csrf), headers=HEADERS)

    async def login(request: Request) -> Response:
        site.guard.check_browser(_headers(request))
        session = site.sessions.redeem(request.query_params.get("code", ""))
        if session is None:
            return _login_page("This login link was used already, or it expired.", 401)
        response = RedirectResponse("/", status_code=303, headers=HEADERS)
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(SESSION_TTL),
            path="/",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        caller = await site.caller(request)
        if caller.session is not None:
            site.sessions.end(caller.session.id)
        response = RedirectResponse("/", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def static(request: Request) -> Response:
        path = request.path_params["path"]
        if _session(site, request) is None:
            raise Refused(401, "unauthorized", "log in first: run `trio-relay dashboard`")
        kind = FILES.get(path)
        if kind is None:
            raise Refused(404, "not_found", f"no file {path!r}")
        body = (STATIC / path).read_bytes()
        return Response(body, media_type=kind, headers=HEADERS)

    return [
        Route("/", index, methods=["GET"]),
        Route("/login", login, methods=["GET"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/static/{path:path}", static, methods=["GET"]),
    ]


def _session(site: Site, request: Request) -> Session | None:
    site.guard.check_browser(_headers(request))
    return site.sessions.find(request.cookies.get(COOKIE))


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def _login_page(message: str, status: int) -> Response:
    body = LOGIN_PAGE.format(message=html.escape(message))
    return HTMLResponse(body, status_code=status, headers=HEADERS)
