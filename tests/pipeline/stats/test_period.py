from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from pipeline.stats.period import Period, PeriodError, parse_period

TODAY = date(2026, 11, 29)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_both_days_are_included() -> None:
    assert parse_period("2026-11-01", "2026-11-30", today=TODAY) == Period(
        utc(2026, 11, 1), utc(2026, 12, 1)
    )


def test_one_day() -> None:
    assert parse_period("2026-11-03", "2026-11-03", today=TODAY) == Period(
        utc(2026, 11, 3), utc(2026, 11, 4)
    )


def test_default_is_this_month_so_far() -> None:
    assert parse_period(None, None, today=TODAY) == Period(utc(2026, 11, 1), utc(2026, 11, 30))


def test_datetimes_with_an_offset_are_exact_moments() -> None:
    period = parse_period("2026-11-01T08:00:00+01:00", "2026-11-01T10:30:00Z", today=TODAY)

    assert period == Period(utc(2026, 11, 1, 7), utc(2026, 11, 1, 10, 30))


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        ("2026-13-01", None, "--from 2026-13-01: not a date (YYYY-MM-DD)"),
        (None, "yesterday", "--to yesterday: not a date (YYYY-MM-DD)"),
        ("2026-11-01T08:00", None, "--from 2026-11-01T08:00: a datetime needs its UTC offset"),
        ("2026-11-30", "2026-11-01", "--from 2026-11-30 is after --to 2026-11-01"),
    ],
)
def test_bad_input_says_what_is_wrong(first: str | None, last: str | None, message: str) -> None:
    with pytest.raises(PeriodError) as raised:
        parse_period(first, last, today=TODAY)
    assert str(raised.value).startswith(message)
