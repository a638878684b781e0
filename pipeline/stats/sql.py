"""The few SQL details that differ between PostgreSQL and SQLite, in one place.

SQLite keeps a timestamp as UTC text ("2026-11-03 08:15:00.000000", see
`pipeline.db.UTCDateTime`), so a day or a minute is a prefix of it. PostgreSQL keeps an
instant: it is cut with date_trunc in UTC (whatever the session's time zone), which costs
far less per row than formatting it, and the label is written here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from pipeline.errors import LabdispatchError
from pipeline.ledger.models import Message
from pipeline.stats.period import Period

#: Label of each unit: (strftime format, SQLite prefix length).
_UNITS = {"month": ("%Y-%m", 7), "day": ("%Y-%m-%d", 10), "minute": ("%Y-%m-%dT%H:%M", 16)}


def dialect_of(session: Session | Connection) -> str:
    return session.get_bind().dialect.name if isinstance(session, Session) else session.dialect.name


#: Connections one report may use at once on PostgreSQL (one statement per laboratory).
REPORT_CONNECTIONS = 4
#: SQLite virtual machine steps between two looks at a report's deadline (~1 ms of work).
_SQLITE_CHECK_STEPS = 10_000
#: PostgreSQL's SQLSTATE for a statement cancelled (statement_timeout).
_QUERY_CANCELED = "57014"


class ReportTooSlow(LabdispatchError):
    """A report ran past its time limit and was stopped (`LABDISPATCH_STATS_TIMEOUT`)."""


def prepare_report(session: Session | Connection, timeout: float | None = None) -> None:
    """Settings for the reports' few large aggregates, for this transaction only.

    PostgreSQL's JIT compiler takes longer to compile these one-off queries (up to a second
    and more, measured on the 10M-delivery benchmark) than they take to run; and a month of
    deliveries sorted for its percentiles needs more than the default 4 MB of work memory
    not to spill to disk. `timeout`: seconds each statement may run (statement_timeout);
    the server stops it beyond, whether or not anyone still waits for it."""
    if dialect_of(session) == "postgresql":
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text("SET LOCAL work_mem = '128MB'"))
        if timeout is not None:
            milliseconds = max(1, round(timeout * 1000))
            session.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))


@contextlib.contextmanager
def report_deadline(session: Session, timeout: float | None) -> Iterator[None]:
    """Run a report within `timeout` seconds (None: no limit), or raise ReportTooSlow.

    PostgreSQL: each statement of the report, on every connection it uses, is cancelled by
    the server past `timeout` (`prepare_report`). SQLite has no statement timeout: the whole
    report is interrupted from its progress handler once the deadline has passed. Either
    way a slow report frees its core and its connection instead of holding them (and the
    API's shutdown) for as long as it would take."""
    prepare_report(session, timeout)
    dbapi_connection: Any = None
    fired: list[bool] = []
    if timeout is not None and dialect_of(session) == "sqlite":
        dbapi_connection = session.connection().connection.dbapi_connection
        deadline = time.monotonic() + timeout

        def past_deadline() -> int:
            if time.monotonic() > deadline:
                fired.append(True)
                return 1  # SQLite stops the statement: OperationalError "interrupted"
            return 0

        dbapi_connection.set_progress_handler(past_deadline, _SQLITE_CHECK_STEPS)
    try:
        yield
    except DBAPIError as error:
        if fired or getattr(error.orig, "sqlstate", None) == _QUERY_CANCELED:
            raise ReportTooSlow(
                f"the report was stopped after {timeout:g} s, the longest a report may run "
                "(LABDISPATCH_STATS_TIMEOUT): ask for a shorter period or one laboratory"
            ) from None
        raise
    finally:
        if dbapi_connection is not None:
            dbapi_connection.set_progress_handler(None, 0)


def per_laboratory(
    session: Session,
    laboratories: Sequence[str],
    statement: Callable[[str], Any],
    *,
    timeout: float | None = None,
) -> Iterator[Row[Any]]:
    """The rows of `statement(lab)` for each laboratory, in laboratory order.

    The statements are independent (each reads one laboratory's range of an index), so on
    PostgreSQL they run on up to REPORT_CONNECTIONS connections at once, one server process
    and one core each: a report over twenty laboratories takes about the time of the
    slowest few, not of all twenty in turn. Each laboratory's figures come from one
    consistent snapshot. Elsewhere (SQLite, or a session bound to one connection) they run
    in turn on the session."""
    bind = session.get_bind()
    if dialect_of(session) != "postgresql" or not isinstance(bind, Engine) or len(laboratories) < 2:
        for laboratory in laboratories:
            yield from session.execute(statement(laboratory))
        return

    def one(laboratory: str) -> list[Row[Any]]:
        with bind.connect() as connection, connection.begin():
            prepare_report(connection, timeout)
            return list(connection.execute(statement(laboratory)))

    with ThreadPoolExecutor(max_workers=min(REPORT_CONNECTIONS, len(laboratories))) as pool:
        for rows in pool.map(one, laboratories):
            yield from rows


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
