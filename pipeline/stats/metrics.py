"""The ledger's figures behind `/metrics`, as plain data (the exposition is the API's).

A scrape must stay cheap on a ledger of ten million deliveries, every 15 seconds, however
many people look. So nothing here counts a whole table:

- **Counters** (results received, rejected; deliveries handed over, read, failed, retried)
  are kept by this process, from zero at its first reading, and advanced at each reading
  by what was added since the previous one: events and rejections with an ID above the
  last one seen (a primary-key range). Prometheus takes a counter's restart in its stride
  (`rate`, `increase`), and every process's series start at 0 for each laboratory and
  channel the ledger knows, so the first increment is never lost to a series appearing.
  A row whose transaction was still open when we looked has an ID below the last one seen:
  the IDs skipped are kept as holes and looked up again at each reading, for
  `HOLE_TTL` (longer than any transaction of ours), so a late commit is counted once.
  A reading's cost follows what was written since the last one, not the ledger's size:
  measured on 10 million deliveries (PostgreSQL, the 2-core development machine), ~10 ms
  with nothing new, ~0.4-0.6 s after 15 seconds at 1,000 results/s (150,000 events).
- **The latency histogram** (received -> handed over) is advanced the same way, from the
  `accepted` events, bucketed in SQL.
- **Gauges** read what is open through the indexes that exist for the workers: messages
  by state, deliveries by (state, next attempt), the small `circuits` table. Stage backlogs
  are the dashboard's own (`pipeline.stats.dashboard.stages`), so both show one figure.
- **Certificate horizons** change only when the directory or the key files do: they are
  read at most every `CERTIFICATES_EVERY`.

What counts as what (event kinds, `pipeline.ledger.states`): received = a new message
recorded (a resend of identical bytes is a duplicate, not a result); handed over = an
`accepted` event (the transport took it: a relay, a mailbox, an HTTPS endpoint); read = a
`read` event that moved the delivery to read; failed = a `failed` event that moved it to
failed (a late failure report about a delivery already delivered, or a second report of
the same failure, moves nothing and is not counted).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import Float, and_, case, func, literal, or_, select, type_coerce
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from pipeline.delivery.circuits import CircuitReport, read_circuits
from pipeline.ledger.models import Delivery, Event, Message, Rejection
from pipeline.ledger.states import RETRYING
from pipeline.recipients.models import CHANNEL_KINDS, Certificate, Channel, Laboratory
from pipeline.settings import SigningSettings
from pipeline.stats.dashboard import Stage, stages
from pipeline.stats.sql import dialect_of

#: Upper bounds (seconds) of the delivery latency buckets: most results go out in seconds,
#: a retried one in minutes to hours; a day and more is the last bucket.
LATENCY_BUCKETS = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
)  # fmt: skip
#: How far ahead a certificate's end counts as "expiring".
EXPIRY_WARNING = timedelta(days=30)
#: How long a skipped ID is looked for: longer than any transaction that writes events.
HOLE_TTL = timedelta(minutes=15)
#: Most holes kept (each a few bytes); beyond, the oldest are given up.
MAX_HOLES = 100_000
#: At the first reading, how many IDs back to look for rows of transactions still open.
LOOKBACK_IDS = 10_000
#: How often the certificate horizons are read again.
CERTIFICATES_EVERY = timedelta(minutes=1)
#: Label of a rejection whose MSH-4 was unreadable or names no laboratory we know (labels
#: must not take arbitrary values from refused input).
UNKNOWN_LABORATORY = "unknown"

#: Event kinds the counters follow: a message's steps, and a delivery's.
_MESSAGE_KINDS = ("received", "duplicate")
_DELIVERY_KINDS = ("unroutable", "accepted", "read", "failed", "retried")
_IN_CHUNKS = 500  # IDs per IN (...) list

LabChannel = tuple[str, str]


@dataclass
class LatencyHistogram:
    """Deliveries handed over, by time since their result was received."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    #: Per bucket (not cumulative); the last one is above the largest bound.
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total_seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, deliveries at or under it), ending with (inf, all)."""
        running, result = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result


@dataclass
class LedgerCounters:
    """Running totals since `started_at`, this process's first reading."""

    started_at: datetime
    received: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    unroutable: Counter[str] = field(default_factory=Counter)
    delivered: Counter[LabChannel] = field(default_factory=Counter)
    read: Counter[LabChannel] = field(default_factory=Counter)
    failed: Counter[LabChannel] = field(default_factory=Counter)
    retried: Counter[LabChannel] = field(default_factory=Counter)
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    #: When each laboratory's latest result was received (from the ledger at the first
    #: reading, then from the `received` events).
    last_received: dict[str, datetime] = field(default_factory=dict)

    def seed(self, laboratories: Iterable[str]) -> None:
        """Give every known laboratory and channel its series at 0."""
        for lab in laboratories:
            for counter in (self.received, self.duplicates, self.rejected, self.unroutable):
                counter[lab] += 0
            for kind in CHANNEL_KINDS:
                for by_channel in (self.delivered, self.read, self.failed, self.retried):
                    by_channel[(lab, kind)] += 0
        self.rejected[UNKNOWN_LABORATORY] += 0
        for kind in CHANNEL_KINDS:
            self.latency.setdefault(kind, LatencyHistogram())

    @property
    def laboratories(self) -> set[str]:
        return set(self.received) | set(self.last_received)


