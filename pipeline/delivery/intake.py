"""Intake into the ledger: read what a laboratory sent, record it, route it.

The caller commits, then answers the laboratory (ACK, file moved to done/): the answer
always follows the commit (ARCHITECTURE rule 1). Refused messages come back with their
`IntakeError` for the ACK; quarantining them is the listener's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from pipeline.delivery.record import Recorded, record_message
from pipeline.delivery.routing import RouteReport, route_message
from pipeline.delivery.services import DeliveryServices
from pipeline.hl7.intake import IntakeResult, read_results
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Message

PROCESSING_WORDS = {"P": "production", "T": "training", "D": "debugging"}


@dataclass(frozen=True)
class Accepted:
    result: IntakeResult
    recorded: Recorded | None = None  # None: refused (see result.error)
    route: RouteReport | None = None  # None: not routed (refused, duplicate, held)


def accept_result(
    session: Session,
    result: IntakeResult,
    services: DeliveryServices,
    *,
    source: str,
    source_name: str = "",
    now: datetime,
) -> Accepted:
    """Record one read message and, when it is new, create its deliveries."""
    if result.message is None or result.facts is None:
        return Accepted(result)
    recorded = record_message(
        session,
        result.data,
        result.facts,
        cipher=services.cipher,
        source=source,
        source_name=source_name,
        charset=result.message.charset,
        now=now,
    )
    if not recorded.to_deliver:
        return Accepted(result, recorded)
    message = session.get_one(Message, recorded.message_id)
    if message.processing_id not in services.processing_ids:
        message.state = "held"
        word = PROCESSING_WORDS.get(message.processing_id, "?")
        delivered = ", ".join(services.processing_ids)
        record_event(
            session,
            message,
            "held",
            f"processing ID {message.processing_id} ({word}): not delivered here, where only "
            f"{delivered} is (LABDISPATCH_DELIVER_PROCESSING_IDS)",
            now,
        )
        return Accepted(result, recorded)
    report = route_message(
        session, message, result.facts, mail_domain=services.mail_domain, now=now
    )
    return Accepted(result, recorded, report)


def accept_bytes(
    session: Session,
    data: bytes,
    services: DeliveryServices,
    *,
    source: str,
    source_name: str = "",
) -> list[Accepted]:
    """Every message of a file, batch or stream, in order."""
    return [
        accept_result(
            session,
            result,
            services,
            source=source,
            source_name=source_name,
            now=services.clock(),
        )
        for result in read_results(data)
    ]
