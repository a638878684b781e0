"""`/v1/stats`: the billing and adoption figures, from the same queries as
`labdispatch stats` (`pipeline.stats`), as JSON or, with `Accept: text/csv`, CSV.

A `lab` token gets its own laboratory's figures whether it names it or not; naming
another is refused (403). Billing, ops and admin see every laboratory, or the one named.
A period longer than the report covers (`pipeline.stats.period.SPAN_LIMITS`) is 422,
naming the limit; a report stopped at LABDISPATCH_STATS_TIMEOUT is 503, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from pipeline.access.tokens import Caller
from pipeline.db import utcnow
from pipeline.stats.adoption import AdoptionStats, adoption_stats
from pipeline.stats.deliveries import GROUPINGS, DeliveryStats, delivery_stats
from pipeline.stats.period import Period, parse_period
from pipeline.stats.render import as_csv, as_rows_json
from workers.api.auth import require, sessions_of

router = APIRouter(tags=["statistics"])

STATS_ROLES = ("lab", "billing", "ops")
CSV_TYPE = "text/csv"

_LAB = Query(None, max_length=64, description="MSH-4; a laboratory token: its own only")
_FROM = Query(None, alias="from", description="first day, YYYY-MM-DD (UTC); default: the 1st")
_TO = Query(None, description="last day, included; default: today")
_CSV: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {}, CSV_TYPE: {}}}}
_LIMITS: dict[int | str, dict[str, Any]] = {
    422: {"description": "a period longer than the report covers (the limit is named)"},
    503: {"description": "the report ran past LABDISPATCH_STATS_TIMEOUT and was stopped"},
}


@router.get(
    "/v1/stats/deliveries",
    summary="received, duplicates, rejected, unroutable, delivered, read, failed, retries, "
    "median and p95 time to delivery",
    responses={**_CSV, **_LIMITS, 400: {"description": "a period or grouping that cannot be read"}},
)
async def deliveries(
    request: Request,
    lab: str | None = _LAB,
    first: str | None = _FROM,
    to: str | None = _TO,
    group_by: str = Query("month", description=f"one of {', '.join(GROUPINGS)}"),
    caller: Caller = Depends(require(*STATS_ROLES)),  # noqa: B008
) -> Response:
    laboratory = _laboratory(caller, lab)
    period = _period(first, to)

    def query() -> list[DeliveryStats]:
        with sessions_of(request)() as session:
            return delivery_stats(
                session, period, group_by=group_by, laboratory=laboratory, timeout=_timeout(request)
            )

    return _render(request, period, await in_report_thread(query), DeliveryStats)


@router.get(
    "/v1/stats/adoption",
    summary="recipients equipped versus recipients active, per laboratory and specialty",
    responses={**_CSV, **_LIMITS, 400: {"description": "a period that cannot be read"}},
)
async def adoption(
    request: Request,
    lab: str | None = _LAB,
    first: str | None = _FROM,
    to: str | None = _TO,
    caller: Caller = Depends(require(*STATS_ROLES)),  # noqa: B008
) -> Response:
    laboratory = _laboratory(caller, lab)
    period = _period(first, to)

    def query() -> list[AdoptionStats]:
        with sessions_of(request)() as session:
            return adoption_stats(session, period, laboratory=laboratory, timeout=_timeout(request))

    return _render(request, period, await in_report_thread(query), AdoptionStats)


T = TypeVar("T")


async def in_report_thread(work: Callable[[], T]) -> T:
    """`work()` on a thread of its own that never holds the process: a daemon thread.

    A report still running when the API stops (SIGTERM: uvicorn cuts the calls in flight
    after LABDISPATCH_API_SHUTDOWN_TIMEOUT) is abandoned there: its answer has no one to go
    to, and the database stops its statement at LABDISPATCH_STATS_TIMEOUT. On the shared
    worker threads (which the interpreter waits for at exit) it held the stop for as long
    as the query ran."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not done.done():  # the call may have been cancelled meanwhile
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as error:  # handed to the awaiting call, which answers it
            failure = error
            _call_soon(loop, lambda: settle(lambda: done.set_exception(failure)))
        else:
            _call_soon(loop, lambda: settle(lambda: done.set_result(result)))

    threading.Thread(target=run, name="labdispatch-report", daemon=True).start()
    return await done


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    # A closed loop (RuntimeError): the API has stopped, nobody waits for this report.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _laboratory(caller: Caller, lab: str | None) -> str | None:
    if lab and not caller.sees(lab):
        raise HTTPException(403, "a laboratory's token sees its own laboratory's figures only")
    return lab or caller.laboratory


def _timeout(request: Request) -> float:
    timeout: float = request.app.state.settings.service.stats_timeout
    return timeout


def _period(first: str | None, to: str | None) -> Period:
    """The period asked for; a PeriodError (a 400 with its words) when it cannot be read."""
    return parse_period(first, to, today=utcnow().date())


def _render(request: Request, period: Period, rows: Sequence[Any], row_type: type) -> Response:
    accept = request.headers.get("accept", "")
    if CSV_TYPE in {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}:
        return Response(as_csv(rows, row_type), media_type="text/csv; charset=utf-8")
    covered = {"from": period.first_day.isoformat(), "to": period.last_day.isoformat()}
    return JSONResponse({"period": covered, "rows": as_rows_json(rows)})
