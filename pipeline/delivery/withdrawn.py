"""Deliveries queued for a mailbox the national directory withdrew.

A mailbox gone from the Annuaire Santé extraction no longer exists, or no longer belongs to
that recipient: nothing more is sent to it. Deliveries still waiting for it (pending,
retrying) are given up with the reason, and their laboratory told (`notices.give_up`), in
the import's transaction. A delivery a worker holds right now (its lease running) is left
to finish its attempt and is counted, so the operator knows.

While the MSSanté channel is not built no delivery is ever made to an `mssante` channel
(routing fails them at once), so today this finds nothing; it is what keeps a withdrawn
mailbox from being used once deliveries to MSSanté exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from pipeline.delivery.notices import give_up
from pipeline.ledger.models import Delivery
from pipeline.ledger.states import OPEN_STATES

#: Pairs per query: well under every engine's bound-parameter limit.
CHUNK = 400


@dataclass(frozen=True)
class WithdrawnReport:
    failed: int
    in_flight: int


def fail_withdrawn(
    session: Session,
    withdrawn: Sequence[tuple[str, str]],
    now: datetime,
    notices_dir: Path | None,
    *,
    kind: str = "mssante",
) -> WithdrawnReport:
    """Give up the open deliveries to the withdrawn `(recipient key, address)` mailboxes;
    the caller commits."""
    failed = in_flight = 0
    for start in range(0, len(withdrawn), CHUNK):
        pairs = list(withdrawn[start : start + CHUNK])
        deliveries = session.scalars(
            select(Delivery).where(
                Delivery.state.in_(OPEN_STATES),
                Delivery.channel_kind == kind,
                tuple_(Delivery.recipient_key, Delivery.channel_address).in_(pairs),
            )
        ).all()
        for delivery in deliveries:
            if delivery.leased_until is not None and delivery.leased_until > now:
                in_flight += 1
                continue
            give_up(
                session,
                delivery,
                f"not sent: the mailbox {delivery.channel_address} was withdrawn from the "
                "national directory (Annuaire Santé)",
                now,
                notices_dir,
            )
            failed += 1
    return WithdrawnReport(failed=failed, in_flight=in_flight)
