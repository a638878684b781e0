"""/v1/stats: the same figures as `labdispatch stats` (the same queries), a laboratory's
token held to its own, CSV on request, unreadable periods refused with their reason."""

from __future__ import annotations

import csv
import io
import threading
import time
from dataclasses import replace

import pytest
from sqlalchemy import Engine, insert, text

from pipeline.db import utcnow
from pipeline.ledger.models import Rejection
from pipeline.stats.adoption import adoption_stats
from pipeline.stats.deliveries import delivery_stats
from pipeline.stats.period import parse_period
from pipeline.stats.render import as_rows_json
from tests.pipeline.hprim.builders import end, header, order, patient, result, sante
from tests.workers.api.conftest import LAB_A, LAB_B, Api, World, posted_id, result_of

THIS_MONTH = parse_period(None, None, today=utcnow().date())


def test_a_lab_token_gets_its_own_laboratorys_figures_and_ops_gets_all(world: World) -> None:
    api = world.api
    with api.sessions() as session:
        own = as_rows_json(delivery_stats(session, THIS_MONTH, group_by="day", laboratory=LAB_A))
        every = as_rows_json(delivery_stats(session, THIS_MONTH, group_by="day"))

    lab = api.client.get("/v1/stats/deliveries?group_by=day", headers=api.auth("lab_a")).json()
    ops = api.client.get("/v1/stats/deliveries?group_by=day", headers=api.auth("ops")).json()

    assert lab["rows"] == own and {row["laboratory"] for row in own} == {LAB_A}
    assert ops["rows"] == every and {row["laboratory"] for row in every} >= {LAB_A, LAB_B}
    assert lab["period"] == {
        "from": THIS_MONTH.first_day.isoformat(),
        "to": THIS_MONTH.last_day.isoformat(),
    }


def test_adoption_figures_are_the_adoption_query_s(world: World) -> None:
    api = world.api
    with api.sessions() as session:
        expected = as_rows_json(adoption_stats(session, THIS_MONTH, laboratory=LAB_B))

    answer = api.client.get("/v1/stats/adoption", headers=api.auth("lab_b")).json()

    assert answer["rows"] == expected


