"""Reconcile: find the work the broker should be carrying but may have lost, and resume
results whose recipients the directory has since learned.

The ledger is the truth and the broker only carries work (ARCHITECTURE rule 1): Redis
restarted without its data, flushed, or a task dropped by a killed worker all leave the
ledger saying what is unfinished. Every run returns, per stage, the IDs to enqueue again:

- messages still `received` well after they came in (their route task is gone);
- open deliveries not sealed, or sealed and due, not claimed by a worker, and not queued
  since `requeue_after` — or queued before they became due (a retry whose time has come:
  this is also the retry sweep).

Enqueueing something that is in fact still queued is harmless: every stage claims before it
acts. Unroutable deliveries are looked up again in the directory; those it now knows
become pending deliveries with their channel and envelope IDs, and go to the seal stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import begin_write
from pipeline.delivery.record import load_stored
from pipeline.delivery.route import deliverable, shown_identifier
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Delivery, Message
from pipeline.ledger.states import HELD, OPEN_STATES, RECEIVED, ROUTED, UNROUTABLE
from pipeline.recipients.models import Recipient
from pipeline.recipients.routing import route


@dataclass
class Work:
    """IDs to enqueue again, per stage."""

    route: list[int] = field(default_factory=list)
    seal: list[int] = field(default_factory=list)
    send: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.route) + len(self.seal) + len(self.send)


def stalled_work(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    requeue_after: timedelta,
    limit: int = 5000,
    backlogged: frozenset[str] = frozenset(),
) -> Work:
    """What to enqueue again now; the deliveries returned are marked queued.

    `backlogged` names the stages ("route", "seal", "send") whose queue still holds work:
    late work of those is a backlog, not a loss, and queueing it again would only add to
    the backlog (in a morning peak, many times over). Their lost work is taken once the
    queue has drained; retries that came due are queued whatever the backlog."""
    stale = now - requeue_after
    work = Work()
    with sessions() as session:
        begin_write(session)
        if "route" not in backlogged:
            work.route = list(
                session.scalars(
                    select(Message.id)
                    .where(Message.state == RECEIVED, Message.received_at < stale)
                    .order_by(Message.id)
                    .limit(limit)
                )
            )
        lease_free = or_(Delivery.leased_until.is_(None), Delivery.leased_until < now)
        not_queued_lately = or_(Delivery.queued_at.is_(None), Delivery.queued_at < stale)
        if "seal" not in backlogged:
            work.seal = list(
                session.scalars(
                    select(Delivery.id)
                    .where(
                        Delivery.state.in_(OPEN_STATES),
                        Delivery.envelope.is_(None),
                        lease_free,
                        not_queued_lately,
                    )
                    .order_by(Delivery.id)
                    .limit(limit)
                )
            )
        # A retry that came due after it was last queued.
        came_due = and_(
            Delivery.next_attempt_at.is_not(None),
            Delivery.queued_at < Delivery.next_attempt_at,
        )
        work.send = list(
            session.scalars(
                select(Delivery.id)
                .where(
                    Delivery.state.in_(OPEN_STATES),
                    Delivery.envelope.is_not(None),
                    lease_free,
                    or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                    came_due if "send" in backlogged else or_(not_queued_lately, came_due),
                )
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
            )
        )
        queued = work.seal + work.send
        for start in range(0, len(queued), 500):
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(queued[start : start + 500]))
                .values(queued_at=now),
                execution_options={"synchronize_session": False},
            )
        session.commit()
    return work


def resume_unroutable(
    sessions: sessionmaker[Session],
    services: DeliveryServices,
    *,
    limit: int = 200,
) -> list[int]:
    """Look the unroutable deliveries up again; returns those now routed (to seal).

    The oldest-checked go first and each check is noted (`updated_at`), so a large parked
    backlog is gone through in turns rather than re-read whole every run."""
    now = services.clock()
    resumed: list[int] = []
    with sessions() as session:
        begin_write(session)
        parked = session.scalars(
            select(Delivery)
            .where(Delivery.state == UNROUTABLE)
            .order_by(Delivery.updated_at, Delivery.id)
            .limit(limit)
        ).all()
        by_message: dict[int, list[Delivery]] = {}
        for unroutable in parked:
            unroutable.updated_at = now
            by_message.setdefault(unroutable.message_id, []).append(unroutable)
        for message_id, waiting in by_message.items():
            message = session.get_one(Message, message_id)
            if message.state == HELD:
                continue
            result = load_stored(message, services.cipher).result
            if result.facts is None:
                continue
            taken = {d.recipient_key for d in message.deliveries if d.state != UNROUTABLE}
            answers = route(session, result.facts, blind_index=services.cipher)
            for answer in answers:
                resolution = answer.resolution
                key = resolution.recipient_key
                if key is None or key in taken or not resolution.channels:
                    continue
                shown = shown_identifier(answer.participant)
                parked_delivery = next(
                    (d for d in waiting if d.wanted == shown or d.recipient_key == key), None
                )
                if parked_delivery is None:
                    continue
                recipient = session.scalars(select(Recipient).where(Recipient.key == key)).one()
                columns = deliverable(
                    message, recipient, resolution.channels[0], services.mail_domain
                )
                for column, value in columns.items():
                    setattr(parked_delivery, column, value)
                kind = parked_delivery.channel_kind
                parked_delivery.queued_at = now
                record_event(
                    session,
                    message,
                    "resumed",
                    f"the directory now knows {parked_delivery.wanted or key}: {key} via {kind}",
                    now,
                    parked_delivery,
                )
                taken.add(key)
                waiting.remove(parked_delivery)
                resumed.append(parked_delivery.id)
            if message.state == UNROUTABLE and taken:
                message.state = ROUTED
        session.commit()
    return sorted(resumed)