@dataclass(frozen=True)
class RetryBacklog:
    #: Deliveries waiting for their next try after a transient failure.
    retrying: int
    #: Those whose next try is due (a growing number: the workers are not keeping up).
    due: int


@dataclass(frozen=True)
class CertificateHorizon:
    """When the first certificate in use of a kind ends, and how many end soon."""

    #: recipient (the directory's encryption certificates) or signing (the laboratories').
    kind: str
    earliest: datetime | None
    expiring: int


@dataclass(frozen=True)
class SigningCertificate:
    """A laboratory's signing certificate file: the earliest end among it and its chain."""

    #: The laboratory (`<LAB>.crt` in the signing directory), or "default".
    laboratory: str
    not_after: datetime


@dataclass(frozen=True)
class Certificates:
    horizons: tuple[CertificateHorizon, ...]
    signing: tuple[SigningCertificate, ...]
    read_at: datetime


@dataclass(frozen=True)
class MetricsReading:
    at: datetime
    counters: LedgerCounters
    stages: tuple[Stage, ...]
    retries: dict[str, RetryBacklog]
    circuits: tuple[CircuitReport, ...]
    certificates: Certificates


@dataclass
class _Tail:
    """How far an append-only table was counted: the last ID seen, and the IDs below it not
    seen yet (their transaction may still commit), with when they were first missed."""

    last_id: int
    holes: dict[int, datetime] = field(default_factory=dict)

    def forget_old(self, now: datetime) -> None:
        expired = now - HOLE_TTL
        self.holes = {i: at for i, at in self.holes.items() if at > expired}
        if len(self.holes) > MAX_HOLES:
            self.holes = dict(sorted(self.holes.items())[-MAX_HOLES:])


