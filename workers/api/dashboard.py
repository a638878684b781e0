"""`/`: the operations dashboard, its sign-in, its assets, and the JSON it reads.

A browser sends no bearer header when it navigates, so the page is opened by signing in:
the operator pastes an ops or admin token once, and it is kept in an HttpOnly,
SameSite=Strict cookie that only this site's own requests carry. The token never appears
in a URL (so not in access logs or history) and the page's script cannot read it. The
JSON route takes the cookie or the usual bearer header, so scripts can read it too.

Every asset is served from this package (`static/`); the page's Content-Security-Policy
forbids anything from elsewhere, so a missing asset fails loudly instead of being
fetched from a CDN.
"""

from __future__ import annotations

import html
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from pipeline.access.tokens import Caller, authenticate
from pipeline.db import utcnow
from pipeline.errors import LabdispatchError
from pipeline.ledger.models import Circuit
from pipeline.settings import Settings
from pipeline.stats.dashboard import dashboard_snapshot
from workers.api.auth import SESSION_COOKIE, require, sessions_of
from workers.queues import queue_depths

router = APIRouter()

#: Roles that may open the dashboard (admin may do anything).
PAGE_ROLES = frozenset({"ops", "admin"})

#: The files under `static/` the page may load, with their media types; nothing else is
#: served from there.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

#: A sign-in form posts one token: anything much longer is not one.
MAX_FORM_BYTES = 4096

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: Headers of every HTML answer: nothing from elsewhere, never framed, never cached (it
#: shows live figures, or a form that must not be replayed from a cache).
PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@router.get("/v1/dashboard", tags=["dashboard"], summary="The operations dashboard's figures")
def dashboard_figures(
    request: Request,
    caller: Caller = Depends(require("ops", cookie=True)),  # noqa: B008
) -> JSONResponse:
    """Throughput, deliveries by state, stage backlogs, slowest destinations, recent
    rejects and adoption from the ledger; queue depths from the broker (`broker.up` false
    and no queues when it does not answer); circuits that are not closed."""
    settings: Settings = request.app.state.settings
    with sessions_of(request)() as session:
        figures: dict[str, Any] = dashboard_snapshot(session, utcnow()).as_json()
        figures["circuits"] = open_circuits(session)
    figures["queues"], figures["broker"] = _broker_figures(settings)
    return JSONResponse(figures, headers={"Cache-Control": "no-store"})


def open_circuits(session: Session) -> list[dict[str, Any]]:
    """Destinations whose circuit a worker last reported open or half-open."""
    rows = session.execute(
        select(Circuit.destination, Circuit.state, Circuit.open_until)
        .where(Circuit.state != "closed")
        .order_by(Circuit.destination)
    ).all()
    return [
        {
            "destination": row.destination,
            "state": row.state,
            "open_until": row.open_until.isoformat() if row.open_until else None,
        }
        for row in rows
    ]


def _broker_figures(settings: Settings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        depths = queue_depths(settings)
    except LabdispatchError as error:
        return [], {"up": False, "error": str(error)}
    queues = [{"queue": name, "depth": depth} for name, depth in depths.depths.items()]
    return queues, {"up": True, "error": None}


# --- the page and its sign-in ---------------------------------------------------------------


@router.get("/", include_in_schema=False)
def page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return _sign_in_page(401)
    caller = _caller(request, token)
    if caller is None or caller.role not in PAGE_ROLES:
        response = _sign_in_page(401, "Your session has ended (the token was revoked).")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
    return HTMLResponse(_asset("dashboard.html"), headers=PAGE_HEADERS)


@router.post("/session", include_in_schema=False)
async def sign_in(request: Request) -> Response:
    """Check the pasted token; an ops or admin one is kept in the session cookie."""
    if not _same_origin(request):
        return _sign_in_page(403, "Sign in from this dashboard's own page.")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return _sign_in_page(400, "That is not a labdispatch token.")
    fields = parse_qs(body.decode("utf-8", errors="replace"))
    token = (fields.get("token") or [""])[0].strip()
    caller = await run_in_threadpool(_caller, request, token) if token else None
    if caller is None:
        return _sign_in_page(401, "This token is unknown or has been revoked.")
    if caller.role not in PAGE_ROLES:
        return _sign_in_page(
            403,
            f"A {caller.role} token cannot open the operations dashboard: "
            "sign in with an ops or admin token.",
        )
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/session/end", include_in_schema=False)
def sign_out(request: Request) -> Response:
    if not _same_origin(request):
        return _sign_in_page(403, "Sign out from this dashboard's own page.")
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/static/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        return Response("not found\n", status_code=404, media_type="text/plain")
    return Response(
        _asset(name),
        media_type=media_type,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )


def _caller(request: Request, token: str) -> Caller | None:
    with sessions_of(request)() as session:
        return authenticate(session, token)


def _same_origin(request: Request) -> bool:
    """False when a browser says the form came from another site (login and logout
    forgery); requests without an Origin header (not from a browser form) are let through,
    the cookie being SameSite=Strict anyway."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host")


@cache
def _asset(name: str) -> bytes:
    return resources.files("workers.api").joinpath("static", name).read_bytes()


def _sign_in_page(status_code: int, error: str = "") -> HTMLResponse:
    """The sign-in form: no figure of any kind, whatever the caller presented."""
    notice = (
        f'<p class="error" role="alert" data-testid="sign-in-error">{html.escape(error)}</p>'
        if error
        else ""
    )
    return HTMLResponse(
        _SIGN_IN.replace("{notice}", notice), status_code=status_code, headers=PAGE_HEADERS
    )


_SIGN_IN = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · labdispatch operations</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/dashboard.css">
</head>
<body class="signin" data-testid="sign-in">
<main class="card">
<h1>labdispatch operations</h1>
<p>Paste an ops or admin API token (<code>labdispatch tokens create --role ops</code>).
It is kept in a cookie for this browser session only.</p>
{notice}
<form method="post" action="/session" autocomplete="off">
<label for="token">API token</label>
<input id="token" name="token" type="password" required autofocus spellcheck="false"
  data-testid="token-input">
<button type="submit" data-testid="sign-in-submit">Sign in</button>
</form>
</main>
</body>
</html>
"""
