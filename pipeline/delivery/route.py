"""From a recorded message to its deliveries: one per recipient, on its preferred channel.

Every participant the message names is resolved against the directory (see
`pipeline.recipients.routing`). A recipient named twice (ORC-12 and OBR-16, or ordering and
copy-to) gets one delivery. A participant the directory does not know becomes an
`unroutable` delivery carrying the identifier looked for, visible to ops, so nothing is
dropped in silence; the message is `unroutable` only when no one at all can receive it.

Each delivery gets its envelope Message-ID and SMTP envelope ID here, derived from the
ledger key and the recipient, so every retry and every re-run carries the same IDs and the
far side can de-duplicate (ARCHITECTURE rule 2).

The route step (`route_locked`, shared by `deliver.deliver_stage` and `route_stage`): in
the caller's write transaction, the messages still `received` are locked (SKIP LOCKED on
PostgreSQL; SQLite's writer holds the database lock from BEGIN IMMEDIATE), each is read
once (`record.load_stored`) and its deliveries created. A message that no longer reads
stays `received` (reconcile offers it again) while the others go on (rule 3).
`deliverable` is the one place a delivery gets its recipient, channel and envelope IDs:
routing a message and reconcile resuming an unroutable delivery both use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import begin_write
from pipeline.delivery.claims import StageReport, log_step_error, mark_queued
from pipeline.delivery.record import StoredResult, load_stored
from pipeline.delivery.services import DeliveryServices
from pipeline.errors import LabdispatchError
from pipeline.hl7.facts import RoutingFacts
from pipeline.hl7.participants import PATIENT, Participant
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Delivery, Message
from pipeline.ledger.states import PENDING, RECEIVED, ROUTED, UNROUTABLE
from pipeline.recipients.identifiers import BlindIndex
from pipeline.recipients.models import Recipient
from pipeline.recipients.routing import RoutedRecipient, route_many


@dataclass(frozen=True)
class RouteReport:
    routed: int
    unroutable: int


def route_stage(
    sessions: sessionmaker[Session], message_ids: Sequence[int], services: DeliveryServices
) -> StageReport:
    """Create the deliveries of received messages; returns the new pending ones (to seal)."""
    report = StageReport()
    if not message_ids:
        return report
    now = services.clock()
    with sessions() as session:
        begin_write(session)
        messages, _ = route_locked(session, message_ids, services, now, report)
        routed = [message.id for message in messages]
        if routed:
            report.next_ids = list(
                session.scalars(
                    select(Delivery.id)
                    .where(Delivery.message_id.in_(routed), Delivery.state == PENDING)
                    .order_by(Delivery.id)
                )
            )
            mark_queued(session, report.next_ids, now)
        session.commit()
    return report


def route_locked(
    session: Session,
    message_ids: Sequence[int],
    services: DeliveryServices,
    now: datetime,
    report: StageReport,
) -> tuple[list[Message], dict[int, StoredResult]]:
    """In the session's write transaction: take the messages among `message_ids` still
    `received` (locked, SKIP LOCKED on PostgreSQL), read each once, and create their
    deliveries. Returns the messages routed (held by the caller, they stay in the session's
    identity map: their deliveries find them there), and what each read as (sealing uses
    it: not read again). Counts message states in `report`."""
    messages = session.scalars(
        select(Message)
        .where(Message.id.in_(message_ids), Message.state == RECEIVED)
        .order_by(Message.id)
        .with_for_update(skip_locked=True)
    ).all()
    loaded: dict[int, StoredResult] = {}
    readable: list[tuple[Message, RoutingFacts]] = []
    for message in messages:
        stored = _stored(message, services)
        if stored is None or stored.result.facts is None:
            report.states["error"] += 1
            continue
        loaded[message.id] = stored
        readable.append((message, stored.result.facts))
    try:
        with session.begin_nested():
            route_messages(
                session,
                readable,
                mail_domain=services.mail_domain,
                now=now,
                blind_index=services.cipher,
            )
            session.flush()
        routed = [message.id for message, _ in readable]
    except Exception:
        # Some message trips a bug: route them one by one, so only it is left behind.
        routed = []
        for message, facts in readable:
            try:
                with session.begin_nested():
                    route_messages(
                        session,
                        [(message, facts)],
                        mail_domain=services.mail_domain,
                        now=now,
                        blind_index=services.cipher,
                    )
                    session.flush()
                routed.append(message.id)
            except Exception as error:
                log_step_error("routing message", message.id, error)
                report.states["error"] += 1
    for message, _ in readable:
        if message.id in routed:
            report.states[message.state] += 1
    return (
        [message for message, _ in readable if message.id in routed],
        {message_id: loaded[message_id] for message_id in routed},
    )


def _stored(message: Message, services: DeliveryServices) -> StoredResult | None:
    """A recorded message read again from its stored bytes. None (and a log line) for one
    that no longer reads: it stays `received` and reconcile offers it again, while the
    others go on (rule 3)."""
    try:
        stored = load_stored(message, services.cipher)
        if stored.result.facts is None:  # it was accepted once: a bug
            raise LabdispatchError(f"stored message no longer reads: {stored.result.error}")
        return stored
    except Exception as error:
        log_step_error("reading message", message.id, error)
        return None


def route_message(
    session: Session,
    message: Message,
    facts: RoutingFacts,
    *,
    mail_domain: str,
    now: datetime,
    blind_index: BlindIndex | None = None,
) -> RouteReport:
    """Create the message's deliveries; a message already routed is left as it is."""
    return route_messages(
        session, [(message, facts)], mail_domain=mail_domain, now=now, blind_index=blind_index
    )[0]


