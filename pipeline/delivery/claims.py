"""What every step does before it acts: claim its work in the ledger, and report.

A task carries IDs; the ledger says what is left to do with them (ARCHITECTURE rule 2), so
a task run twice (the broker redelivers an unacknowledged one after a worker died) does
nothing twice. Deliveries are *claimed* before sealing and sending: a short transaction
sets `leased_until` on those still open and not claimed by someone else, and returns them.
The slow part (crypto, network) runs outside any transaction. A worker killed mid-batch
leaves claims that run out after the lease, and reconcile hands that work to another
worker. `queued_at` notes when work was handed on, so reconcile can tell lost work from
queued work. Shared by `route`, `seal` and `deliver`; it imports none of them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from pipeline.db import begin_write
from pipeline.ledger.models import Delivery
from pipeline.ledger.states import OPEN_STATES
from pipeline.logsafe import log_failure

logger = logging.getLogger(__name__)


@dataclass
class StageReport:
    """What a stage did: the IDs for the next stage, and counts by outcome."""

    next_ids: list[int] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)


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


def load_claimed(session: Session, delivery_ids: Sequence[int]) -> list[Delivery]:
    return list(
        session.scalars(
            select(Delivery)
            .where(Delivery.id.in_(delivery_ids))
            .options(selectinload(Delivery.message))
            .order_by(Delivery.id)
        )
    )


def mark_queued(session: Session, delivery_ids: Sequence[int], now: datetime) -> None:
    """Note when work was handed on, so reconcile can tell lost work from queued work."""
    if delivery_ids:
        session.execute(
            update(Delivery).where(Delivery.id.in_(delivery_ids)).values(queued_at=now),
            execution_options={"synchronize_session": False},
        )


def log_step_error(doing: str, row_id: int, error: BaseException) -> None:
    # The type only: an exception's text may quote the message (`pipeline.logsafe`).
    log_failure(logger, f"{doing} {row_id}", error)