class LedgerMeter:
    """The running counters of one process, and the readings built on them.

    Not thread-safe: the caller serialises readings (and may reuse one for a few seconds)."""

    def __init__(self, signing: SigningSettings | None = None) -> None:
        self.signing = signing or SigningSettings()
        self._counters: LedgerCounters | None = None
        self._events = _Tail(0)
        self._rejections = _Tail(0)
        self._certificates: Certificates | None = None

    def read(self, sessions: sessionmaker[Session], now: datetime) -> MetricsReading:
        """Advance the counters and read the gauges, in one consistent view of the ledger.
        On a database error nothing is advanced: the next reading counts it all."""
        with sessions() as session:
            if dialect_of(session) == "postgresql":
                # One snapshot for every statement: a row cannot slip between the maximum
                # ID read and the ranges counted below it.
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            if self._counters is None:
                self._counters = self._start(session, now)
            else:
                self._advance(session, self._counters, now)
            counters = copy.deepcopy(self._counters)
            if self._certificates is None or now - self._certificates.read_at >= CERTIFICATES_EVERY:
                self._certificates = read_certificates(session, self.signing, now)
            reading = MetricsReading(
                at=now,
                counters=counters,
                stages=stages(session, now),
                retries=retry_backlog(session, now),
                circuits=tuple(read_circuits(session, now)),
                certificates=self._certificates,
            )
            session.rollback()
        return reading

    # --- counters ----------------------------------------------------------------------------

    def _start(self, session: Session, now: datetime) -> LedgerCounters:
        counters = LedgerCounters(started_at=now)
        counters.last_received = last_received(session)
        directory_labs = set(session.scalars(select(Laboratory.code)))
        counters.seed(set(counters.last_received) | directory_labs)
        for tail, column in ((self._events, Event.id), (self._rejections, Rejection.id)):
            tail.last_id = session.scalar(select(func.max(column))) or 0
            lookback = max(tail.last_id - LOOKBACK_IDS, 0)
            tail.holes = dict.fromkeys(_gaps(session, column, lookback, tail.last_id), now)
        return counters

    def _advance(self, session: Session, counters: LedgerCounters, now: datetime) -> None:
        # Read everything first, apply after: an error half-way leaves the counters as
        # they were, and the same rows are read again next time.
        events, rejections = self._events, self._rejections
        event_max = session.scalar(select(func.max(Event.id))) or 0
        rejection_max = session.scalar(select(func.max(Rejection.id))) or 0
        event_rows: list[Any] = []
        new_event_holes: list[int] = []
        if event_max > events.last_id:
            event_rows += _event_counts(session, Event.id > events.last_id, Event.id <= event_max)
            new_event_holes = _gaps(session, Event.id, events.last_id, event_max)
        found_events: set[int] = set()
        for chunk in _chunks(sorted(events.holes)):
            rows = _event_counts(session, Event.id.in_(chunk), per_row=True)
            found_events.update(row.id for row in rows)
            event_rows += rows
        rejection_rows: list[Any] = []
        new_rejection_holes: list[int] = []
        if rejection_max > rejections.last_id:
            rejection_rows += _rejection_counts(
                session, Rejection.id > rejections.last_id, Rejection.id <= rejection_max
            )
            new_rejection_holes = _gaps(session, Rejection.id, rejections.last_id, rejection_max)
        found_rejections: set[int] = set()
        for chunk in _chunks(sorted(rejections.holes)):
            filled = _rejection_counts(session, Rejection.id.in_(chunk), per_row=True)
            found_rejections.update(row.id for row in filled)
            rejection_rows += filled

        for row in event_rows:
            _apply_event_row(counters, row)
        known = counters.laboratories
        for row in rejection_rows:
            lab = row.laboratory if row.laboratory in known else UNKNOWN_LABORATORY
            counters.rejected[lab] += row.n
        for tail, top, found, new_holes in (
            (events, event_max, found_events, new_event_holes),
            (rejections, rejection_max, found_rejections, new_rejection_holes),
        ):
            for row_id in found:
                tail.holes.pop(row_id, None)
            tail.holes.update(dict.fromkeys(new_holes, now))
            tail.last_id = max(tail.last_id, top)
            tail.forget_old(now)


def _apply_event_row(counters: LedgerCounters, row: Any) -> None:
    lab, channel, kind, n = row.laboratory, row.channel_kind or "", row.kind, row.n
    if kind == "received":
        counters.received[lab] += n
        if row.latest is not None:
            latest = _as_datetime(row.latest)
            if lab not in counters.last_received or counters.last_received[lab] < latest:
                counters.last_received[lab] = latest
    elif kind == "duplicate":
        counters.duplicates[lab] += n
    elif kind == "unroutable":
        counters.unroutable[lab] += n
    elif kind == "accepted":
        counters.delivered[(lab, channel)] += n
        histogram = counters.latency.setdefault(channel, LatencyHistogram())
        histogram.counts[row.bucket] += n
        histogram.total_seconds += float(row.seconds or 0.0)
    elif kind == "read":
        counters.read[(lab, channel)] += n
    elif kind == "failed":
        counters.failed[(lab, channel)] += n
    elif kind == "retried":
        counters.retried[(lab, channel)] += n


