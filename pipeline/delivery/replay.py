"""Replay: an operator sends a failed delivery again, once its cause is fixed.

`failed` is final for the workers (a permanent refusal, no usable certificate, the retry
limit reached); after ops fixed the cause (the recipient renewed a certificate, the relay
is back, the mailbox exists), replay re-opens it as if new: pending, no attempts, due now.
The retry policy then starts afresh, and the laboratory is told again if it fails again.

The sealed envelope is kept, and sent again as it is (same bytes, same Message-ID), when
it was encrypted for the certificate the directory would choose today; otherwise it is
dropped and the delivery goes through the seal stage again (the usual reason for a replay
is a renewed certificate). Every replay is an event naming who asked for it. The caller
commits, then queues the work (`stage_of` says which stage); if that fails, reconcile
finds the open delivery and queues it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.delivery.trace import unknown_message
from pipeline.errors import LabdispatchError
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Delivery, Message
from pipeline.ledger.states import FAILED, PENDING
from pipeline.recipients.models import Recipient
from pipeline.sealing.keys import recipient_certificate
from pipeline.sealing.smime import sealed_for

SEAL = "seal"
SEND = "send"


class ReplayRefused(LabdispatchError):
    """Nothing to replay: the delivery is not failed (or the message has none that is)."""


class UnknownDelivery(LabdispatchError):
    """The delivery named is not one of that message's."""


def replay(
    session: Session,
    message_id: int,
    *,
    delivery_id: int | None,
    caller: str,
    now: datetime,
) -> list[Delivery]:
    """Re-open the failed deliveries of a message (or the one named); the caller commits.

    `caller` says who asked, for the timeline ("token #4 (ops)"). Raises UnknownResult,
    UnknownDelivery or ReplayRefused, with words for the operator."""
    message = session.get(Message, message_id)
    if message is None:
        raise unknown_message(message_id)
    query = select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.id)
    if delivery_id is not None:
        query = query.where(Delivery.id == delivery_id)
    # Locked: two operators replaying at once must not both re-open (PostgreSQL; SQLite's
    # writer takes the database lock at BEGIN, see `begin_write`).
    deliveries = list(session.scalars(query.with_for_update()))
    if delivery_id is not None:
        if not deliveries:
            raise UnknownDelivery(f"message {message_id} has no delivery {delivery_id}")
        (delivery,) = deliveries
        if delivery.state != FAILED:
            raise ReplayRefused(
                f"delivery {delivery.id} is {delivery.state}, not failed: nothing to replay"
            )
    failed = [delivery for delivery in deliveries if delivery.state == FAILED]
    if not failed:
        raise ReplayRefused(f"message {message_id} has no failed delivery: nothing to replay")
    for delivery in failed:
        _reopen(session, message, delivery, caller, now)
    return failed


def stage_of(delivery: Delivery) -> str:
    """The stage a re-opened delivery is queued for: send when sealed, else seal."""
    return SEND if delivery.envelope is not None else SEAL


def _reopen(
    session: Session, message: Message, delivery: Delivery, caller: str, now: datetime
) -> None:
    sealed = delivery.envelope is not None
    keep = sealed and _envelope_still_valid(session, delivery, now)
    if keep:
        then = "its sealed envelope is sent again"
    elif sealed:
        then = "to be sealed again: its envelope was not for the recipient's current certificate"
        delivery.envelope = None
        delivery.sealed_at = None
    else:
        then = "to be sealed"
    delivery.state = PENDING
    delivery.attempts = 0
    delivery.first_attempt_at = None
    delivery.failed_at = None
    delivery.notified_at = None
    delivery.last_error = ""
    delivery.next_attempt_at = now
    delivery.leased_until = None
    # Not queued yet: if queueing fails after the commit, reconcile's next run takes it.
    delivery.queued_at = None
    delivery.updated_at = now
    record_event(session, message, "replayed", f"replayed by {caller}: {then}", now, delivery)


def _envelope_still_valid(session: Session, delivery: Delivery, now: datetime) -> bool:
    """Was the stored envelope encrypted for the certificate the directory gives today?"""
    recipient = session.get(Recipient, delivery.recipient_id) if delivery.recipient_id else None
    if recipient is None or delivery.envelope is None:
        return False
    try:
        certificate = recipient_certificate(
            recipient.key, [c.pem for c in recipient.certificates], now
        )
    except LabdispatchError:
        return False  # none usable today: sealing again says why, in the timeline
    return sealed_for(delivery.envelope, certificate)
