"""The period a report covers, read from what a person types.

Billing speaks in days: `--from 2026-11-01 --to 2026-11-30` is November, both days
included, in UTC. Internally every period is a half-open interval [start, end) of aware UTC
datetimes, so a moment on the boundary belongs to exactly one period: the `to` day's end is
the next day at 00:00, excluded. A full ISO datetime with its offset is taken as the exact
moment (then `to` is the exclusive end itself), for an operator who needs an hour, not a day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from pipeline.errors import LabdispatchError


class PeriodError(LabdispatchError):
    """A period that cannot be read, or that ends before it starts."""


class PeriodTooLong(PeriodError):
    """A period longer than its report may cover (SPAN_LIMITS)."""


#: The longest period each report covers: (how many, of what). A report's cost grows with
#: the deliveries in its period, and one row per laboratory per day or month: a year by
#: day (366 rows a laboratory) is the longest daily view billing or a laboratory needs
#: (an annual report, day by day); five years by month (60 rows) covers any multi-year
#: comparison; a year by channel, recipient or format (or adoption) is the longest billing
#: period. Longer questions are asked in several periods.
SPAN_LIMITS: dict[str, tuple[int, str]] = {
    "day": (366, "days"),
    "month": (60, "months"),
    "channel": (366, "days"),
    "recipient": (366, "days"),
    "format": (366, "days"),
    "adoption": (366, "days"),
}


@dataclass(frozen=True)
class Period:
    """[start, end): aware UTC datetimes, `end` excluded."""

    start: datetime
    end: datetime

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        """The last day the period touches (the `to` a person would type)."""
        return (self.end - timedelta(microseconds=1)).date()


def check_span(period: Period, report: str) -> None:
    """PeriodTooLong, naming the limit, when `period` is longer than `report` may cover
    (`report`: a grouping of the delivery report, or "adoption")."""
    limit, unit = SPAN_LIMITS[report]
    first, last = period.first_day, period.last_day
    if unit == "months":
        span = (last.year - first.year) * 12 + last.month - first.month + 1
    else:
        span = (last - first).days + 1
    if span > limit:
        what = "an adoption report" if report == "adoption" else f"a report by {report}"
        advice = " or group by month" if report == "day" else ""
        raise PeriodTooLong(
            f"{what} covers at most {limit} {unit}; {first.isoformat()} to "
            f"{last.isoformat()} is {span} {unit}: ask for a shorter period{advice}"
        )


def day_period(first: date, last: date) -> Period:
    """From `first` 00:00 to the day after `last` 00:00, UTC."""
    return Period(_midnight(first), _midnight(last + timedelta(days=1)))


def parse_period(from_text: str | None, to_text: str | None, *, today: date) -> Period:
    """Read `--from`/`--to`; by default the current month so far (first day to today)."""
    start = (
        _parse_bound(from_text, "--from", end=False)
        if from_text
        else _midnight(today.replace(day=1))
    )
    end = (
        _parse_bound(to_text, "--to", end=True) if to_text else _midnight(today + timedelta(days=1))
    )
    if start >= end:
        raise PeriodError(
            f"--from {from_text or start.date().isoformat()} is after "
            f"--to {to_text or today.isoformat()}: the period is empty"
        )
    return Period(start, end)


def _parse_bound(text: str, option: str, *, end: bool) -> datetime:
    value = text.strip()
    if "T" not in value and " " not in value:
        try:
            day = date.fromisoformat(value)
            return _midnight(day + timedelta(days=1) if end else day)
        except ValueError:
            raise PeriodError(f"{option} {text}: not a date (YYYY-MM-DD)") from None
        except OverflowError:
            raise PeriodError(f"{option} {text}: out of the calendar's range") from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise PeriodError(
            f"{option} {text}: not a date (YYYY-MM-DD) nor a datetime with its offset "
            "(2026-11-01T08:00:00+01:00)"
        ) from None
    if moment.tzinfo is None:
        raise PeriodError(
            f"{option} {text}: a datetime needs its UTC offset (…+01:00 or …Z); "
            "a plain date is read as UTC"
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise PeriodError(f"{option} {text}: out of the calendar's range") from None


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)
