"""The ledger's tables.

A message is keyed by (laboratory, control ID, revision): revision 1 is what the lab first
sent; a resend of the same key with different content is kept as the next revision, held
for review, and never delivered on its own. A delivery is one recipient over one channel;
its `state` moves forward only (see `states.py`). Events carry no clinical data: an
operator reads them, and they may be exported for audit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    Connection,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Mapper, mapped_column, relationship

from pipeline.db import Base, UTCDateTime, utcnow
from pipeline.hl7.limits import CONTROL_ID_MAX_CHARACTERS, SENDER_MAX_CHARACTERS
from pipeline.ledger.states import DELIVERY_STATES, MESSAGE_STATES


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Message(Base):
    """One result as a laboratory sent it."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("laboratory", "control_id", "revision"),
        CheckConstraint(_one_of("state", MESSAGE_STATES), name="state"),
        # `labdispatch trace CONTROL_ID` looks up by control ID alone.
        Index(None, "control_id"),
        # Reconcile's question: what was recorded but never routed?
        Index(None, "state"),
        # Statistics: the messages of a period, per laboratory, from the index alone; it
        # also answers by `received_at` alone (no index of its own: each one is written
        # with every message).
        Index(None, "received_at", "laboratory"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: MSH-4 (sending facility namespace): the laboratory, as routing and billing know it.
    laboratory: Mapped[str] = mapped_column(String(SENDER_MAX_CHARACTERS))
    #: MSH-10.
    control_id: Mapped[str] = mapped_column(String(CONTROL_ID_MAX_CHARACTERS))
    revision: Mapped[int] = mapped_column(default=1)
    state: Mapped[str] = mapped_column(String(16))
    #: Lowercase hex SHA-256 of the message bytes: tells a resend from a changed message.
    content_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    sending_application: Mapped[str] = mapped_column(String(200), default="")
    message_type: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(16))
    processing_id: Mapped[str] = mapped_column(String(8), default="")
    result_status: Mapped[str] = mapped_column(String(16), default="")
    document_count: Mapped[int] = mapped_column(default=0)
    #: MSH-18 as written, needed to label the HL7 attachment's charset.
    charset: Mapped[str] = mapped_column(String(32), default="")
    #: What the laboratory sent: "hl7v2", "hprim-sante" or "hprim-medecins".
    format: Mapped[str] = mapped_column(String(16), default="hl7v2", server_default="hl7v2")
    #: How it came in ("file", "mllp", "api") and from where (file name, peer address).
    source: Mapped[str] = mapped_column(String(16))
    source_name: Mapped[str] = mapped_column(String(500), default="")
    #: The message bytes, AES-256-GCM under the storage key named by `storage_key_id`.
    raw_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    storage_key_id: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="message", order_by="Delivery.id"
    )
    events: Mapped[list[Event]] = relationship(back_populates="message", order_by="Event.id")


#: What the statistics read of a delivery, carried by its (laboratory, message_received_at)
#: index.
STATS_COLUMNS = [
    "state",
    "attempts",
    "accepted_at",
    "delivered_at",
    "read_at",
    "message_id",
    "channel_kind",
    "recipient_id",
    "recipient_key",
    "wanted",
]


