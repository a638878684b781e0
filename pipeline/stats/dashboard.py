"""The operations dashboard's figures, in one snapshot read from the ledger.

What each block means (`DashboardSnapshot.as_json` gives exactly this shape):

- `throughput`: the last 60 minutes, one bucket per minute (UTC minute starts, oldest first,
  the current minute last). `received`: messages recorded (`received_at`); `delivered`:
  deliveries handed to the recipient's side, at the first of `accepted_at`, `delivered_at`,
  `read_at` that is set; `failed`: deliveries given up, at `failed_at`.
- `deliveries_by_state`: deliveries created in the last 24 hours, by state.
- `received_by_format`: messages recorded in the last 24 hours (every revision, held ones
  included, as the deliveries report's `received`), by the format the laboratory sent:
  "hl7v2", "hprim-sante", "hprim-medecins" always (0 when none), then any other found.
- `stages`: what waits at each stage and since when — route: messages still `received`
  (age from `received_at`); seal: open deliveries (pending/retrying) without an envelope;
  send: open deliveries with one, due or not (ages from `created_at`).
- `slowest_destinations`: open deliveries grouped by destination — the channel kind and the
  address's domain (`mail:` the part after @, `https:` the host, plain `mailbox` for the
  file drop) — oldest first, at most 10, each with its failures of the last 24 hours.
- `recent_rejects`: the last 20 messages refused at intake, newest first.
- `adoption`: the whole directory over the last 30 days (today and the 29 before), as in
  `pipeline.stats.adoption`.

Every query reads a window through an index (see the 0005 migration): `updated_at` for the
deliveries' recent changes (every change of a delivery bumps it, and creation sets it, so
"changed since t" is a superset the exact condition is then checked on), `received_at`
for messages and rejections (by format, the window's messages are then read: a day of
results, as the deliveries' 24 hours), the state index for what is open.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from pipeline.hprim.facts import FORMAT_MEDECINS, FORMAT_SANTE
from pipeline.ledger.models import Delivery, Message, Rejection
from pipeline.ledger.states import DELIVERY_STATES, OPEN_STATES, RECEIVED
from pipeline.reading import HL7V2
from pipeline.stats.adoption import directory_adoption
from pipeline.stats.period import day_period
from pipeline.stats.sql import bucket_label, dialect_of, prepare_report, utc_bucket

MINUTES = 60
SLOWEST = 10
RECENT_REJECTS = 20
ADOPTION_DAYS = 30
#: The formats a laboratory may send (`Message.format`), in the order shown.
FORMATS = (HL7V2, FORMAT_SANTE, FORMAT_MEDECINS)


@dataclass(frozen=True)
class Throughput:
    minutes: tuple[datetime, ...]
    received: tuple[int, ...]
    delivered: tuple[int, ...]
    failed: tuple[int, ...]


@dataclass(frozen=True)
class Stage:
    stage: str
    waiting: int
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class Destination:
    destination: str
    open: int
    oldest_age_seconds: float
    failed_24h: int


@dataclass(frozen=True)
class Reject:
    at: datetime
    laboratory: str
    control_id: str
    ack_code: str
    reason: str


@dataclass(frozen=True)
class Adoption:
    first_day: date
    last_day: date
    equipped: int
    active: int


@dataclass(frozen=True)
class DashboardSnapshot:
    generated_at: datetime
    throughput: Throughput
    deliveries_by_state: dict[str, int] = field(hash=False)
    received_by_format: dict[str, int] = field(hash=False)
    stages: tuple[Stage, ...]
    slowest_destinations: tuple[Destination, ...]
    recent_rejects: tuple[Reject, ...]
    adoption: Adoption

    def as_json(self) -> dict[str, Any]:
        t = self.throughput
        return {
            "generated_at": self.generated_at.isoformat(),
            "throughput": {
                "minutes": [m.isoformat() for m in t.minutes],
                "received": list(t.received),
                "delivered": list(t.delivered),
                "failed": list(t.failed),
            },
            "deliveries_by_state": dict(self.deliveries_by_state),
            "received_by_format": dict(self.received_by_format),
            "stages": [
                {"stage": s.stage, "waiting": s.waiting, "oldest_age_seconds": s.oldest_age_seconds}
                for s in self.stages
            ],
            "slowest_destinations": [
                {
                    "destination": d.destination,
                    "open": d.open,
                    "oldest_age_seconds": d.oldest_age_seconds,
                    "failed_24h": d.failed_24h,
                }
                for d in self.slowest_destinations
            ],
            "recent_rejects": [
                {
                    "at": r.at.isoformat(),
                    "laboratory": r.laboratory,
                    "control_id": r.control_id,
                    "ack_code": r.ack_code,
                    "reason": r.reason,
                }
                for r in self.recent_rejects
            ],
            "adoption": {
                "from": self.adoption.first_day.isoformat(),
                "to": self.adoption.last_day.isoformat(),
                "equipped": self.adoption.equipped,
                "active": self.adoption.active,
            },
        }


def dashboard_snapshot(session: Session, now: datetime) -> DashboardSnapshot:
    return DashboardSnapshot(
        generated_at=now,
        throughput=throughput(session, now),
        deliveries_by_state=deliveries_by_state(session, now),
        received_by_format=received_by_format(session, now),
        stages=stages(session, now),
        slowest_destinations=slowest_destinations(session, now),
        recent_rejects=recent_rejects(session),
        adoption=adoption(session, now),
    )


def throughput(session: Session, now: datetime) -> Throughput:
    last = now.replace(second=0, microsecond=0)
    minutes = tuple(last - timedelta(minutes=MINUTES - 1 - i) for i in range(MINUTES))
    start, end = minutes[0], last + timedelta(minutes=1)
    dialect = dialect_of(session)
    prepare_report(session)

    def per_minute(moment: Any, *conditions: ColumnElement[bool]) -> tuple[int, ...]:
        bucket = utc_bucket(dialect, moment, "minute")
        counts = {
            bucket_label(value, "minute"): count
            for value, count in session.execute(
                select(bucket, func.count())
                .where(*conditions, moment >= start, moment < end)
                .group_by(bucket)
            )
        }
        return tuple(counts.get(m.strftime("%Y-%m-%dT%H:%M"), 0) for m in minutes)

    handed_at = func.coalesce(Delivery.accepted_at, Delivery.delivered_at, Delivery.read_at)
    changed = Delivery.updated_at >= start  # the index; the exact condition follows
    return Throughput(
        minutes=minutes,
        received=per_minute(Message.received_at),
        delivered=per_minute(
            handed_at,
            changed,
            or_(
                Delivery.accepted_at >= start,
                Delivery.delivered_at >= start,
                Delivery.read_at >= start,
            ),
        ),
        failed=per_minute(Delivery.failed_at, changed),
    )


def deliveries_by_state(session: Session, now: datetime) -> dict[str, int]:
    since = now - timedelta(hours=24)
    counts = dict.fromkeys(DELIVERY_STATES, 0)
    counts.update(
        session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.updated_at >= since, Delivery.created_at >= since)
            .group_by(Delivery.state)
        ).all()
    )
    return counts


def received_by_format(session: Session, now: datetime) -> dict[str, int]:
    since = now - timedelta(hours=24)
    counts = dict.fromkeys(FORMATS, 0)
    counts.update(
        session.execute(
            select(Message.format, func.count())
            .where(Message.received_at >= since)
            .group_by(Message.format)
            .order_by(Message.format)
        ).all()
    )
    return counts


def stages(session: Session, now: datetime) -> tuple[Stage, ...]:
    route_count = session.scalar(
        select(func.count()).select_from(Message).where(Message.state == RECEIVED)
    )
    route_oldest = session.scalar(
        select(Message.received_at)
        .where(Message.state == RECEIVED)
        .order_by(Message.received_at)
        .limit(1)
    )
    found = [Stage("route", route_count or 0, _age(now, route_oldest))]
    for stage, condition in (
        ("seal", Delivery.envelope.is_(None)),
        ("send", Delivery.envelope.is_not(None)),
    ):
        where = and_(Delivery.state.in_(OPEN_STATES), condition)
        count = session.scalar(select(func.count()).select_from(Delivery).where(where))
        oldest = session.scalar(
            select(Delivery.created_at).where(where).order_by(Delivery.created_at).limit(1)
        )
        found.append(Stage(stage, count or 0, _age(now, oldest)))
    return tuple(found)


def slowest_destinations(session: Session, now: datetime) -> tuple[Destination, ...]:
    """Grouped by address in SQL (open deliveries are few), then by domain here."""
    open_count: Counter[str] = Counter()
    oldest: dict[str, datetime] = {}
    for kind, address, count, first in session.execute(
        select(
            Delivery.channel_kind,
            Delivery.channel_address,
            func.count(),
            func.min(Delivery.created_at),
        )
        .where(Delivery.state.in_(OPEN_STATES))
        .group_by(Delivery.channel_kind, Delivery.channel_address)
    ):
        name = destination_name(kind, address)
        open_count[name] += count
        first_at = _as_datetime(first)
        if name not in oldest or first_at < oldest[name]:
            oldest[name] = first_at
    slowest = sorted(oldest, key=lambda name: (oldest[name], name))[:SLOWEST]

    since = now - timedelta(hours=24)
    failed: Counter[str] = Counter()
    if slowest:
        for kind, address, count in session.execute(
            select(Delivery.channel_kind, Delivery.channel_address, func.count())
            .where(Delivery.updated_at >= since, Delivery.failed_at >= since)
            .group_by(Delivery.channel_kind, Delivery.channel_address)
        ):
            failed[destination_name(kind, address)] += count
    return tuple(
        Destination(name, open_count[name], _age(now, oldest[name]) or 0.0, failed[name])
        for name in slowest
    )


def destination_name(kind: str | None, address: str | None) -> str:
    """`mail:example.org`, `https:host.example`, `mailbox`: where deliveries pile up."""
    if kind == "mailbox":
        return "mailbox"
    address = address or ""
    if kind in ("mail", "mssante"):
        return f"{kind}:{address.rpartition('@')[2].lower()}"
    if kind == "https":
        return f"https:{(urlsplit(address).hostname or address).lower()}"
    return f"{kind or 'none'}:{address}"


def recent_rejects(session: Session) -> tuple[Reject, ...]:
    return tuple(
        Reject(r.received_at, r.laboratory, r.control_id, r.ack_code, r.reason)
        for r in session.execute(
            select(
                Rejection.received_at,
                Rejection.laboratory,
                Rejection.control_id,
                Rejection.ack_code,
                Rejection.reason,
            )
            .order_by(Rejection.received_at.desc(), Rejection.id.desc())
            .limit(RECENT_REJECTS)
        )
    )


def adoption(session: Session, now: datetime) -> Adoption:
    today = now.date()
    period = day_period(today - timedelta(days=ADOPTION_DAYS - 1), today)
    equipped, active = directory_adoption(session, period, now=now)
    return Adoption(period.first_day, period.last_day, equipped, active)


def _age(now: datetime, since: datetime | None) -> float | None:
    if since is None:
        return None
    return max((now - since).total_seconds(), 0.0)


def _as_datetime(value: Any) -> datetime:
    """MIN() over a timestamp bypasses the column type on SQLite: it comes back as text."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
