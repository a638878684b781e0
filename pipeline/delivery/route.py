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
once (`record.load_stored`) and its deliveries created, set-based: one multi-row INSERT …
RETURNING for the batch's deliveries (claimed as they are written when the caller asks),
one INSERT for their events, one UPDATE for the messages' states, under one savepoint. A
message that no longer reads stays `received` (reconcile offers it again) while the others
go on (rule 3); when the batch's statements fail, the messages are routed one by one, each
in its own savepoint, so only the one tripping a bug is left behind.
`deliverable` is the one place a delivery gets its recipient, channel and envelope IDs:
routing a message and reconcile resuming an unroutable delivery both use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, case, insert, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from pipeline.db import begin_write
from pipeline.delivery.claims import StageReport, log_step_error, mark_queued
from pipeline.delivery.notices import tell_laboratory
from pipeline.delivery.record import StoredResult, load_stored
from pipeline.delivery.services import DeliveryServices
from pipeline.errors import LabdispatchError
from pipeline.hl7.facts import RoutingFacts
from pipeline.hl7.participants import PATIENT, Participant
from pipeline.ledger.models import Delivery, Event, Message
from pipeline.ledger.states import EVENT_KINDS, FAILED, PENDING, RECEIVED, ROUTED, UNROUTABLE
from pipeline.recipients.identifiers import BlindIndex
from pipeline.recipients.models import Recipient
from pipeline.recipients.resolve import REFUSES_ELECTRONIC
from pipeline.recipients.routing import RoutedRecipient, route_many


@dataclass(frozen=True)
class RouteReport:
    routed: int
    unroutable: int
    #: Recipients in the directory with no channel results may go to (a mailbox refusing
    #: electronic results, an MSSanté one): failed at once, the laboratory told.
    refused: int = 0


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
    *,
    claim_until: datetime | None = None,
) -> tuple[list[Message], dict[int, StoredResult]]:
    """In the session's write transaction: take the messages among `message_ids` still
    `received` (locked, SKIP LOCKED on PostgreSQL), read each once, and create their
    deliveries. Returns the messages routed (held by the caller, they stay in the session's
    identity map: their deliveries find them there), and what each read as (sealing uses
    it: not read again). Counts message states in `report`. With `claim_until`, the new
    pending deliveries are claimed for the caller as they are written."""
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
                claim_until=claim_until,
                notices_dir=services.notices_dir,
            )
        routed = [message.id for message, _ in readable]
    except Exception:
        # Some message trips a bug: route them one by one, so only it is left behind.
        routed = []
        for message, _ in readable:
            session.expire(message, ["state"])  # as the database has it after the rollback
        for message, facts in readable:
            try:
                with session.begin_nested():
                    route_messages(
                        session,
                        [(message, facts)],
                        mail_domain=services.mail_domain,
                        now=now,
                        blind_index=services.cipher,
                        claim_until=claim_until,
                        notices_dir=services.notices_dir,
                    )
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
    notices_dir: Path | None = None,
) -> RouteReport:
    """Create the message's deliveries; a message already routed is left as it is."""
    return route_messages(
        session,
        [(message, facts)],
        mail_domain=mail_domain,
        now=now,
        blind_index=blind_index,
        notices_dir=notices_dir,
    )[0]


def route_messages(
    session: Session,
    items: Sequence[tuple[Message, RoutingFacts]],
    *,
    mail_domain: str,
    now: datetime,
    blind_index: BlindIndex | None = None,
    claim_until: datetime | None = None,
    notices_dir: Path | None = None,
) -> list[RouteReport]:
    """Route a batch, set-based: the directory is asked once for all of it (`route_many`);
    the deliveries go in one multi-row INSERT … RETURNING, their events in one INSERT, the
    messages' new states in one UPDATE — a fixed number of statements whatever the batch's
    size. `blind_index` (the at-rest cipher) finds patients by the keyed hash of their INS.
    With `claim_until`, the new pending deliveries are claimed as they are written
    (`leased_until`, `queued_at`), so the deliver pass needs no second statement. A
    delivery made failed (the recipient has no channel results may go to) is told to its
    laboratory through `notices_dir` (`notices.tell_laboratory`)."""
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
    if not to_route:
        return [report for report in reports if report is not None]
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
    rows: list[dict[str, Any]] = []
    events: list[tuple[int, str, str]] = []  # (index in rows, kind, detail)
    states: dict[int, str] = {}
    for index, answers in zip(to_route, all_answers, strict=True):
        message = items[index][0]
        report = _route_one(
            message, answers, recipients, rows, events, mail_domain=mail_domain, now=now
        )
        reports[index] = report
        states[message.id] = ROUTED if report.routed or report.refused else UNROUTABLE
    ids = _write_routes(session, rows, events, now, claim_until)
    for row, id_ in zip(rows, ids, strict=True):
        if row["state"] == FAILED:
            delivery = session.get(Delivery, id_)
            assert delivery is not None
            tell_laboratory(session, delivery, now, notices_dir)
    c = cast(Table, Message.__table__).c
    routed_ids = [id_ for id_, state in states.items() if state == ROUTED]
    session.execute(
        update(cast(Table, Message.__table__))
        .where(c.id.in_(list(states)))
        .values(state=case((c.id.in_(routed_ids), ROUTED), else_=UNROUTABLE))
    )
    for index in to_route:
        message = items[index][0]
        set_committed_value(message, "state", states[message.id])
        # What the message holds of its deliveries and events is stale: read again if asked.
        session.expire(message, ["deliveries", "events"])
    return [report for report in reports if report is not None]