class Delivery(Base):
    """One recipient over one channel; the unit that is sealed, sent, retried and receipted."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("message_id", "recipient_key", "channel_kind", "channel_address"),
        CheckConstraint(_one_of("state", DELIVERY_STATES), name="state"),
        # The dispatcher's question: what is due now?
        Index(None, "state", "next_attempt_at"),
        Index(None, "recipient_id"),
        # Statistics (`pipeline.stats`). One laboratory's deliveries of the messages
        # received in a period: on PostgreSQL the index carries every column the reports
        # read, so a month is read from the index alone (an index-only scan), never from the
        # wide rows, and comes in laboratory order (nothing to sort before aggregating).
        Index(None, "laboratory", "message_received_at", postgresql_include=STATS_COLUMNS),
        # Read in a period (adoption), from the index alone.
        Index(None, "read_at", postgresql_include=["laboratory", "recipient_id"]),
        # Changed lately (the dashboard's windows: every change of a delivery bumps it).
        Index(None, "updated_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Looked up by the unique key (message, recipient, channel), whose first column it is.
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    #: The message's laboratory and `received_at`, copied here when the delivery is made
    #: (they never change): statistics attribute a delivery to the period its result was
    #: received in, and read a month of deliveries without joining millions of messages.
    laboratory: Mapped[str] = mapped_column(String(SENDER_MAX_CHARACTERS))
    message_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: NULL while unroutable (the directory does not know who `wanted` is).
    recipient_id: Mapped[int | None] = mapped_column(
        ForeignKey("recipients.id", ondelete="SET NULL")
    )
    #: The directory key at routing time, kept even if the recipient is later removed.
    recipient_key: Mapped[str | None] = mapped_column(String(64))
    #: The identifier the message gave ("RPPS:10001234567"), for ops to fix the directory.
    wanted: Mapped[str] = mapped_column(String(200), default="")
    #: ordering / copy_to / referring / patient, as read from the message.
    role: Mapped[str] = mapped_column(String(32), default="")
    channel_kind: Mapped[str | None] = mapped_column(String(16))
    channel_address: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Why it is not moving, in words for ops (last transport reply, certificate problem…).
    last_error: Mapped[str] = mapped_column(Text, default="")
    #: RFC 5322 Message-ID of the envelope: stable, so a far side can de-duplicate.
    envelope_message_id: Mapped[str | None] = mapped_column(String(250), unique=True)
    #: SMTP ENVID, echoed back by DSNs.
    envelope_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    #: The sealed envelope (ciphertext for the recipient): every retry sends the same bytes.
    envelope: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sealed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Until when a worker owns this delivery (set by `claim`): a second worker given the
    #: same work (a task redelivered by the broker) leaves it alone; a killed worker's claim
    #: simply runs out.
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: When its work was last handed to the broker: reconcile re-queues what stays unfinished
    #: long after (the broker lost it).
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: When the laboratory was told this delivery was given up.
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    message: Mapped[Message] = relationship(back_populates="deliveries")
    attempt_log: Mapped[list[Attempt]] = relationship(
        back_populates="delivery", order_by="Attempt.id"
    )


class Attempt(Base):
    """One try of a transport, with the far side's answer kept as evidence."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    number: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())
    transport: Mapped[str] = mapped_column(String(16))
    destination: Mapped[str] = mapped_column(String(500))
    #: accepted / transient / permanent (`pipeline.transports.base.Outcome`).
    outcome: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[str] = mapped_column(Text, default="")

    delivery: Mapped[Delivery] = relationship(back_populates="attempt_log")


#: The condition of the resends' index: a query must name the kind as this literal (not a
#: bound parameter) for SQLite and a generic PostgreSQL plan to use the index.
DUPLICATE_EVENTS = "kind = 'duplicate'"


