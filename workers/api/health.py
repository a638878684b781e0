"""`/healthz` (the process answers) and `/readyz` (it can do its work: the ledger and the
broker answer). No token: orchestrators and load balancers call them.

`/readyz` names what is down and nothing more (no host, no URL): it is open to anyone who
can reach the port. The reason, with passwords masked, goes to the log for ops. The
embedded broker is only looked at, never started: a probe must not change what it probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from pipeline.db import first_line, safe_url
from pipeline.settings import Settings
from workers.api.auth import sessions_of
from workers.broker import BrokerUnavailable, check, embedded_running, is_embedded

router = APIRouter(tags=["health"])
log = logging.getLogger("labdispatch.api")

#: Seconds each check may take before its service counts as down.
CHECK_TIMEOUT = 5.0


@router.get("/healthz", summary="the process is up (no I/O)")
async def healthz() -> dict[str, str]:
    return {"status": "up"}


@router.get(
    "/readyz",
    summary="the ledger and the broker answer",
    responses={503: {"description": "the ledger or the broker (named) does not answer"}},
)
async def readyz(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    ledger, broker = await asyncio.gather(
        _within(asyncio.to_thread(_ledger_answers, request), "ledger"),
        _within(asyncio.to_thread(_broker_answers, settings), "broker"),
    )
    ready = ledger and broker
    return JSONResponse(
        {
            "status": "ready" if ready else "not ready",
            "ledger": "up" if ledger else "down",
            "broker": "up" if broker else "down",
        },
        status_code=200 if ready else 503,
    )


async def _within(check_done: Coroutine[Any, Any, bool], what: str) -> bool:
    try:
        return bool(await asyncio.wait_for(check_done, CHECK_TIMEOUT))
    except TimeoutError:
        log.warning("readiness: the %s did not answer within %g s", what, CHECK_TIMEOUT)
        return False


def _ledger_answers(request: Request) -> bool:
    sessions = sessions_of(request)
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as error:
        bind = sessions.kw.get("bind")
        where = safe_url(bind.url) if bind is not None else "the ledger"
        log.warning(
            "readiness: the ledger %s does not answer (%s)",
            where,
            first_line(getattr(error, "orig", None) or error),
        )
        return False
    return True


def _broker_answers(settings: Settings) -> bool:
    if is_embedded(settings):
        if embedded_running(settings):
            return True
        log.warning("readiness: the embedded broker is not running (labdispatch broker start)")
        return False
    try:
        check(settings.service.broker_url)
    except BrokerUnavailable as error:
        log.warning("readiness: %s", error)  # the URL in it has its password masked
        return False
    return True
