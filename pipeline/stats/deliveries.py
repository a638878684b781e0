"""What a laboratory sent in a period and what became of it: the billing report.

Attribution: everything about a delivery counts in the period its MESSAGE was received in
(billing bills the results received in the period), whatever happened to it since.

One row per (laboratory, group); `group_by` is
- `day` ("2026-11-03") or `month` ("2026-11"), in UTC, of the message's reception;
- `channel`: the delivery's channel kind, "none" when it has none (unroutable);
- `recipient`: the delivery's directory key, "unknown:<identifier looked for>" when
  unroutable;
- `format`: what the laboratory sent, the message's `format` ("hl7v2", "hprim-sante",
  "hprim-medecins"), read from the message by its primary key.

Columns:
- `received`: messages recorded (every revision, held ones included) received in the
  period. Per channel or recipient, where a message is not attributable: the distinct
  messages with a delivery in that group.
- `duplicates`: resends of an identical message (events "duplicate", see
  `pipeline.delivery.record`) whose time is in the period; grouped by that time, or by the
  format of the message resent (an identical resend is of the same format).
- `rejected`: messages refused at intake (`rejections`) received in the period, laboratory
  as read from their header ("" when unreadable).
  Per channel or recipient these two are not attributable: None; per format `rejected`
  is not (a refusal records no format): None.
- `unroutable`, `read`, `failed`: deliveries in that state.
- `delivered`: deliveries handed to the recipient's side: accepted, delivered or read.
- `retries`: over deliveries, the sum of max(attempts - 1, 0).
- `median_seconds_to_delivery`, `p95_seconds_to_delivery`: over delivered deliveries, the
  first of accepted_at, delivered_at, read_at that is set, minus the message's received_at,
  in seconds; continuous percentiles (linear interpolation between the closest ranks, as
  PostgreSQL's percentile_cont), None when nothing was delivered.

Only groups with something to count appear (no zero rows for quiet days). Rows are sorted
by laboratory, then group. PostgreSQL computes the percentiles itself; SQLite, which has no
percentile function, hands over the delivered durations and they are computed here by the
same definition.

How it stays fast on a large ledger (10 million deliveries, see benchmarks/stats_scale.py):
- the deliveries are read one laboratory at a time from the (laboratory,
  message_received_at) index, which carries every column read: an index-only range scan,
  already in laboratory order, so a month of every laboratory is never sorted as a whole;
- a day or month grouping is the UTC day or month of each row, computed in SQL
  (`pipeline.stats.sql.utc_bucket`): one statement per laboratory and figure whatever the
  period's length, with a fixed handful of bound parameters (cutting the period into one
  SQL term per day made a two-year daily report exceed SQLite's limits, and a report from
  year 1 build a statement of millions of terms). The rows come from the index in time
  order, so they come already grouped;
- counts and both percentiles come from one pass (one sort per group for the percentiles);
- by format, the same range scan joins each delivery to its message by primary key (the
  format is the message's; a delivery does not copy it): one index probe per delivery,
  the other groupings' statements do not change.

The period a report may cover is bounded per grouping (`pipeline.stats.period.SPAN_LIMITS`),
and every statement by the report time limit (`pipeline.stats.sql.report_deadline`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, literal, literal_column, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from pipeline.errors import LabdispatchError
from pipeline.ledger.models import Delivery, Event, Message, Rejection
from pipeline.ledger.states import ACCEPTED, DELIVERED, FAILED, READ, UNROUTABLE
from pipeline.stats.period import Period, check_span
from pipeline.stats.sql import (
    bucket_label,
    dialect_of,
    laboratories_in,
    per_laboratory,
    report_deadline,
    utc_bucket,
)

GROUPINGS = ("day", "month", "channel", "recipient", "format")
#: Delivery states that mean the recipient's side has it.
HANDED_OVER = (ACCEPTED, DELIVERED, READ)


class StatsError(LabdispatchError):
    """A statistics request that cannot be answered as asked."""


@dataclass(frozen=True)
class DeliveryStats:
    laboratory: str
    group: str
    received: int
    duplicates: int | None
    rejected: int | None
    unroutable: int
    delivered: int
    read: int
    failed: int
    retries: int
    median_seconds_to_delivery: float | None
    p95_seconds_to_delivery: float | None


_EMPTY: dict[str, Any] = {
    "received": 0,
    "unroutable": 0,
    "delivered": 0,
    "read": 0,
    "failed": 0,
    "retries": 0,
    "median_seconds_to_delivery": None,
    "p95_seconds_to_delivery": None,
}


def delivery_stats(
    session: Session,
    period: Period,
    *,
    group_by: str,
    laboratory: str | None = None,
    timeout: float | None = None,
) -> list[DeliveryStats]:
    """The report's rows. A period longer than the grouping allows: PeriodTooLong.
    `timeout`: the seconds one statement may take (None: no limit); beyond, ReportTooSlow."""
    if group_by not in GROUPINGS:
        raise StatsError(f"cannot group by {group_by!r}: use one of {', '.join(GROUPINGS)}")
    check_span(period, group_by)
    with report_deadline(session, timeout):
        return _delivery_stats(session, period, group_by, laboratory, timeout)


def _delivery_stats(
    session: Session,
    period: Period,
    group_by: str,
    laboratory: str | None,
    timeout: float | None,
) -> list[DeliveryStats]:
    dialect = dialect_of(session)
    by_time = group_by in ("day", "month")
    by_format = group_by == "format"
    # The figures counted from the messages (received, duplicates, rejected) where the
    # grouping attributes them; None where it does not.
    from_messages = by_time or by_format
    zero = 0 if by_time else None
    zero_received = 0 if from_messages else None
    # Figures by (laboratory, group), as plain dicts until the end: a report per recipient
    # has tens of thousands of rows.
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def update(lab: str, group: str, **figures: Any) -> None:
        row = rows.get((lab, group))
        if row is None:
            row = rows[(lab, group)] = dict(
                _EMPTY, laboratory=lab, group=group, duplicates=zero_received, rejected=zero
            )
        row.update(figures)

    def group_of(moment: Any) -> ColumnElement[Any]:
        """The group: the UTC day or month of `moment`, the message's format (its table
        is then in the statement), or the delivery's channel or recipient."""
        if by_time:
            return utc_bucket(dialect, moment, group_by)
        if by_format:
            return Message.format.expression
        return _delivery_group(group_by)

    def of_deliveries(query: Any) -> Any:
        """A statement over deliveries, joined to their messages when grouped by format."""
        if by_format:
            return query.select_from(Delivery).join(Message, Message.id == Delivery.message_id)
        return query

    def label(value: Any) -> str:
        return bucket_label(value, group_by) if by_time else str(value)

    handed_at = func.coalesce(Delivery.accepted_at, Delivery.delivered_at, Delivery.read_at)
    delivered = and_(Delivery.state.in_(HANDED_OVER), handed_at.is_not(None))

    def counts(lab: str) -> Any:
        group = group_of(Delivery.message_received_at).label("grp")
        columns: list[Any] = [
            Delivery.laboratory,
            group,
            _count(Delivery.state == UNROUTABLE),
            _count(Delivery.state.in_(HANDED_OVER)),
            _count(Delivery.state == READ),
            _count(Delivery.state == FAILED),
            func.coalesce(
                func.sum(case((Delivery.attempts > 1, Delivery.attempts - 1), else_=0)), 0
            ),
        ]
        if not from_messages:  # channel / recipient: the messages with a delivery there
            columns.append(func.count(func.distinct(Delivery.message_id)))
        if dialect == "postgresql":
            # Both fractions in one call: one sort per group; NULLs (not delivered) are left
            # out. date_part gives float8 seconds.
            seconds = case(
                (delivered, func.date_part("epoch", handed_at - Delivery.message_received_at))
            )
            fractions: ColumnElement[Any] = literal_column("ARRAY[0.5, 0.95]")
            columns.append(func.percentile_cont(fractions).within_group(seconds))
        query = of_deliveries(select(*columns))
        query = query.where(*_deliveries_in(period.start, period.end, lab))
        return query.group_by(Delivery.laboratory, group)

    # One statement per laboratory: each is one range of the (laboratory,
    # message_received_at) index, read in time order, so PostgreSQL never sorts a month
    # of every laboratory to aggregate it, only one laboratory's durations for its
    # percentiles; and the laboratories' statements run side by side (`per_laboratory`).
    labs = [laboratory] if laboratory is not None else laboratories_in(session, period)
    statements = per_laboratory(session, labs, counts, timeout=timeout)
    # Each (laboratory, group) comes once from these statements: its row is made whole here
    # (a report per recipient has tens of thousands; the later updates touch few).
    for lab, value, unroutable, handed, read, failed, retries, *more in map(tuple, statements):
        received = 0 if from_messages else int(more.pop(0))
        median, p95 = more[0] if more and more[0] is not None else (None, None)
        group = label(value)
        rows[(lab, group)] = {
            "laboratory": lab,
            "group": group,
            "received": received,
            "duplicates": zero_received,
            "rejected": zero,
            "unroutable": int(unroutable),
            "delivered": int(handed),
            "read": int(read),
            "failed": int(failed),
            "retries": int(retries),
            "median_seconds_to_delivery": _seconds(median),
            "p95_seconds_to_delivery": _seconds(p95),
        }

    if dialect != "postgresql":
        durations: dict[tuple[str, str], list[float]] = defaultdict(list)
        timings = of_deliveries(
            select(
                Delivery.laboratory,
                group_of(Delivery.message_received_at),
                handed_at,
                Delivery.message_received_at,
            )
        ).where(delivered, *_deliveries_in(period.start, period.end, laboratory))
        for lab, value, at, received_at in session.execute(timings):
            durations[(lab, label(value))].append((at - received_at).total_seconds())
        for (lab, group), values in durations.items():
            values.sort()
            update(
                lab,
                group,
                median_seconds_to_delivery=_seconds(percentile_cont(values, 0.5)),
                p95_seconds_to_delivery=_seconds(percentile_cont(values, 0.95)),
            )

    if from_messages:
        figures = [
            ("received", _received(period, laboratory, group_of)),
            ("duplicates", _duplicates(period, laboratory, group_of)),
        ]
        if by_time:
            figures.append(("rejected", _rejected(period, laboratory, group_of)))
        for column, query in figures:
            for lab, value, count in session.execute(query):
                update(lab, label(value), **{column: int(count)})
    return [DeliveryStats(**rows[key]) for key in sorted(rows)]


