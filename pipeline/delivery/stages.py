"""The pipeline's stages as workers run them: route, seal, send — each on a batch of IDs.

A Celery task calls one of these with the IDs its message carried and enqueues the IDs
returned for the next stage. Each stage is idempotent (ARCHITECTURE rule 2): it reads the
ledger, not the task, to know what is left to do, so a task run twice (the broker redelivers
an unacknowledged one after a worker died) does nothing twice.

- A message is routed only while it is `received`; on PostgreSQL its row is locked (SKIP
  LOCKED) for the transaction, on SQLite the transaction takes the write lock at BEGIN.
- Deliveries are *claimed* before sealing and sending: a short transaction sets
  `leased_until` on those still open and not claimed by someone else, and returns them.
  The slow part (crypto, network) runs outside any transaction; outcomes are committed in
  small groups. A worker killed mid-batch leaves claims that run out after the lease, and
  reconcile hands that work to another worker.
- Outcomes are committed every `COMMIT_EVERY` sends: a crash can lose the record of at
  most that many sends, which are then sent again under the same Message-ID (the far side
  can de-duplicate; Maildir and HTTPS do so by themselves). A circuit the sends opened or
  closed is reported in the same commit (`pipeline.delivery.circuits`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from pipeline.db import begin_write
from pipeline.delivery.dispatch import SignedResults, fail_delivery, seal_delivery
from pipeline.delivery.outcomes import record_outcomes
from pipeline.delivery.record import StoredResult, load_stored
from pipeline.delivery.routing import route_messages
from pipeline.delivery.send import Prepared, send_prepared
from pipeline.delivery.services import DeliveryServices
from pipeline.errors import LabdispatchError
from pipeline.hl7.facts import RoutingFacts
from pipeline.ledger.models import Delivery, Message
from pipeline.ledger.states import OPEN_STATES, PENDING, RECEIVED
from pipeline.logsafe import log_failure
from pipeline.recipients.models import Recipient

logger = logging.getLogger(__name__)

#: Sends whose outcomes are committed together (bounds what a crash can make us resend):
#: each group goes out pipelined, then its outcomes are written in one transaction.
COMMIT_EVERY = 50


@dataclass
class StageReport:
    """What a stage did: the IDs for the next stage, and counts by outcome."""

    next_ids: list[int] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)


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
            _mark_queued(session, report.next_ids, now)
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
                _log_stage_error("routing message", message.id, error)
                report.states["error"] += 1
    for message, _ in readable:
        if message.id in routed:
            report.states[message.state] += 1
    return (
        [message for message, _ in readable if message.id in routed],
        {message_id: loaded[message_id] for message_id in routed},
    )


def seal_stage(
    sessions: sessionmaker[Session], delivery_ids: Sequence[int], services: DeliveryServices
) -> StageReport:
    """Sign and envelope claimed deliveries; returns the sealed ones (to send)."""
    report = StageReport()
    now = services.clock()
    claimed = claim(sessions, delivery_ids, now, services.lease, sealed=False)
    if not claimed:
        return report
    with sessions() as session:
        deliveries = _load(session, claimed)
        recipient_ids = {d.recipient_id for d in deliveries if d.recipient_id is not None}
        # Into the identity map in one query (and held here: the map keeps only objects
        # referenced elsewhere), so `seal_delivery` finds them there.
        recipients = session.scalars(
            select(Recipient)
            .where(Recipient.id.in_(recipient_ids))
            .options(selectinload(Recipient.certificates))
        ).all()
        session.commit()  # nothing written yet: end the read transaction before the crypto

        signed = SignedResults(services)
        for delivery in deliveries:
            try:
                seal_delivery(session, delivery, services, signed)
            except LabdispatchError as error:
                fail_delivery(session, delivery, f"not sealed: {error}", services.clock(), services)
            except Exception as error:
                _log_stage_error("sealing delivery", delivery.id, error)
                fail_delivery(
                    session,
                    delivery,
                    f"not sealed: internal error ({type(error).__name__}); see the logs, "
                    "then replay",
                    services.clock(),
                    services,
                )
            delivery.leased_until = None
            report.states["sealed" if delivery.state in OPEN_STATES else delivery.state] += 1
            if delivery.state in OPEN_STATES:
                report.next_ids.append(delivery.id)
        begin_write(session)
        _mark_queued(session, report.next_ids, services.clock())
        session.commit()
        del recipients
    return report


def send_stage(
    sessions: sessionmaker[Session], delivery_ids: Sequence[int], services: DeliveryServices
) -> StageReport:
    """Send claimed, sealed, due deliveries (their stored envelopes) and record each
    outcome (nothing follows): the retry path, and what reconcile hands on."""
    report = StageReport()
    now = services.clock()
    claimed = claim(sessions, delivery_ids, now, services.lease, sealed=True)
    if not claimed:
        return report
    deadline = time.monotonic() + services.lease.total_seconds() / 2
    with sessions() as session:
        deliveries = _load(session, claimed)
        session.commit()  # end the read transaction: the network part holds none
        prepared = [Prepared(d, d.envelope) for d in deliveries if d.envelope is not None]
        send_in_groups(session, prepared, services, report, deadline=deadline)
    return report


def send_in_groups(
    session: Session,
    prepared: Sequence[Prepared],
    services: DeliveryServices,
    report: StageReport,
    *,
    deadline: float,
) -> None:
    """Send `prepared` in groups of `COMMIT_EVERY`, committing each group's outcomes
    (`outcomes.record_outcomes`) before the next group goes: a crash resends at most one
    group, under the same Message-IDs."""
    for start in range(0, len(prepared), COMMIT_EVERY):
        sent = send_prepared(services, prepared[start : start + COMMIT_EVERY], deadline=deadline)
        # End any read transaction (a lazy load) first: on SQLite the write must BEGIN
        # IMMEDIATE, or it is refused at once when another process wrote meanwhile.
        session.commit()
        report.states.update(record_outcomes(session, sent, services))
        session.commit()


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
        _log_stage_error("reading message", message.id, error)
        return None


def _log_stage_error(doing: str, row_id: int, error: BaseException) -> None:
    # The type only: an exception's text may quote the message (`pipeline.logsafe`).
    log_failure(logger, f"{doing} {row_id}", error)


def claim(
    sessions: sessionmaker[Session],
    delivery_ids: Sequence[int],
    now: datetime,
    lease: timedelta,
    *,
    sealed: bool,
) -> list[int]:
    """Take the deliveries among `delivery_ids` that are still open, not claimed by another
    worker, and ready for the stage (sealed and due for sending, not sealed for sealing)."""
    if not delivery_ids:
        return []
    conditions = [
        Delivery.id.in_(delivery_ids),
        Delivery.state.in_(OPEN_STATES),
        or_(Delivery.leased_until.is_(None), Delivery.leased_until < now),
    ]
    if sealed:
        conditions += [
            Delivery.envelope.is_not(None),
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        ]
    else:
        conditions.append(Delivery.envelope.is_(None))
    with sessions() as session:
        begin_write(session)
        claimed = list(
            session.scalars(
                update(Delivery)
                .where(*conditions)
                .values(leased_until=now + lease)
                .returning(Delivery.id),
                execution_options={"synchronize_session": False},
            )
        )
        session.commit()
    return sorted(claimed)


def _load(session: Session, delivery_ids: Sequence[int]) -> list[Delivery]:
    return list(
        session.scalars(
            select(Delivery)
            .where(Delivery.id.in_(delivery_ids))
            .options(selectinload(Delivery.message))
            .order_by(Delivery.id)
        )
    )


def _mark_queued(session: Session, delivery_ids: Sequence[int], now: datetime) -> None:
    """Note when work was handed on, so reconcile can tell lost work from queued work."""
    if delivery_ids:
        session.execute(
            update(Delivery).where(Delivery.id.in_(delivery_ids)).values(queued_at=now),
            execution_options={"synchronize_session": False},
        )