def _event_counts(
    session: Session, *conditions: ColumnElement[bool], per_row: bool = False
) -> list[Any]:
    """Counted events matching `conditions`, grouped by what labels them (and by ID when
    `per_row`, to know which holes were filled). Two queries, each with one primary-key
    join: a message's steps read its laboratory from `messages`; a delivery's read its
    laboratory, channel and reception time from `deliveries`, which carries them."""
    message_keys: list[Any] = [Event.kind, Message.laboratory]
    if per_row:
        message_keys.insert(0, Event.id)
    rows: list[Any] = list(
        session.execute(
            select(
                *message_keys,
                literal(None).label("channel_kind"),
                literal(0).label("bucket"),
                func.count().label("n"),
                literal(0.0).label("seconds"),
                func.max(Event.at).label("latest"),
            )
            .select_from(Event)
            .join(Message, Message.id == Event.message_id)
            .where(*conditions, Event.kind.in_(_MESSAGE_KINDS))
            .group_by(*message_keys)
        )
    )
    steps = (
        select(
            Event.id,
            Event.kind,
            Delivery.laboratory,
            Delivery.channel_kind,
            _seconds_between(dialect_of(session), Event.at, Delivery.message_received_at).label(
                "seconds"
            ),
        )
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(
            *conditions,
            Event.kind.in_(_DELIVERY_KINDS),
            or_(
                Event.kind.not_in(("read", "failed")),
                and_(Event.kind == "read", Delivery.read_at == Event.at),
                and_(Event.kind == "failed", Delivery.failed_at == Event.at),
            ),
        )
        .subquery()
    )
    # The latency is worked out once per row (below), then bucketed and summed.
    bucket = case(
        (steps.c.kind != "accepted", 0),
        *[(steps.c.seconds <= bound, index) for index, bound in enumerate(LATENCY_BUCKETS)],
        else_=len(LATENCY_BUCKETS),
    ).label("bucket")
    delivery_keys: list[Any] = [steps.c.kind, steps.c.laboratory, steps.c.channel_kind, bucket]
    if per_row:
        delivery_keys.insert(0, steps.c.id)
    rows += session.execute(
        select(
            *delivery_keys,
            func.count().label("n"),
            func.sum(case((steps.c.kind == "accepted", steps.c.seconds), else_=0.0)).label(
                "seconds"
            ),
            literal(None).label("latest"),
        ).group_by(*delivery_keys)
    ).all()
    return rows


def _rejection_counts(
    session: Session, *conditions: ColumnElement[bool], per_row: bool = False
) -> Sequence[Any]:
    keys: list[Any] = [Rejection.laboratory]
    if per_row:
        keys.insert(0, Rejection.id)
    return session.execute(
        select(*keys, func.count().label("n")).where(*conditions).group_by(*keys)
    ).all()


def _gaps(session: Session, column: Any, after: int, upto: int) -> list[int]:
    """The IDs in (after, upto] with no visible row. Counting the range says whether there
    are any; if so, a window over it finds the few places where an ID does not follow the
    one before (no row per ID comes back)."""
    if upto <= after:
        return []
    present = session.scalar(select(func.count()).where(column > after, column <= upto))
    if present == upto - after:
        return []  # the usual case, read from the index alone
    ordered = (
        select(
            column.label("id"),
            func.lag(column, 1, after).over(order_by=column).label("before"),
        )
        .where(column > after, column <= upto)
        .subquery()
    )
    missing: list[int] = []
    for before, row_id in session.execute(
        select(ordered.c.before, ordered.c.id).where(ordered.c.id - ordered.c.before > 1)
    ):
        if row_id - before - 1 > MAX_HOLES:
            continue  # a sequence that jumped, not rows in flight
        missing.extend(range(before + 1, row_id))
    return missing


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), _IN_CHUNKS):
        yield ids[start : start + _IN_CHUNKS]