class Event(Base):
    """One step in a result's life, for the timeline (`labdispatch trace`) and for audit.

    `kind` is one of `states.EVENT_KINDS`, checked in code rather than by a constraint: the
    table grows fastest, and a new kind must not mean rewriting it on SQLite."""

    __tablename__ = "events"
    # Statistics: the resends of a period. Partial, so the ~10 other events of each result
    # write no entry in it (`pipeline.stats.deliveries` names the kind as a literal).
    __table_args__ = (
        Index(
            "ix_events_duplicate_at",
            "at",
            postgresql_where=text(DUPLICATE_EVENTS),
            sqlite_where=text(DUPLICATE_EVENTS),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    #: Not indexed: events are read by message (the trace) or by ID (the metrics' tail).
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(24))
    #: Words for a person; never clinical values or patient identity.
    detail: Mapped[str] = mapped_column(Text, default="")

    message: Mapped[Message] = relationship(back_populates="events")
    #: Set with the object, so a delivery and its events go in one flush: the delivery's
    #: ID need not be known (and fetched, one round trip each) first.
    delivery: Mapped[Delivery | None] = relationship()


class Receipt(Base):
    """A report read back (MDN, DSN), matched to its delivery or recorded as unmatched."""

    __tablename__ = "receipts"
    # Adoption statistics: receipts received in a period, from the index alone.
    __table_args__ = (
        Index(None, "received_at", postgresql_include=["kind", "disposition", "delivery_id"]),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: mdn / dsn / unrecognised.
    kind: Mapped[str] = mapped_column(String(16))
    #: processed / displayed / failed… (MDN) or delivered / failed / delayed… (DSN).
    disposition: Mapped[str] = mapped_column(String(32), default="")
    original_message_id: Mapped[str | None] = mapped_column(String(250))
    original_envelope_id: Mapped[str | None] = mapped_column(String(64))
    #: The report's own Message-ID: a report read twice is recorded once.
    report_message_id: Mapped[str | None] = mapped_column(String(250), unique=True)
    #: Where it was read (Maildir file name, IMAP mailbox and UID).
    source: Mapped[str] = mapped_column(String(500), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class Rejection(Base):
    """A message refused at intake, kept in quarantine for the laboratory and ops to see.

    The bytes are kept encrypted like accepted ones (they may hold patient data); the reason
    is the one the ACK gave."""

    __tablename__ = "rejections"
    __table_args__ = (Index(None, "received_at"), Index(None, "laboratory", "received_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    source: Mapped[str] = mapped_column(String(16))
    source_name: Mapped[str] = mapped_column(String(500), default="")
    #: MSH-4 and MSH-10 when the header was readable, else empty.
    laboratory: Mapped[str] = mapped_column(String(SENDER_MAX_CHARACTERS), default="")
    control_id: Mapped[str] = mapped_column(String(CONTROL_ID_MAX_CHARACTERS), default="")
    #: AE / AR, the error class and its HL7 table 0357 code, and the reason in words.
    ack_code: Mapped[str] = mapped_column(String(2))
    error: Mapped[str] = mapped_column(String(64))
    hl7_code: Mapped[str] = mapped_column(String(8), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(default=0)
    content_sha256: Mapped[str] = mapped_column(String(64))
    #: The refused bytes, AES-256-GCM, bound to `quarantine_context(content_sha256)`.
    raw_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    storage_key_id: Mapped[str] = mapped_column(String(32))


class Circuit(Base):
    """A destination's circuit as the workers last saw it, for ops and `/metrics`.

    Each worker process keeps its own breaker (`pipeline.delivery.breaker`); this row is
    written only when one of them opens or closes a circuit, so it costs nothing while
    destinations answer. It is a report, not the breaker itself."""

    __tablename__ = "circuits"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The transport's destination, as in `Attempt.destination` (relay, host, mailbox root).
    destination: Mapped[str] = mapped_column(String(500), unique=True)
    #: closed / open / half-open (`pipeline.delivery.breaker`).
    state: Mapped[str] = mapped_column(String(16))
    #: Transient failures in a row when it opened.
    failures: Mapped[int] = mapped_column(default=0)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    open_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


@event.listens_for(Delivery, "before_insert")
def _copy_message_facts(mapper: Mapper[Delivery], connection: Connection, target: Delivery) -> None:
    """Fill `laboratory` and `message_received_at` from the message when the code making the
    delivery did not (routing does, so this costs a query only elsewhere)."""
    if target.laboratory is not None and target.message_received_at is not None:
        return
    message = target.__dict__.get("message")
    if message is not None and message.received_at is not None:
        laboratory, received_at = message.laboratory, message.received_at
    else:
        laboratory, received_at = connection.execute(
            select(Message.laboratory, Message.received_at).where(Message.id == target.message_id)
        ).one()
    if target.laboratory is None:
        target.laboratory = laboratory
    if target.message_received_at is None:
        target.message_received_at = received_at
