"""One result's whole timeline, per recipient: what `labdispatch trace` prints.

Looked up by control ID (MSH-10), optionally narrowed to one laboratory, since two labs may
use the same control ID. Every revision of the key is shown (a held conflicting resend is
part of the story). Returns plain frozen data, so the command line and later the HTTP API
render it without a session; nothing here reads the message bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from pipeline.errors import LabdispatchError
from pipeline.jsonable import jsonable
from pipeline.ledger.models import Delivery, Message


class UnknownResult(LabdispatchError):
    """No message with that control ID (from that laboratory) is in the ledger."""


@dataclass(frozen=True)
class EventView:
    at: datetime
    kind: str
    detail: str
    delivery: int | None  # the delivery it concerns; None for message-level steps
    recipient: str | None  # that delivery's recipient key


@dataclass(frozen=True)
class AttemptView:
    number: int
    started_at: datetime
    finished_at: datetime
    transport: str
    destination: str
    outcome: str
    evidence: str


@dataclass(frozen=True)
class DeliveryView:
    id: int
    recipient: str | None
    wanted: str
    role: str
    channel: str | None
    state: str
    attempts: tuple[AttemptView, ...]
    envelope_message_id: str | None
    last_error: str
    sealed_at: datetime | None
    accepted_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None


@dataclass(frozen=True)
class ResultTrace:
    id: int
    laboratory: str
    control_id: str
    revision: int
    state: str
    received_at: datetime
    source: str
    message_type: str
    version: str
    result_status: str
    size: int
    deliveries: tuple[DeliveryView, ...]
    events: tuple[EventView, ...]
    format: str = "hl7v2"  # hl7v2, hprim-sante, hprim-medecins

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(asdict(self))
        return data


def trace_result(
    session: Session, control_id: str, *, laboratory: str | None = None
) -> list[ResultTrace]:
    """Every message with this control ID (and laboratory, when given), oldest first."""
    query = (
        select(Message)
        .where(Message.control_id == control_id)
        .options(
            selectinload(Message.events),
            selectinload(Message.deliveries).selectinload(Delivery.attempt_log),
        )
        .order_by(Message.laboratory, Message.revision)
    )
    if laboratory:
        query = query.where(Message.laboratory == laboratory)
    messages = session.scalars(query).all()
    if not messages:
        where = f" from laboratory {laboratory}" if laboratory else ""
        raise UnknownResult(f"no result with control ID {control_id}{where} in the ledger")
    return [_view(message) for message in messages]


def trace_message(session: Session, message_id: int) -> ResultTrace:
    """One message's timeline, by its ledger ID (what the HTTP API answers with)."""
    message = session.scalars(
        select(Message)
        .where(Message.id == message_id)
        .options(
            selectinload(Message.events),
            selectinload(Message.deliveries).selectinload(Delivery.attempt_log),
        )
    ).one_or_none()
    if message is None:
        raise unknown_message(message_id)
    return _view(message)


def unknown_message(message_id: int) -> UnknownResult:
    """The one answer for an ID that is not there, or not the caller's to see: the same
    words either way, so an answer never tells whether an ID exists."""
    return UnknownResult(f"no message {message_id} in the ledger")


def _view(message: Message) -> ResultTrace:
    keys = {d.id: d.recipient_key for d in message.deliveries}
    return ResultTrace(
        id=message.id,
        laboratory=message.laboratory,
        control_id=message.control_id,
        revision=message.revision,
        state=message.state,
        received_at=message.received_at,
        source=f"{message.source} {message.source_name}".strip(),
        message_type=message.message_type,
        version=message.version,
        result_status=message.result_status,
        size=message.size,
        format=message.format,
        deliveries=tuple(
            DeliveryView(
                id=d.id,
                recipient=d.recipient_key,
                wanted=d.wanted,
                role=d.role,
                channel=f"{d.channel_kind}:{d.channel_address}" if d.channel_kind else None,
                state=d.state,
                attempts=tuple(
                    AttemptView(
                        a.number,
                        a.started_at,
                        a.finished_at,
                        a.transport,
                        a.destination,
                        a.outcome,
                        a.evidence,
                    )
                    for a in d.attempt_log
                ),
                envelope_message_id=d.envelope_message_id,
                last_error=d.last_error,
                sealed_at=d.sealed_at,
                accepted_at=d.accepted_at,
                delivered_at=d.delivered_at,
                read_at=d.read_at,
                failed_at=d.failed_at,
            )
            for d in message.deliveries
        ),
        events=tuple(
            EventView(
                e.at,
                e.kind,
                e.detail,
                e.delivery_id,
                keys.get(e.delivery_id) if e.delivery_id else None,
            )
            for e in sorted(message.events, key=lambda e: (e.at, e.id))
        ),
    )


def render_trace(trace: ResultTrace) -> str:
    """The timeline `labdispatch trace` prints: the message, then each recipient's story."""
    lines = [
        f"{trace.laboratory} {trace.control_id}"
        + (f" (revision {trace.revision})" if trace.revision > 1 else "")
        + f"  {trace.state}",
        "  "
        + ("" if trace.format == "hl7v2" else f"{trace.format} ")
        + f"{trace.message_type} v{trace.version}, status {trace.result_status or 'unknown'}, "
        f"{trace.size} bytes, received {_when(trace.received_at)} via {trace.source}",
    ]
    for event in trace.events:
        if event.delivery is None:
            lines.append(f"  {_when(event.at)}  {event.kind:<10} {event.detail}")
    for delivery in trace.deliveries:
        who = delivery.recipient or f"unknown {delivery.wanted}"
        lines.append(
            f"  → {who} ({delivery.role or '-'})"
            + (f" via {delivery.channel}" if delivery.channel else "")
            + f": {delivery.state.upper()}"
        )
        for event in trace.events:
            if event.delivery == delivery.id:
                lines.append(f"      {_when(event.at)}  {event.kind:<10} {event.detail}")
    return "\n".join(lines)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")
