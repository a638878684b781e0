"""Is secure messaging used? Recipients equipped versus recipients who open what they get.

Definitions (the same for the CLI, the API and the dashboard):

- **equipped**: a recipient of the directory with a usable channel — at least one channel
  AND a certificate valid at `now` (every channel seals for the recipient, so without a
  valid certificate nothing can be sent, see `pipeline.sealing.keys.recipient_certificate`).
  The directory keeps no history of channels and certificates, so a past period is measured
  against the directory as it stands now.
- **active**: an equipped recipient with, in the period, at least one delivery whose
  `read_at` falls in it, or a matched receipt (MDN `processed` or `displayed`) received in
  it. Active is a subset of equipped, so the rate is at most 1.
- Rows. For each laboratory: `equipped` = the equipped recipients it addressed (a delivery
  from one of its messages received in the period), `active` = those of them active on that
  laboratory's deliveries (a read or a receipt in the period, whatever the message's date).
  Laboratory "*" is the whole directory: every equipped recipient, and every active one.
  Each of these comes as specialty "*" (all) and one row per specialty ("unknown" when the
  directory has none). With a `laboratory` filter only that laboratory's rows are returned
  (a laboratory sees nothing of the others, not even the directory-wide figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import and_, exists, func, literal, select, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from pipeline.db import utcnow
from pipeline.ledger.models import Delivery, Receipt
from pipeline.recipients.models import Certificate, Channel, Recipient
from pipeline.stats.period import Period, check_span
from pipeline.stats.sql import laboratories_in, prepare_report, report_deadline

#: Every laboratory, or every specialty.
ALL = "*"
UNKNOWN_SPECIALTY = "unknown"
#: MDN dispositions that say the recipient's side took the result in.
ACKNOWLEDGING = ("processed", "displayed")


@dataclass(frozen=True)
class AdoptionStats:
    #: Columns computed from the others, rendered after them (see `pipeline.stats.render`).
    DERIVED: ClassVar[tuple[str, ...]] = ("rate",)

    laboratory: str
    specialty: str
    equipped: int
    active: int

    @property
    def rate(self) -> float | None:
        return self.active / self.equipped if self.equipped else None


def adoption_stats(
    session: Session,
    period: Period,
    *,
    laboratory: str | None = None,
    now: datetime | None = None,
    timeout: float | None = None,
) -> list[AdoptionStats]:
    """Rows sorted by laboratory then specialty ("*" first in each).

    One statement, built for a month of millions of deliveries: every (laboratory,
    recipient) pair seen in the period is tagged — addressed (a delivery of a message
    received in the period), active (a read or an acknowledging receipt in the period) —
    by ONE hash aggregation over the union of the three sources, instead of joining large
    sets to each other; then joined to the equipped recipients and counted.

    A period over a year: PeriodTooLong. `timeout`: seconds the report may run (None: no
    limit); beyond, ReportTooSlow."""
    check_span(period, "adoption")
    with report_deadline(session, timeout):
        return _adoption_stats(session, period, laboratory, now)


def _adoption_stats(
    session: Session, period: Period, laboratory: str | None, now: datetime | None
) -> list[AdoptionStats]:
    equipped = equipped_recipients(now or utcnow()).cte("equipped")
    # Named laboratories: the (laboratory, message_received_at) index is then read as one
    # range per laboratory, from the index alone.
    labs = [laboratory] if laboratory is not None else laboratories_in(session, period)
    addressed = select(
        Delivery.laboratory,
        Delivery.recipient_id,
        literal(1).label("addressed"),
        literal(0).label("active"),
    ).where(
        Delivery.laboratory.in_(labs),
        Delivery.message_received_at >= period.start,
        Delivery.message_received_at < period.end,
        Delivery.recipient_id.is_not(None),
    )
    tagged = union_all(addressed, *_activity(period, laboratory)).subquery("tagged")
    pairs = (
        select(
            tagged.c.laboratory,
            tagged.c.recipient_id,
            func.max(tagged.c.addressed).label("addressed"),
            func.max(tagged.c.active).label("active"),
        )
        .group_by(tagged.c.laboratory, tagged.c.recipient_id)
        .cte("pairs")
    )
    was_addressed = pairs.c.addressed == 1
    per_lab = (
        select(
            pairs.c.laboratory,
            equipped.c.specialty,
            func.count().filter(was_addressed),
            func.count().filter(and_(was_addressed, pairs.c.active == 1)),
        )
        .join(equipped, equipped.c.id == pairs.c.recipient_id)
        .group_by(pairs.c.laboratory, equipped.c.specialty)
    )
    query: Any = per_lab
    if laboratory is None:
        anywhere = (
            select(pairs.c.recipient_id).where(pairs.c.active == 1).distinct().subquery("anywhere")
        )
        overall = (
            select(
                literal(ALL).label("laboratory"),
                equipped.c.specialty,
                func.count(),
                func.count(anywhere.c.recipient_id),
            )
            .select_from(equipped)
            .outerjoin(anywhere, anywhere.c.recipient_id == equipped.c.id)
            .group_by(equipped.c.specialty)
        )
        query = union_all(per_lab, overall)

    rows: dict[tuple[str, str], list[int]] = {}
    for lab, specialty, count, active_count in session.execute(query):
        if not count:
            continue  # recipients this laboratory reached only with older results
        for key in ((lab, specialty), (lab, ALL)):
            counts = rows.setdefault(key, [0, 0])
            counts[0] += count
            counts[1] += active_count
    return [
        AdoptionStats(lab, specialty, counts[0], counts[1])
        for (lab, specialty), counts in sorted(rows.items())
    ]


def directory_adoption(session: Session, period: Period, *, now: datetime) -> tuple[int, int]:
    """(equipped, active) over the whole directory: the dashboard's one figure."""
    prepare_report(session)
    equipped = equipped_recipients(now).subquery("equipped")
    activity = union_all(*_activity(period, None)).subquery("activity")
    active_ids = select(activity.c.recipient_id).distinct().subquery("active_ids")
    count, active_count = session.execute(
        select(func.count(), func.count(active_ids.c.recipient_id))
        .select_from(equipped)
        .outerjoin(active_ids, active_ids.c.recipient_id == equipped.c.id)
    ).one()
    return int(count), int(active_count)


