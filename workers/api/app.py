"""The HTTP API as one FastAPI application: `create_app` wires the ledger, the intake
committer, the routes and the answers to errors.

Everything a route needs is on `app.state`: `settings`, `sessions` (the ledger),
`committer` (the MLLP listener's group committer, started for the app's life: results
posted over HTTP are committed the same way, many requests per transaction) and `requeue`
(how replayed deliveries are queued). Tests pass their own `after_commit` and `requeue`:
the seams where work leaves for the broker.

Errors are answered as JSON `{"error": "..."}`: ours (`LabdispatchError`) with a 4xx and
their message, anything else with 500 and "internal error" (`access_log`), never a
traceback. The interactive documentation pages are off (Swagger UI loads from a CDN);
the OpenAPI schema is served at /openapi.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import metadata

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException

from pipeline.access.tokens import TokenError
from pipeline.db import first_line, open_database
from pipeline.delivery.intake import ledger_unreachable
from pipeline.delivery.replay import ReplayRefused, UnknownDelivery
from pipeline.delivery.services import DeliveryServices
from pipeline.delivery.trace import UnknownResult
from pipeline.errors import LabdispatchError
from pipeline.settings import Settings
from pipeline.stats.period import PeriodTooLong
from pipeline.stats.sql import ReportTooSlow
from workers.api import dashboard, health, messages, metrics, results, stats
from workers.api.access_log import INTERNAL_ERROR, AccessLog, describe_call
from workers.api.messages import Requeue, queue_replayed
from workers.hooks import AfterCommit
from workers.intake_commit import GroupCommitter

log = logging.getLogger("labdispatch.api")

LEDGER_UNAVAILABLE = "the result ledger is unavailable; try again later"

#: HTTP status of our errors by kind; any other LabdispatchError is a 400.
ERROR_STATUS: dict[type[LabdispatchError], int] = {
    UnknownResult: 404,
    UnknownDelivery: 404,
    ReplayRefused: 409,
    TokenError: 400,
    PeriodTooLong: 422,
    ReportTooSlow: 503,
}


def create_app(
    settings: Settings,
    *,
    sessions: sessionmaker[Session] | None = None,
    after_commit: AfterCommit | None = None,
    requeue: Requeue | None = None,
) -> FastAPI:
    """The application; the ledger is opened (and migrated) here unless `sessions` is given.

    `after_commit` gets the IDs of results just committed (default: queue the route stage);
    `requeue` gets replayed deliveries to seal and to send (default: queue those stages)."""
    owned = sessions is None
    ledger = sessions if sessions is not None else open_database(settings)
    if after_commit is None:
        from workers.hooks import route_after_commit  # loads Celery: only when serving

        after_commit = route_after_commit()
    # Built now, so a missing storage key stops `api serve` before it listens.
    services = DeliveryServices.from_settings(settings)
    hook = after_commit

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(
            ledger,
            services,
            loop,
            after_commit=hook,
            max_batch=settings.service.batch_size,
            name="api-committer",
        )
        committer.start()
        app.state.committer = committer
        try:
            yield
        finally:
            await loop.run_in_executor(None, committer.stop)  # what was posted is answered
            services.close()
            if owned:
                ledger.kw["bind"].dispose()

    app = FastAPI(
        title="labdispatch",
        version=_version(),
        summary="Laboratory results in, their delivery traced, statistics out.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = ledger
    app.state.requeue = requeue or queue_replayed
    app.add_middleware(AccessLog)
    app.add_exception_handler(LabdispatchError, _our_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(DBAPIError, _ledger_error)
    for module in (health, results, messages, stats, metrics, dashboard):
        app.include_router(module.router)
    return app


def error_status(error: LabdispatchError) -> int:
    for kind, status in ERROR_STATUS.items():
        if isinstance(error, kind):
            return status
    return 400


async def _our_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, LabdispatchError)
    return JSONResponse({"error": str(error)}, status_code=error_status(error))


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return JSONResponse(
        {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
    )


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    """A parameter of the wrong type or form: which one, and what was expected (never the
    value given, which could be anything)."""
    assert isinstance(error, RequestValidationError)
    problems = [
        f"{'.'.join(str(part) for part in problem['loc'][1:]) or problem['loc'][0]}: "
        f"{problem['msg']}"
        for problem in error.errors()
    ]
    return JSONResponse({"error": "; ".join(problems) or "invalid request"}, status_code=400)


async def _ledger_error(request: Request, error: Exception) -> JSONResponse:
    """The ledger failed under a route (reading a token, a trace): 503 when it cannot be
    reached, so clients and load balancers try again; any other database error is a bug."""
    assert isinstance(error, DBAPIError)
    reason = first_line(error.orig or error)
    if ledger_unreachable(error):
        log.error("ledger unavailable answering %s (%s)", describe_call(request.scope), reason)
        return JSONResponse(
            {"error": LEDGER_UNAVAILABLE}, status_code=503, headers={"Retry-After": "30"}
        )
    log.error(
        "internal error answering %s (%s)", describe_call(request.scope), type(error).__name__
    )
    return JSONResponse(INTERNAL_ERROR, status_code=500)


def _version() -> str:
    try:
        return metadata.version("labdispatch")
    except metadata.PackageNotFoundError:
        return "unknown"