def _deliveries_in(start: datetime, end: datetime, laboratory: str | None) -> list[Any]:
    conditions = [Delivery.message_received_at >= start, Delivery.message_received_at < end]
    if laboratory is not None:
        conditions.append(Delivery.laboratory == laboratory)
    return conditions


def percentile_cont(ordered: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont over values already sorted: the value at rank
    fraction * (n - 1), interpolated linearly between the two closest ranks."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (position - lower) * (ordered[upper] - ordered[lower])


def _delivery_group(group_by: str) -> ColumnElement[Any]:
    if group_by == "channel":
        return func.coalesce(Delivery.channel_kind, "none")
    return func.coalesce(Delivery.recipient_key, literal("unknown:") + Delivery.wanted)


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


#: The group of a row, from the moment it is dated by.
Grouping = Callable[[Any], ColumnElement[Any]]


def _received(period: Period, laboratory: str | None, group_of: Grouping) -> Any:
    group = group_of(Message.received_at)
    query = select(Message.laboratory, group, func.count()).where(
        Message.received_at >= period.start, Message.received_at < period.end
    )
    if laboratory is not None:
        query = query.where(Message.laboratory == laboratory)
    return query.group_by(Message.laboratory, group)


def _duplicates(period: Period, laboratory: str | None, group_of: Grouping) -> Any:
    group = group_of(Event.at)
    query = (
        select(Message.laboratory, group, func.count())
        .select_from(Event)
        .join(Message, Message.id == Event.message_id)
        .where(
            # A literal, not a parameter: the partial index `ix_events_duplicate_at` serves
            # only a query that names its kind (SQLite, and PostgreSQL's generic plans).
            Event.kind == literal_column("'duplicate'"),
            Event.at >= period.start,
            Event.at < period.end,
        )
    )
    if laboratory is not None:
        query = query.where(Message.laboratory == laboratory)
    return query.group_by(Message.laboratory, group)


def _rejected(period: Period, laboratory: str | None, group_of: Grouping) -> Any:
    group = group_of(Rejection.received_at)
    query = select(Rejection.laboratory, group, func.count()).where(
        Rejection.received_at >= period.start, Rejection.received_at < period.end
    )
    if laboratory is not None:
        query = query.where(Rejection.laboratory == laboratory)
    return query.group_by(Rejection.laboratory, group)


def _seconds(value: Any) -> float | None:
    """Rounded to the microsecond: both engines then give the same figure."""
    return None if value is None else round(float(value), 6)
