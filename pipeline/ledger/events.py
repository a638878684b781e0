"""Writing the timeline: one call, so every step is recorded the same way."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from pipeline.ledger.models import Delivery, Event, Message
from pipeline.ledger.states import EVENT_KINDS


def record_event(
    session: Session,
    message: Message,
    kind: str,
    detail: str,
    at: datetime,
    delivery: Delivery | None = None,
) -> Event:
    """Add one step to a message's timeline; `detail` must hold no clinical data."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    event = Event(
        message_id=message.id,
        delivery=delivery,
        kind=kind,
        detail=detail,
        at=at,
    )
    session.add(event)
    return event
