"""`/v1/stats`: the billing and adoption figures, from the same queries as
`labdispatch stats` (`pipeline.stats`), as JSON or, with `Accept: text/csv`, CSV.

A `lab` token gets its own laboratory's figures whether it names it or not; naming
another is refused (403). Billing, ops and admin see every laboratory, or the one named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
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


@router.get(
    "/v1/stats/deliveries",
    summary="received, duplicates, rejected, unroutable, delivered, read, failed, retries, "
    "median and p95 time to delivery",
    responses={**_CSV, 400: {"description": "a period or grouping that cannot be read"}},
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
            return delivery_stats(session, period, group_by=group_by, laboratory=laboratory)

    return _render(request, period, await run_in_threadpool(query), DeliveryStats)


@router.get(
    "/v1/stats/adoption",
    summary="recipients equipped versus recipients active, per laboratory and specialty",
    responses={**_CSV, 400: {"description": "a period that cannot be read"}},
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
            return adoption_stats(session, period, laboratory=laboratory)

    return _render(request, period, await run_in_threadpool(query), AdoptionStats)


def _laboratory(caller: Caller, lab: str | None) -> str | None:
    if lab and not caller.sees(lab):
        raise HTTPException(403, "a laboratory's token sees its own laboratory's figures only")
    return lab or caller.laboratory


def _period(first: str | None, to: str | None) -> Period:
    """The period asked for; a PeriodError (a 400 with its words) when it cannot be read."""
    return parse_period(first, to, today=utcnow().date())


def _render(request: Request, period: Period, rows: Sequence[Any], row_type: type) -> Response:
    accept = request.headers.get("accept", "")
    if CSV_TYPE in {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}:
        return Response(as_csv(rows, row_type), media_type="text/csv; charset=utf-8")
    covered = {"from": period.first_day.isoformat(), "to": period.last_day.isoformat()}
    return JSONResponse({"period": covered, "rows": as_rows_json(rows)})