def test_accept_text_csv_gets_csv_with_its_header(world: World) -> None:
    api = world.api
    response = api.client.get(
        f"/v1/stats/deliveries?lab={LAB_A}&group_by=month",
        headers={**api.auth("billing"), "Accept": "text/csv"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows and {row["laboratory"] for row in rows} == {LAB_A}
    assert {"received", "delivered", "failed", "p95_seconds_to_delivery"} <= set(rows[0])


def test_an_unreadable_period_or_grouping_is_400_with_the_reason(world: World) -> None:
    api = world.api
    ask = {
        "bad day": "/v1/stats/deliveries?from=2026-13-01",
        "backwards": "/v1/stats/adoption?from=2026-03-01&to=2026-02-01",
        "grouping": "/v1/stats/deliveries?group_by=week",
    }

    answers = {name: api.client.get(url, headers=api.auth("billing")) for name, url in ask.items()}

    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(ask, 400)
    assert "not a date" in answers["bad day"].json()["error"]
    assert "the period is empty" in answers["backwards"].json()["error"]
    assert "week" in answers["grouping"].json()["error"]


@pytest.mark.parametrize(
    ("query", "limit"),
    [
        ("from=0001-01-01&group_by=month", "a report by month covers at most 60 months"),
        ("from=2025-01-01&to=2026-12-31&group_by=day", "a report by day covers at most 366 days"),
        ("from=2024-01-01&to=2025-12-31&group_by=recipient", "by recipient covers at most 366"),
        ("from=2024-01-01&to=2025-12-31&group_by=format", "by format covers at most 366"),
    ],
)
def test_a_period_longer_than_the_report_covers_is_422_naming_the_limit(
    world: World, query: str, limit: str
) -> None:
    """Asked by any token (a laboratory's too), such a period held a core for minutes and
    ended in 503 "ledger unavailable", or, on SQLite, failed outright for two years by day:
    an outage to the caller, that no retry could ever get through."""
    api = world.api
    started = time.monotonic()
    deliveries = api.client.get(f"/v1/stats/deliveries?{query}", headers=api.auth("lab_a"))
    first = query.split("&", 1)[0]
    adoption = api.client.get(f"/v1/stats/adoption?{first}", headers=api.auth("billing"))

    assert time.monotonic() - started < 5
    assert deliveries.status_code == adoption.status_code == 422
    assert limit in deliveries.json()["error"]
    assert "ask for a shorter period" in deliveries.json()["error"]
    assert "an adoption report covers at most 366 days" in adoption.json()["error"]


def test_a_period_at_the_calendars_edge_is_400_not_500(world: World) -> None:
    api = world.api
    response = api.client.get("/v1/stats/deliveries?to=9999-12-31", headers=api.auth("ops"))

    assert response.status_code == 400
    assert response.json() == {"error": "--to 9999-12-31: out of the calendar's range"}


def test_a_report_past_its_time_limit_is_503_saying_so_not_ledger_unavailable(
    api: Api, engine: Engine
) -> None:
    """The report is held (PostgreSQL: a lock another session holds; SQLite: a limit of a
    microsecond over 20,000 rows): stopped at LABDISPATCH_STATS_TIMEOUT, and answered so."""
    holder = None
    if engine.dialect.name == "postgresql":
        timeout = 0.5
        holder = engine.connect()
        holder.execute(text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))
        # Should the time limit not work, the lock goes after 15 s: the test fails, not hangs.
        release = threading.Timer(15, holder.rollback)
        release.start()
    else:
        timeout = 0.000_001
        with api.sessions.begin() as session:
            session.execute(
                insert(Rejection),
                [
                    {
                        "source": "api",
                        "ack_code": "AR",
                        "error": "E",
                        "content_sha256": "0" * 64,
                        "raw_encrypted": b"",
                        "storage_key_id": "k",
                        "laboratory": LAB_A,
                    }
                ]
                * 20_000,
            )
    state = api.client.app.state  # type: ignore[attr-defined]
    state.settings = replace(
        state.settings, service=replace(state.settings.service, stats_timeout=timeout)
    )
    try:
        response = api.client.get("/v1/stats/deliveries?group_by=day", headers=api.auth("ops"))
    finally:
        if holder is not None:
            release.cancel()
            release.join()
            holder.rollback()
            holder.close()

    assert response.status_code == 503 and "retry-after" not in response.headers
    assert response.json() == {
        "error": f"the report was stopped after {timeout:g} s, the longest a report may run "
        "(LABDISPATCH_STATS_TIMEOUT): ask for a shorter period or one laboratory"
    }


def test_grouped_by_format_each_laboratory_sees_what_it_sent_in_each_format(api: Api) -> None:
    """HL7 v2 and HPRIM Santé through the API, then the report by format: one row per
    laboratory and format, received counted from the messages (not yet routed: nothing
    delivered), rejections not attributable to a format (None); JSON and CSV alike."""
    hprim = sante(header(f3="F1.HPR", f5=f"{LAB_A}~Labo"), patient(), order(), result(), end())
    for data, caller, content_type in (
        (result_of(LAB_A, "A-1"), "lab_a", "application/hl7-v2"),
        (hprim, "lab_a", "text/plain"),
        (result_of(LAB_B, "B-1"), "lab_b", "application/hl7-v2"),
    ):
        posted_id(api.post_result(data, caller, **{"Content-Type": content_type}))
    url = "/v1/stats/deliveries?group_by=format"

    every = api.client.get(url, headers=api.auth("ops")).json()["rows"]
    own = api.client.get(url, headers=api.auth("lab_a")).json()["rows"]
    as_csv = api.client.get(url, headers={**api.auth("lab_a"), "Accept": "text/csv"})

    def figures(row: dict[str, object]) -> tuple[object, ...]:
        names = ("laboratory", "group", "received", "duplicates", "rejected", "delivered")
        return tuple(row[name] for name in names)

    assert [figures(row) for row in every] == [
        (LAB_A, "hl7v2", 1, 0, None, 0),
        (LAB_A, "hprim-sante", 1, 0, None, 0),
        (LAB_B, "hl7v2", 1, 0, None, 0),
    ]
    assert own == every[:2]
    assert as_csv.status_code == 200
    assert [
        (r["laboratory"], r["group"], r["received"], r["rejected"])
        for r in csv.DictReader(io.StringIO(as_csv.text))
    ] == [(LAB_A, "hl7v2", "1", ""), (LAB_A, "hprim-sante", "1", "")]