#: The columns that tell the deliveries of one routing apart; rows equal in all of them are
#: alike in every way (their events too), so which ID goes to which does not matter.
_MATCH = (
    "message_id",
    "recipient_key",
    "channel_kind",
    "channel_address",
    "wanted",
    "role",
    "last_error",
)


def _write_routes(
    session: Session,
    rows: list[dict[str, Any]],
    events: list[tuple[int, str, str]],
    now: datetime,
    claim_until: datetime | None,
) -> list[int]:
    """Insert the rows and their events; returns the deliveries' IDs, in `rows` order."""
    if not rows:
        return []
    for row in rows:
        pending = claim_until is not None and row["state"] == PENDING
        row["leased_until"] = claim_until if pending else None
        row["queued_at"] = now if pending else None
    table = cast(Table, Delivery.__table__)
    # Matched back by content (the unique key and what an unroutable one names), not by
    # RETURNING's row order; RETURNING makes it one multi-row INSERT ("insertmanyvalues").
    slots: dict[tuple[Any, ...], list[int]] = {}
    for position, row in enumerate(rows):
        slots.setdefault(tuple(row[name] for name in _MATCH), []).append(position)
    ids: list[int | None] = [None] * len(rows)
    returned = session.execute(
        insert(table).returning(table.c.id, *(table.c[name] for name in _MATCH)), rows
    )
    for id_, *key in returned:
        ids[slots[tuple(key)].pop(0)] = id_
    assert all(ids), "INSERT … RETURNING left a delivery without its ID"
    found = [id_ for id_ in ids if id_ is not None]
    if events:
        event_table = cast(Table, Event.__table__)
        session.execute(
            insert(event_table).returning(event_table.c.id),
            [
                {
                    "message_id": rows[position]["message_id"],
                    "delivery_id": ids[position],
                    "kind": kind,
                    "detail": detail,
                    "at": now,
                }
                for position, kind, detail in events
            ],
        ).close()
    return found


def _route_one(
    message: Message,
    answers: Sequence[RoutedRecipient],
    recipients: dict[str, Recipient],
    rows: list[dict[str, Any]],
    events: list[tuple[int, str, str]],
    *,
    mail_domain: str,
    now: datetime,
) -> RouteReport:
    """The message's deliveries as rows (appended to `rows`) and their events."""
    routed = unroutable = refused = 0
    seen: set[str] = set()

    def add(row: dict[str, Any], kind: str, detail: str) -> None:
        assert kind in EVENT_KINDS
        events.append((len(rows), kind, detail))
        rows.append(
            {
                "message_id": message.id,
                "laboratory": message.laboratory,
                "message_received_at": message.received_at,
                "recipient_id": None,
                "recipient_key": None,
                "wanted": "",
                "channel_kind": None,
                "channel_address": None,
                "last_error": "",
                "failed_at": None,
                "envelope_message_id": None,
                "envelope_id": None,
                "created_at": now,
                "updated_at": now,
                **row,
            }
        )

    for answer in answers:
        participant, resolution = answer.participant, answer.resolution
        role = participant.roles[0] if participant.roles else ""
        if resolution.recipient_key is None:
            wanted = shown_identifier(participant)
            last_error = resolution.reason if role != PATIENT else "patient not in directory"
            add(
                {
                    "wanted": wanted[:200],
                    "role": role,
                    "state": UNROUTABLE,
                    "last_error": last_error,
                },
                UNROUTABLE,
                f"{role} {wanted}: {last_error}",
            )
            unroutable += 1
            continue
        key = resolution.recipient_key
        if key in seen:
            continue
        seen.add(key)
        recipient = recipients[key]
        if not resolution.channels and resolution.unusable:
            # Refusals first: what the laboratory must act on (send on paper).
            channel, reason = sorted(
                resolution.unusable, key=lambda pair: pair[1] != REFUSES_ELECTRONIC
            )[0]
            kind, _, address = channel.partition(":")
            last_error = f"{key}: {kind} {address} {reason}"
            add(
                {
                    "recipient_id": recipient.id,
                    "recipient_key": key,
                    "wanted": str(participant.identifier or "")[:200] if role != PATIENT else "",
                    "role": role,
                    "channel_kind": kind,
                    "channel_address": address,
                    "state": FAILED,
                    "last_error": last_error,
                    "failed_at": now,
                },
                "failed",
                last_error,
            )
            refused += 1
            continue
        if not resolution.channels:
            last_error = f"{key} is in the directory but has no channel"
            add(
                {
                    "recipient_id": recipient.id,
                    "recipient_key": key,
                    "role": role,
                    "state": UNROUTABLE,
                    "last_error": last_error,
                },
                UNROUTABLE,
                last_error,
            )
            unroutable += 1
            continue
        columns = deliverable(message, recipient, resolution.channels[0], mail_domain)
        add(
            {
                "wanted": str(participant.identifier or "")[:200] if role != PATIENT else "",
                "role": role,
                **columns,
            },
            "routed",
            f"{key} ({role}) via {columns['channel_kind']}",
        )
        routed += 1
    return RouteReport(routed=routed, unroutable=unroutable, refused=refused)


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
