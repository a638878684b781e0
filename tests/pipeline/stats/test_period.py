from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from pipeline.stats.period import (
    SPAN_LIMITS,
    Period,
    PeriodError,
    PeriodTooLong,
    check_span,
    parse_period,
)

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


@pytest.mark.parametrize(
    ("report", "longest", "one_more"),
    [
        ("day", ("2024-01-01", "2024-12-31"), ("2024-01-01", "2025-01-01")),  # 366 days
        ("month", ("2022-01-01", "2026-12-31"), ("2021-12-31", "2026-12-01")),  # 60 months
        ("channel", ("2025-01-01", "2025-12-31"), ("2024-01-01", "2025-01-01")),
        ("recipient", ("2025-01-01", "2025-12-31"), ("2024-01-01", "2025-01-01")),
        ("adoption", ("2025-01-01", "2025-12-31"), ("2024-01-01", "2025-01-01")),
    ],
)
def test_each_report_covers_a_bounded_period_and_the_refusal_names_the_limit(
    report: str, longest: tuple[str, str], one_more: tuple[str, str]
) -> None:
    limit, unit = SPAN_LIMITS[report]
    check_span(parse_period(*longest, today=TODAY), report)

    with pytest.raises(PeriodTooLong) as raised:
        check_span(parse_period(*one_more, today=TODAY), report)

    words = str(raised.value)
    assert f"covers at most {limit} {unit}; {one_more[0]} to {one_more[1]} is " in words
    assert f"is {limit + 1} {unit}: ask for a shorter period" in words


def test_a_period_from_year_one_is_read_then_refused_by_its_length() -> None:
    period = parse_period("0001-01-01", None, today=TODAY)

    with pytest.raises(PeriodTooLong, match="a report by month covers at most 60 months"):
        check_span(period, "month")


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        (None, "9999-12-31", "--to 9999-12-31: out of the calendar's range"),
        ("0001-01-01T00:00:00+01:00", None, "--from 0001-01-01T00:00:00+01:00: out of the"),
    ],
)
def test_a_bound_at_the_calendars_edge_is_a_period_error_not_a_crash(
    first: str | None, last: str | None, message: str
) -> None:
    with pytest.raises(PeriodError) as raised:
        parse_period(first, last, today=TODAY)
    assert str(raised.value).startswith(message)
