"""What an operator asks first: is it flowing, what is waiting, since when, what failed.

`labdispatch status` prints this beside the broker's queue depths; every figure is read
from the ledger, so it holds even when the broker was flushed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.ledger.models import Delivery, Message, Rejection
from pipeline.ledger.states import DELIVERY_STATES, MESSAGE_STATES, OPEN_STATES, RECEIVED, RETRYING


@dataclass(frozen=True)
class LedgerStatus:
    messages: dict[str, int]
    deliveries: dict[str, int]
    #: Age of the oldest delivery still waiting for work (pending or retrying), if any.
    oldest_open_age: timedelta | None
    #: Age of the oldest message recorded but not yet routed, if any.
    oldest_unrouted_age: timedelta | None
    next_retry_at: datetime | None
    failed_last_hour: int
    rejected_last_hour: int
    received_last_hour: int


def ledger_status(session: Session, now: datetime) -> LedgerStatus:
    hour_ago = now - timedelta(hours=1)
    messages = dict.fromkeys(MESSAGE_STATES, 0)
    messages.update(
        {
            state: count
            for state, count in session.execute(
                select(Message.state, func.count()).group_by(Message.state)
            ).all()
        }
    )
    deliveries = dict.fromkeys(DELIVERY_STATES, 0)
    deliveries.update(
        {
            state: count
            for state, count in session.execute(
                select(Delivery.state, func.count()).group_by(Delivery.state)
            ).all()
        }
    )
    oldest_open = session.scalar(
        select(func.min(Delivery.created_at)).where(Delivery.state.in_(OPEN_STATES))
    )
    oldest_unrouted = session.scalar(
        select(func.min(Message.received_at)).where(Message.state == RECEIVED)
    )
    next_retry = session.scalar(
        select(func.min(Delivery.next_attempt_at)).where(Delivery.state == RETRYING)
    )
    return LedgerStatus(
        messages=messages,
        deliveries=deliveries,
        oldest_open_age=_age(now, oldest_open),
        oldest_unrouted_age=_age(now, oldest_unrouted),
        next_retry_at=next_retry,
        failed_last_hour=session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.failed_at >= hour_ago)
        )
        or 0,
        rejected_last_hour=session.scalar(
            select(func.count()).select_from(Rejection).where(Rejection.received_at >= hour_ago)
        )
        or 0,
        received_last_hour=session.scalar(
            select(func.count()).select_from(Message).where(Message.received_at >= hour_ago)
        )
        or 0,
    )


def _age(now: datetime, since: datetime | None) -> timedelta | None:
    if since is None:
        return None
    if since.tzinfo is None:  # SQLite's MIN() bypasses the column type: the text comes back
        return None
    return max(now - since, timedelta(0))