def _seconds_between(dialect: str, later: Any, earlier: Any) -> ColumnElement[float]:
    if dialect == "postgresql":
        return type_coerce(func.extract("epoch", later - earlier), Float())
    # SQLite keeps UTC text (`pipeline.db.UTCDateTime`); julianday reads it to the ms.
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def last_received(session: Session) -> dict[str, datetime]:
    """When each laboratory's latest result was received: its distinct laboratories found
    by skipping along the (laboratory, …) index, then one index probe each — a few
    milliseconds however large the ledger (a GROUP BY would read every message)."""
    labs = select(func.min(Message.laboratory).label("lab")).cte("labs", recursive=True)
    labs = labs.union_all(
        select(
            select(func.min(Message.laboratory))
            .where(Message.laboratory > labs.c.lab)
            .scalar_subquery()
        ).where(labs.c.lab.is_not(None))
    )
    latest = (
        select(func.max(Message.received_at))
        .where(Message.laboratory == labs.c.lab)
        .scalar_subquery()
    )
    return {
        lab: _as_datetime(at)
        for lab, at in session.execute(select(labs.c.lab, latest).where(labs.c.lab.is_not(None)))
        if at is not None
    }


# --- gauges ----------------------------------------------------------------------------------


def retry_backlog(session: Session, now: datetime) -> dict[str, RetryBacklog]:
    """Retrying deliveries by channel, and how many are due: read through the index on
    (state, next_attempt_at), over the retrying rows only."""
    backlog = {kind: RetryBacklog(0, 0) for kind in CHANNEL_KINDS}
    for kind, retrying, due in session.execute(
        select(
            Delivery.channel_kind,
            func.count(),
            func.sum(case((Delivery.next_attempt_at <= now, 1), else_=0)),
        )
        .where(Delivery.state == RETRYING)
        .group_by(Delivery.channel_kind)
    ):
        backlog[kind or ""] = RetryBacklog(retrying, int(due or 0))
    return backlog


def read_certificates(session: Session, signing: SigningSettings, now: datetime) -> Certificates:
    recipients = recipient_horizon(session, now)
    files = signing_certificates(signing)
    # A signing certificate on file is in use, ended or not: an ended one shows negative.
    signing_ends = [f.not_after for f in files]
    horizons = (
        recipients,
        CertificateHorizon(
            "signing",
            min(signing_ends, default=None),
            sum(1 for end in signing_ends if end <= now + EXPIRY_WARNING),
        ),
    )
    return Certificates(horizons, tuple(files), now)


def recipient_horizon(session: Session, now: datetime) -> CertificateHorizon:
    """The recipients' encryption certificates in use: for each recipient with a channel,
    the valid certificate that lasts longest (what sealing picks; a renewal already on file
    covers the old one's end). The horizon is the earliest of those ends; `expiring`
    counts the recipients whose cover ends within `EXPIRY_WARNING`."""
    cover = (
        select(func.max(Certificate.not_after).label("until"))
        .where(
            Certificate.not_before <= now,
            Certificate.not_after > now,
            Certificate.recipient_id.in_(select(Channel.recipient_id)),
        )
        .group_by(Certificate.recipient_id)
        .subquery()
    )
    earliest, expiring = session.execute(
        select(
            func.min(cover.c.until),
            func.sum(case((cover.c.until <= now + EXPIRY_WARNING, 1), else_=0)),
        )
    ).one()
    return CertificateHorizon(
        "recipient", _as_datetime(earliest) if earliest is not None else None, int(expiring or 0)
    )


def signing_certificates(signing: SigningSettings) -> list[SigningCertificate]:
    """The laboratories' signing certificates found in PEM files: the default one and the
    `<LAB>.crt` of the signing directory. Only certificates are read, never a key; a
    PKCS#12 file is not opened (that takes its password and decrypts the key), so its
    expiry shows only when sealing refuses it."""
    found: list[SigningCertificate] = []
    if signing.certificate is not None:
        end = _pem_not_after(signing.certificate)
        if end is not None:
            found.append(SigningCertificate("default", end))
    if signing.directory is not None and signing.directory.is_dir():
        for path in sorted(signing.directory.glob("*.crt")):
            end = _pem_not_after(path)
            if end is not None:
                found.append(SigningCertificate(path.stem, end))
    return found


def _pem_not_after(path: Path) -> datetime | None:
    """The earliest end among the certificates of a PEM file (a chain ends with its first
    link); None when it cannot be read (sealing says why, with the file's name)."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return None
    return min((c.not_valid_after_utc for c in certificates), default=None)


def _as_datetime(value: Any) -> datetime:
    """An aggregate over a timestamp may come back as text on SQLite."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
