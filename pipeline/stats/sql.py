"""The few SQL details that differ between PostgreSQL and SQLite, in one place.

SQLite keeps a timestamp as UTC text ("2026-11-03 08:15:00.000000", see
`pipeline.db.UTCDateTime`), so a day or a minute is a prefix of it. PostgreSQL keeps an
instant: it is cut with date_trunc in UTC (whatever the session's time zone), which costs
far less per row than formatting it, and the label is written here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from pipeline.ledger.models import Message
from pipeline.stats.period import Period

#: Label of each unit: (strftime format, SQLite prefix length).
_UNITS = {"month": ("%Y-%m", 7), "day": ("%Y-%m-%d", 10), "minute": ("%Y-%m-%dT%H:%M", 16)}


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name


def prepare_report(session: Session) -> None:
    """Settings for the reports' few large aggregates, for this transaction only.

    PostgreSQL's JIT compiler takes longer to compile these one-off queries (up to a second
    and more, measured on the 10M-delivery benchmark) than they take to run; and a month of
    deliveries sorted for its percentiles needs more than the default 4 MB of work memory
    not to spill to disk."""
    if dialect_of(session) == "postgresql":
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text("SET LOCAL work_mem = '128MB'"))


def laboratories_in(session: Session, period: Period) -> list[str]:
    """The laboratories with a message received in the period (a delivery carries its
    message's laboratory and time, so no other has a delivery in the period)."""
    return list(
        session.scalars(
            select(Message.laboratory)
            .where(Message.received_at >= period.start, Message.received_at < period.end)
            .distinct()
            .order_by(Message.laboratory)
        )
    )


def utc_bucket(dialect: str, column: Any, unit: str) -> ColumnElement[Any]:
    """An expression grouping `column` (a UTCDateTime) by UTC month, day or minute; its
    values become labels with `bucket_label`."""
    if dialect == "postgresql":
        return func.date_trunc(unit, func.timezone("UTC", column))
    return func.substr(column, 1, _UNITS[unit][1])


def bucket_label(value: Any, unit: str) -> str:
    """ "2026-11", "2026-11-03" or "2026-11-03T08:15"."""
    if isinstance(value, datetime):
        return value.strftime(_UNITS[unit][0])
    return str(value).replace(" ", "T")