def route_messages(
    session: Session,
    items: Sequence[tuple[Message, RoutingFacts]],
    *,
    mail_domain: str,
    now: datetime,
    blind_index: BlindIndex | None = None,
) -> list[RouteReport]:
    """Route a batch: the directory is asked once for all of it (`route_many`), and the
    deliveries and their events go to the database together at the next flush.
    `blind_index` (the at-rest cipher) finds patients by the keyed hash of their INS."""
    reports: list[RouteReport | None] = [None] * len(items)
    to_route: list[int] = []
    for index, (message, _) in enumerate(items):
        if message.state == RECEIVED:
            to_route.append(index)
        else:
            reports[index] = RouteReport(
                routed=sum(1 for d in message.deliveries if d.state != UNROUTABLE),
                unroutable=sum(1 for d in message.deliveries if d.state == UNROUTABLE),
            )
    all_answers = route_many(session, [items[i][1] for i in to_route], blind_index=blind_index)
    keys = {
        a.resolution.recipient_key
        for answers in all_answers
        for a in answers
        if a.resolution.recipient_key
    }
    recipients = {
        r.key: r for r in session.scalars(select(Recipient).where(Recipient.key.in_(keys)))
    }
    for index, answers in zip(to_route, all_answers, strict=True):
        reports[index] = _route_one(
            session, items[index][0], answers, recipients, mail_domain=mail_domain, now=now
        )
    return [report for report in reports if report is not None]


def _route_one(
    session: Session,
    message: Message,
    answers: Sequence[RoutedRecipient],
    recipients: dict[str, Recipient],
    *,
    mail_domain: str,
    now: datetime,
) -> RouteReport:
    routed = unroutable = 0
    seen: set[str] = set()
    for answer in answers:
        participant, resolution = answer.participant, answer.resolution
        role = participant.roles[0] if participant.roles else ""
        if resolution.recipient_key is None:
            wanted = shown_identifier(participant)
            delivery = Delivery(
                message_id=message.id,
                laboratory=message.laboratory,
                message_received_at=message.received_at,
                wanted=wanted[:200],
                role=role,
                state=UNROUTABLE,
                last_error=resolution.reason if role != PATIENT else "patient not in directory",
                created_at=now,
                updated_at=now,
            )
            session.add(delivery)
            record_event(
                session,
                message,
                UNROUTABLE,
                f"{role} {wanted}: {delivery.last_error}",
                now,
                delivery,
            )
            unroutable += 1
            continue
        key = resolution.recipient_key
        if key in seen:
            continue
        seen.add(key)
        recipient = recipients[key]
        if not resolution.channels:
            delivery = Delivery(
                message_id=message.id,
                laboratory=message.laboratory,
                message_received_at=message.received_at,
                recipient_id=recipient.id,
                recipient_key=key,
                role=role,
                state=UNROUTABLE,
                last_error=f"{key} is in the directory but has no channel",
                created_at=now,
                updated_at=now,
            )
            session.add(delivery)
            record_event(session, message, UNROUTABLE, delivery.last_error, now, delivery)
            unroutable += 1
            continue
        delivery = Delivery(
            message_id=message.id,
            laboratory=message.laboratory,
            message_received_at=message.received_at,
            wanted=str(participant.identifier or "")[:200] if role != PATIENT else "",
            role=role,
            created_at=now,
            updated_at=now,
            **deliverable(message, recipient, resolution.channels[0], mail_domain),
        )
        kind = delivery.channel_kind
        session.add(delivery)
        record_event(session, message, "routed", f"{key} ({role}) via {kind}", now, delivery)
        routed += 1
    message.state = ROUTED if routed else UNROUTABLE
    return RouteReport(routed=routed, unroutable=unroutable)


def deliverable(
    message: Message, recipient: Recipient, channel: str, mail_domain: str
) -> dict[str, Any]:
    """The columns that make a delivery deliverable: its recipient, the channel (`kind:address`
    as the directory gives it), and the envelope IDs derived from them (`delivery_ids_for`).
    The one builder: a new delivery (`_route_one`) and an unroutable one the directory now
    knows (`reconcile.resume_unroutable`) get them alike."""
    kind, _, address = channel.partition(":")
    message_id_header, envelope_id = delivery_ids_for(
        message, recipient.key, kind, address, mail_domain
    )
    return {
        "recipient_id": recipient.id,
        "recipient_key": recipient.key,
        "channel_kind": kind,
        "channel_address": address,
        "state": PENDING,
        "last_error": "",
        "envelope_message_id": message_id_header,
        "envelope_id": envelope_id,
    }


def delivery_ids_for(
    message: Message, recipient_key: str, kind: str, address: str, mail_domain: str
) -> tuple[str, str]:
    """The envelope's Message-ID and SMTP ENVID: derived from the ledger key, recipient and
    channel, so every re-run names the same envelope the same way."""
    digest = _delivery_digest(message, recipient_key, kind, address)
    return f"<{digest[:32]}@{mail_domain}>", digest[:40]


def _delivery_digest(message: Message, recipient_key: str, kind: str, address: str) -> str:
    key = "\0".join(
        (
            message.laboratory,
            message.control_id,
            str(message.revision),
            recipient_key,
            kind,
            address,
        )
    )
    return hashlib.sha256(key.encode()).hexdigest()


def shown_identifier(participant: Participant) -> str:
    """The identifier as ops need it to fix the directory; a patient's is not shown whole."""
    if participant.identifier is None:
        return "no identifier"
    if PATIENT in participant.roles:
        value = participant.identifier.value
        return f"{participant.identifier.id_type}:…{value[-4:]}"
    return str(participant.identifier)
