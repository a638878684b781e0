"""Delivery statistics on the hand-built ledger of `seed.py`; every figure worked out there."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, text
from sqlalchemy.orm import Session

from pipeline.ledger.models import Rejection
from pipeline.stats.adoption import adoption_stats
from pipeline.stats.deliveries import (
    DeliveryStats,
    StatsError,
    delivery_stats,
    percentile_cont,
)
from pipeline.stats.period import PeriodTooLong, day_period, parse_period
from pipeline.stats.sql import ReportTooSlow
from tests.pipeline.stats.seed import seed_hprim, seed_november

NOVEMBER = day_period(date(2026, 11, 1), date(2026, 11, 30))

Row = DeliveryStats


@pytest.fixture
def ledger(session: Session) -> Session:
    seed_november(session)
    return session


def test_month_per_laboratory(ledger: Session) -> None:
    rows = delivery_stats(ledger, NOVEMBER, group_by="month")

    assert rows == [
        # received: A1 A2 A3 A4 + A2 revision 2 = 5 (A0 is October, A5 is 12-01 00:00).
        # duplicates: of A1 (11-01) and of A0 (11-02, its message is October but the resend
        #   is November) = 2; of A2 at 12-01 00:00 is out.  rejected: 11-03, 11-30 = 2.
        # deliveries d1..d7: unroutable d4; delivered d1 d2 d3 d5 = 4; read d1 d5 = 2;
        #   failed d6 = 1; retries 0+1+2+0+0+4+0 = 7.
        # latencies 10 20 30 100: median (20+30)/2 = 25; p95 at rank 0.95*3 = 2.85:
        #   30 + 0.85*(100-30) = 89.5.
        Row("LABA", "2026-11", 5, 2, 2, 1, 4, 2, 1, 7, 25.0, 89.5),
        # B1 B2; no duplicate; rejected 11-15; e1 accepted (40 s), e2 failed (retries 3),
        # e3 retrying (retries 1): retries 4; one latency 40 -> median = p95 = 40.
        Row("LABB", "2026-11", 2, 0, 1, 0, 1, 0, 1, 4, 40.0, 40.0),
    ]


def test_laboratory_filter_keeps_only_that_laboratory(ledger: Session) -> None:
    rows = delivery_stats(ledger, NOVEMBER, group_by="month", laboratory="LABB")

    assert rows == [Row("LABB", "2026-11", 2, 0, 1, 0, 1, 0, 1, 4, 40.0, 40.0)]


def test_by_day(ledger: Session) -> None:
    rows = delivery_stats(ledger, NOVEMBER, group_by="day", laboratory="LABA")

    assert rows == [
        # A1 at 00:00 sharp; its resend at 00:05; d1 (read, 10 s), d2 (delivered, 20 s,
        # 2 attempts): median 15, p95 10 + 0.95*10 = 19.5.
        Row("LABA", "2026-11-01", 1, 1, 0, 0, 2, 1, 0, 1, 15.0, 19.5),
        # Only the resend of October's A0.
        Row("LABA", "2026-11-02", 0, 1, 0, 0, 0, 0, 0, 0, None, None),
        # A2, A3; rejection at 09:00; d3 (30 s, 3 att), d4 unroutable, d5 (read, 100 s),
        # d6 failed (5 att): retries 2+4 = 6; median 65, p95 30 + 0.95*70 = 96.5.
        Row("LABA", "2026-11-03", 2, 0, 1, 1, 2, 1, 1, 6, 65.0, 96.5),
        # A2 revision 2, held: received, nothing delivered.
        Row("LABA", "2026-11-04", 1, 0, 0, 0, 0, 0, 0, 0, None, None),
        # A4 at 23:59:59 (pending d7) and the 23:00 rejection.
        Row("LABA", "2026-11-30", 1, 0, 1, 0, 0, 0, 0, 0, None, None),
    ]


def test_by_channel_counts_messages_having_a_delivery_there(ledger: Session) -> None:
    rows = delivery_stats(ledger, NOVEMBER, group_by="channel")

    assert rows == [
        # d3: A2.
        Row("LABA", "https", 1, None, None, 0, 1, 0, 0, 2, 30.0, 30.0),
        # d1 (A1, read, 10 s), d5 (A3, read, 100 s), d6 (A3, failed, 5 att): messages A1 A3;
        # retries 4; median 55, p95 10 + 0.95*90 = 95.5.
        Row("LABA", "mail", 2, None, None, 0, 2, 2, 1, 4, 55.0, 95.5),
        # d2 (A1, 20 s, 2 att), d7 (A4, pending).
        Row("LABA", "mailbox", 2, None, None, 0, 1, 0, 0, 1, 20.0, 20.0),
        # d4, unroutable: no channel.
        Row("LABA", "none", 1, None, None, 1, 0, 0, 0, 0, None, None),
        Row("LABB", "https", 1, None, None, 0, 0, 0, 1, 3, None, None),
        Row("LABB", "mail", 1, None, None, 0, 1, 0, 0, 0, 40.0, 40.0),
        Row("LABB", "mailbox", 1, None, None, 0, 0, 0, 0, 1, None, None),
    ]


def test_by_recipient(ledger: Session) -> None:
    rows = delivery_stats(ledger, NOVEMBER, group_by="recipient", laboratory="LABA")

    assert rows == [
        Row("LABA", "r-card", 1, None, None, 0, 1, 0, 0, 2, 30.0, 30.0),
        Row("LABA", "r-gp1", 1, None, None, 0, 1, 1, 0, 0, 10.0, 10.0),
        # d2 (A1) and d7 (A4): two messages.
        Row("LABA", "r-gp2", 2, None, None, 0, 1, 0, 0, 1, 20.0, 20.0),
        Row("LABA", "r-nocert", 1, None, None, 0, 0, 0, 1, 4, None, None),
        Row("LABA", "r-unk", 1, None, None, 0, 1, 1, 0, 0, 100.0, 100.0),
        Row("LABA", "unknown:RPPS:10000000001", 1, None, None, 1, 0, 0, 0, 0, None, None),
    ]


@pytest.fixture
def with_hprim(ledger: Session) -> Session:
    seed_hprim(ledger)
    return ledger


def test_by_format_per_laboratory(with_hprim: Session) -> None:
    rows = delivery_stats(with_hprim, NOVEMBER, group_by="format")

    assert rows == [
        # Every message of `seed_november` is HL7 v2: LABA's month row, rejections left out
        # (a refusal records no format).
        Row("LABA", "hl7v2", 5, 2, None, 1, 4, 2, 1, 7, 25.0, 89.5),
        # H2: f3 read (8 s, 2 attempts: retries 1).
        Row("LABA", "hprim-medecins", 1, 0, None, 0, 1, 1, 0, 1, 8.0, 8.0),
        # H1 and its resend of 11-12: f1 delivered (accepted at 50 s), f2 unroutable.
        # (H5 and its resend are December.)
        Row("LABA", "hprim-sante", 1, 1, None, 1, 1, 0, 0, 0, 50.0, 50.0),
        Row("LABB", "hl7v2", 2, 0, None, 0, 1, 0, 1, 4, 40.0, 40.0),
        # H3: f4 failed after 3 attempts (retries 2); nothing delivered.
        Row("LABB", "hprim-medecins", 1, 0, None, 0, 0, 0, 1, 2, None, None),
    ]


def test_by_format_adds_up_to_the_month(with_hprim: Session) -> None:
    by_format = delivery_stats(with_hprim, NOVEMBER, group_by="format", laboratory="LABA")
    (month,) = delivery_stats(with_hprim, NOVEMBER, group_by="month", laboratory="LABA")

    # received 5 + 1 + 1, duplicates 2 + 1, unroutable 1 + 1, delivered 4 + 1 + 1, read
    # 2 + 1, failed 1, retries 7 + 1; latencies 8 10 20 30 50 100 -> median 25.
    assert month == Row("LABA", "2026-11", 7, 3, 2, 2, 6, 3, 1, 8, 25.0, 87.5)
    for column in ("received", "duplicates", "unroutable", "delivered", "read", "failed"):
        assert sum(getattr(row, column) for row in by_format) == getattr(month, column), column
    assert sum(row.retries for row in by_format) == month.retries


def test_by_format_the_first_instant_of_a_period_is_in_it(with_hprim: Session) -> None:
    december_first = day_period(date(2026, 12, 1), date(2026, 12, 1))

    rows = delivery_stats(with_hprim, december_first, group_by="format", laboratory="LABA")

    assert rows == [
        # A5 at 00:00 (d8, 5 s) and A2's resend at 00:00.
        Row("LABA", "hl7v2", 1, 1, None, 0, 1, 0, 0, 0, 5.0, 5.0),
        # H5 at 00:00 (f5, 3 s) and its resend at 00:10.
        Row("LABA", "hprim-sante", 1, 1, None, 0, 1, 0, 0, 0, 3.0, 3.0),
    ]


def test_the_day_after_the_period_starts_the_next_one(ledger: Session) -> None:
    december_first = day_period(date(2026, 12, 1), date(2026, 12, 1))

    rows = delivery_stats(ledger, december_first, group_by="month", laboratory="LABA")

    # A5 at 12-01 00:00 (d8 delivered 5 s), A2's resend at 00:00, the 00:00 rejection.
    assert rows == [Row("LABA", "2026-12", 1, 1, 1, 0, 1, 0, 0, 0, 5.0, 5.0)]


def test_an_empty_period_has_no_rows(ledger: Session) -> None:
    assert (
        delivery_stats(ledger, day_period(date(2025, 1, 1), date(2025, 1, 31)), group_by="day")
        == []
    )


def test_unknown_grouping_is_refused(ledger: Session) -> None:
    with pytest.raises(StatsError, match="cannot group by 'week': use one of day, month"):
        delivery_stats(ledger, NOVEMBER, group_by="week")


def test_percentiles_interpolate_like_postgresql() -> None:
    assert percentile_cont([10, 20, 30, 100], 0.5) == 25
    assert percentile_cont([10, 20, 30, 100], 0.95) == pytest.approx(89.5)
    assert percentile_cont([7], 0.95) == 7
    assert percentile_cont([], 0.5) is None


def test_a_period_is_cut_at_utc_day_and_month_starts(ledger: Session) -> None:
    # From the last second of October (A0) to the first of December (A5), as instants.
    period = parse_period("2026-10-31T23:59:59+00:00", "2026-12-01T00:00:01Z", today=date.today())

    by_day = delivery_stats(ledger, period, group_by="day", laboratory="LABA")
    by_month = delivery_stats(ledger, period, group_by="month", laboratory="LABA")

    assert [(r.group, r.received) for r in by_day if r.group in ("2026-10-31", "2026-12-01")] == [
        ("2026-10-31", 1),
        ("2026-12-01", 1),
    ]
    assert [(r.group, r.received) for r in by_month] == [
        ("2026-10", 1),
        ("2026-11", 5),
        ("2026-12", 1),
    ]


def _statements(session: Session) -> list[int]:
    """Bound parameters of each statement run on the session's engine from now on."""
    counts: list[int] = []

    def note(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        counts.append(len(parameters or ()))

    event.listen(session.get_bind(), "before_cursor_execute", note)
    return counts


def test_a_year_by_day_and_five_years_by_month_are_few_statements_of_few_parameters(
    ledger: Session,
) -> None:
    """The report's cost does not grow with the period's length in SQL terms: cutting the
    period into one SQL term per day made a two-year daily report exceed SQLite's limits
    (503 "ledger unavailable") and a report from year 1 build millions of terms."""
    autumn = day_period(date(2026, 10, 1), date(2026, 11, 30))  # all the seeded results
    year = day_period(date(2025, 12, 1), date(2026, 11, 30))  # 365 days
    five_years = day_period(date(2021, 12, 1), date(2026, 11, 30))  # 60 months
    expected_days = delivery_stats(ledger, autumn, group_by="day")
    expected_months = delivery_stats(ledger, autumn, group_by="month")
    ledger.rollback()
    statements = _statements(ledger)
    delivery_stats(ledger, NOVEMBER, group_by="day")
    delivery_stats(ledger, NOVEMBER, group_by="month")
    ledger.rollback()
    for_a_month = list(statements)
    statements.clear()

    by_day = delivery_stats(ledger, year, group_by="day")
    by_month = delivery_stats(ledger, five_years, group_by="month")
    ledger.rollback()

    assert by_day == expected_days and by_day[0].group == "2026-10-31"
    assert by_month == expected_months
    # As many statements, each with as many parameters, as for a month: nothing per day.
    assert sorted(statements) == sorted(for_a_month) and max(statements) < 50, statements


@pytest.mark.parametrize(
    ("first", "last", "group_by"),
    [
        (date(1, 1, 1), date(2026, 11, 30), "month"),
        (date(2025, 1, 1), date(2026, 11, 30), "day"),
        (date(2025, 1, 1), date(2026, 11, 30), "recipient"),
        (date(2025, 1, 1), date(2026, 11, 30), "format"),
    ],
)
def test_a_period_longer_than_the_grouping_covers_is_refused_before_any_query(
    ledger: Session, first: date, last: date, group_by: str
) -> None:
    statements = _statements(ledger)

    with pytest.raises(PeriodTooLong, match=f"a report by {group_by} covers at most"):
        delivery_stats(ledger, day_period(first, last), group_by=group_by)
    with pytest.raises(PeriodTooLong, match="an adoption report covers at most 366 days"):
        adoption_stats(ledger, day_period(first, last))

    assert statements == []


def test_a_report_past_its_time_limit_is_stopped_and_says_so(
    ledger: Session, engine: Engine
) -> None:
    """PostgreSQL: a statement waiting on a lock is cancelled by statement_timeout. SQLite:
    the progress handler interrupts a statement running past the deadline."""
    holder = None
    if engine.dialect.name == "postgresql":
        holder = engine.connect()
        holder.execute(text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))
        # Should the time limit not work, the lock goes after 15 s: the test fails, not hangs.
        release = threading.Timer(15, holder.rollback)
        release.start()
        timeout = 0.5
    else:
        ledger.execute(
            insert(Rejection),
            [
                {
                    "source": "mllp",
                    "ack_code": "AR",
                    "error": "E",
                    "content_sha256": "0" * 64,
                    "raw_encrypted": b"",
                    "storage_key_id": "k",
                    "laboratory": "LABA",
                    "received_at": datetime(2026, 11, 2, tzinfo=UTC),
                }
            ]
            * 20_000,
        )
        ledger.commit()
        timeout = 0.000_001
    try:
        started = time.monotonic()
        with pytest.raises(ReportTooSlow) as raised:
            delivery_stats(ledger, NOVEMBER, group_by="day", timeout=timeout)
        took = time.monotonic() - started
    finally:
        if holder is not None:
            release.cancel()
            release.join()
            holder.rollback()
            holder.close()
    ledger.rollback()

    assert str(raised.value) == (
        f"the report was stopped after {timeout:g} s, the longest a report may run "
        "(LABDISPATCH_STATS_TIMEOUT): ask for a shorter period or one laboratory"
    )
    assert took < 10
    # The connection is left as it was: the same report, unhurried, is answered.
    assert delivery_stats(ledger, NOVEMBER, group_by="month", timeout=60)[0].laboratory == "LABA"
