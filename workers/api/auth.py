"""Bearer-token authentication and role checks, as FastAPI dependencies.

Every route states the roles that may call it with `Depends(require(...))`. A missing,
unknown or revoked token gets 401; a known token of the wrong role gets 403. A `lab`
caller is further limited to its own laboratory's data by the routes, through
`Caller.sees`; an object of another laboratory answers 404, exactly as one that does not
exist, so IDs cannot be probed.

A browser sends no header when it navigates, so the dashboard's routes also accept the
token from the session cookie its sign-in form sets (`require(..., cookie=True)`); every
other route reads the header only, which a cross-site page cannot make a browser send.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from pipeline.access.tokens import Caller, authenticate

_bearer = HTTPBearer(auto_error=False, description="an API token (`labdispatch tokens create`)")

#: Roles that see every laboratory; a `lab` caller sees its own.
ALL_ROLES = ("lab", "ops", "billing", "admin")

#: The dashboard's session cookie: the token itself, HttpOnly and SameSite=Strict.
SESSION_COOKIE = "labdispatch_session"


def sessions_of(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.sessions
    return factory


def require(*roles: str, cookie: bool = False) -> Callable[..., Caller]:
    """A dependency admitting callers whose role is in `roles` (admin is always admitted).

    With `cookie`, a caller without a bearer header may present the token in the session
    cookie instead; the header wins when both are there."""
    allowed = frozenset(roles) | {"admin"}

    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Caller:
        if credentials is not None and credentials.scheme.lower() == "bearer":
            secret = credentials.credentials
        elif cookie and request.cookies.get(SESSION_COOKIE):
            secret = request.cookies[SESSION_COOKIE]
        else:
            raise HTTPException(
                401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        with sessions_of(request)() as session:
            caller = authenticate(session, secret)
        if caller is None:
            raise HTTPException(
                401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"}
            )
        request.state.caller = caller
        if caller.role not in allowed:
            raise HTTPException(403, f"a {caller.role} token may not do this")
        return caller

    return dependency
