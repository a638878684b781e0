"""Delivery statistics on the hand-built ledger of `seed.py`; every figure worked out there."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy.orm import Session

from pipeline.stats.deliveries import (
    DeliveryStats,
    StatsError,
    delivery_stats,
    percentile_cont,
    time_slices,
)
from pipeline.stats.period import day_period, parse_period
from tests.pipeline.stats.seed import seed_november

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


def test_a_period_is_cut_at_utc_day_and_month_starts() -> None:
    period = parse_period("2026-12-31T22:00:00+00:00", "2027-01-02T06:00:00Z", today=date.today())

    assert [label for label, _, _ in time_slices(period, "day")] == [
        "2026-12-31",
        "2027-01-01",
        "2027-01-02",
    ]
    months = time_slices(period, "month")
    assert [(label, start.isoformat(), end.isoformat()) for label, start, end in months] == [
        ("2026-12", "2026-12-31T22:00:00+00:00", "2027-01-01T00:00:00+00:00"),
        ("2027-01", "2027-01-01T00:00:00+00:00", "2027-01-02T06:00:00+00:00"),
    ]