def equipped_recipients(now: datetime) -> Select[int, str]:
    """Recipients with a channel and a certificate valid at `now`, with their specialty."""
    has_channel = exists().where(Channel.recipient_id == Recipient.id)
    has_certificate = exists().where(
        Certificate.recipient_id == Recipient.id,
        Certificate.not_before <= now,
        Certificate.not_after >= now,
    )
    specialty = func.coalesce(func.nullif(Recipient.specialty, ""), UNKNOWN_SPECIALTY)
    return select(Recipient.id.label("id"), specialty.label("specialty")).where(
        has_channel, has_certificate
    )


def _activity(period: Period, laboratory: str | None) -> list[Select[str, int | None, int, int]]:
    """(laboratory, recipient_id, addressed=0, active=1) for each read and each
    acknowledging receipt in the period (duplicates left to the caller's aggregate)."""
    tags = (literal(0).label("addressed"), literal(1).label("active"))
    read = select(Delivery.laboratory, Delivery.recipient_id, *tags).where(
        Delivery.read_at >= period.start,
        Delivery.read_at < period.end,
        Delivery.recipient_id.is_not(None),
    )
    acknowledged = (
        select(Delivery.laboratory, Delivery.recipient_id, *tags)
        .join(Receipt, Receipt.delivery_id == Delivery.id)
        .where(
            Receipt.received_at >= period.start,
            Receipt.received_at < period.end,
            Receipt.kind == "mdn",
            Receipt.disposition.in_(ACKNOWLEDGING),
            Delivery.recipient_id.is_not(None),
        )
    )
    if laboratory is not None:
        read = read.where(Delivery.laboratory == laboratory)
        acknowledged = acknowledged.where(Delivery.laboratory == laboratory)
    return [read, acknowledged]
