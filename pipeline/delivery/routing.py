"""From a recorded message to its deliveries: one per recipient, on its preferred channel.

Every participant the message names is resolved against the directory (see
`pipeline.recipients.routing`). A recipient named twice (ORC-12 and OBR-16, or ordering and
copy-to) gets one delivery. A participant the directory does not know becomes an
`unroutable` delivery carrying the identifier looked for, visible to ops, so nothing is
dropped in silence; the message is `unroutable` only when no one at all can receive it.

Each delivery gets its envelope Message-ID and SMTP envelope ID here, derived from the
ledger key and the recipient, so every retry and every re-run carries the same IDs and the
far side can de-duplicate (ARCHITECTURE rule 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.hl7.facts import RoutingFacts
from pipeline.hl7.participants import PATIENT, Participant
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Delivery, Message
from pipeline.recipients.identifiers import BlindIndex
from pipeline.recipients.models import Recipient
from pipeline.recipients.routing import RoutedRecipient, route_many


@dataclass(frozen=True)
class RouteReport:
    routed: int
    unroutable: int


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
        if message.state == "received":
            to_route.append(index)
        else:
            reports[index] = RouteReport(
                routed=sum(1 for d in message.deliveries if d.state != "unroutable"),
                unroutable=sum(1 for d in message.deliveries if d.state == "unroutable"),
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
                state="unroutable",
                last_error=resolution.reason if role != PATIENT else "patient not in directory",
                created_at=now,
                updated_at=now,
            )
            session.add(delivery)
            record_event(
                session,
                message,
                "unroutable",
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
                state="unroutable",
                last_error=f"{key} is in the directory but has no channel",
                created_at=now,
                updated_at=now,
            )
            session.add(delivery)
            record_event(session, message, "unroutable", delivery.last_error, now, delivery)
            unroutable += 1
            continue
        kind, _, address = resolution.channels[0].partition(":")
        message_id_header, envelope_id = delivery_ids_for(message, key, kind, address, mail_domain)
        delivery = Delivery(
            message_id=message.id,
            laboratory=message.laboratory,
            message_received_at=message.received_at,
            recipient_id=recipient.id,
            recipient_key=key,
            wanted=str(participant.identifier or "")[:200] if role != PATIENT else "",
            role=role,
            channel_kind=kind,
            channel_address=address,
            state="pending",
            envelope_message_id=message_id_header,
            envelope_id=envelope_id,
            created_at=now,
            updated_at=now,
        )
        session.add(delivery)
        record_event(session, message, "routed", f"{key} ({role}) via {kind}", now, delivery)
        routed += 1
    message.state = "routed" if routed else "unroutable"
    return RouteReport(routed=routed, unroutable=unroutable)


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
