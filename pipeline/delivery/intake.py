"""Intake into the ledger: read what a laboratory sent, record it (or quarantine it).

The caller commits, then answers the laboratory (ACK, file moved to done/): the answer
always follows the commit (ARCHITECTURE rule 1). `store_batch` is that commit policy, the
one every intake (MLLP, HTTP API, drop folder) goes through via `workers.intake_commit`:
one transaction per group, what a ledger outage is (`ledger_unreachable`: every item is
answered "not stored, send again": AE, 503, the file put back), and a group that fails for
another reason tried again item by item so one bad message turns no other away. A listener
hands over what arrived together (`accept_batch`) so one transaction covers many messages.
Refused messages are kept in quarantine (`Rejection`) with the reason their ACK gave, for
the laboratory and ops to see.
Routing is the next step (`pipeline.delivery.deliver`, one pass per batch), run by
workers; `accept_bytes` routes at once for the one-process `deliver` command.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from pipeline.db import begin_write
from pipeline.delivery.record import NEW, Recorded, ToRecord, record_messages
from pipeline.delivery.route import RouteReport, route_message
from pipeline.delivery.services import DeliveryServices
from pipeline.hl7.errors import NotHL7
from pipeline.hl7.intake import CharsetLookup, IntakeResult, unavailable_ack
from pipeline.hprim.intake import HprimResult
from pipeline.ledger.models import Message, Rejection
from pipeline.ledger.storage import StorageCipher
from pipeline.reading import (
    HL7V2,
    ReadResult,
    claimed_identity,
    format_of,
    read_any,
    readable,
    result_charset,
)
from pipeline.recipients.laboratories import laboratory_charsets

PROCESSING_WORDS = {"P": "production", "T": "training", "D": "debugging"}

HPRIM_OVER_MLLP = (
    "HPRIM is not taken over MLLP, which carries HL7 v2 only: drop the file in the watched "
    "folder or POST it to /v1/results"
)
UNAVAILABLE_REASON = (
    "not stored: the result ledger is unavailable; keep the message and send it again later"
)
FAILED_REASON = "not stored: an internal error occurred; keep the message and send it again later"
#: Why an item was not stored (`Stored.failure`): the database failed (it is down, or
#: refused the write): send again; or an error of ours.
UNAVAILABLE = "unavailable"
FAILED = "failed"


@dataclass(frozen=True)
class Inbound:
    """What a laboratory handed over in one go: one MLLP frame, or one whole file."""

    data: bytes
    source: str  # "mllp", "file", "api"
    source_name: str = ""  # peer address or file name


@dataclass(frozen=True)
class Answer:
    """What became of one message, and the ACK that says so (sent only after the commit)."""

    result: ReadResult
    recorded: Recorded | None = None  # None: refused (see result.error)
    rejection_id: int | None = None
    held: bool = False  # recorded, but not to be delivered on this platform
    route: RouteReport | None = None  # set when routed at once (`accept_bytes`)
    ack: bytes | None = None  # None: the sender asked for no accept ACK (MSH-15)

    @property
    def status(self) -> str:
        """accepted / duplicate / conflict / held / rejected."""
        if self.recorded is None:
            return "rejected"
        if self.held:
            return "held"
        return "accepted" if self.recorded.status == NEW else self.recorded.status

    @property
    def message_id(self) -> int | None:
        return self.recorded.message_id if self.recorded is not None else None

    @property
    def to_route(self) -> bool:
        """New, deliverable, not yet routed: the route stage must run for it."""
        return self.status == "accepted" and self.route is None


def accept_batch(
    session: Session,
    inbound: Sequence[Inbound],
    services: DeliveryServices,
    *,
    now: datetime,
    route: bool = False,
) -> list[list[Answer]]:
    """Record (or quarantine) every message of every item; one list of answers per item.

    With `route`, deliveries are created at once (one-process use); otherwise the messages
    stay `received` for the route stage."""
    charsets = laboratory_charsets(session)
    results = [
        [(item, result) for result in _read(item, charsets)] or [(item, _empty(item))]
        for item in inbound
    ]
    accepted = [(item, result) for group in results for item, result in group if _readable(result)]
    recorded = record_messages(
        session,
        [
            ToRecord(
                data=result.data,
                facts=result.facts,  # type: ignore[arg-type]  # _readable checked it
                source=item.source,
                source_name=item.source_name,
                charset=result_charset(result),
                hold=_hold_reason(result, services.processing_ids),
            )
            for item, result in accepted
        ],
        cipher=services.cipher,
        now=now,
    )
    by_result = {id(result): r for (_, result), r in zip(accepted, recorded, strict=True)}
    answers: list[list[Answer]] = []
    for group in results:
        group_answers: list[Answer] = []
        for item, result in group:
            record = by_result.get(id(result))
            if record is None:
                rejection = quarantine(session, item, result, services.cipher, now)
                group_answers.append(
                    Answer(result, rejection_id=rejection.id, ack=result.accept_ack())
                )
                continue
            held = record.held
            report = None
            if route and record.status == NEW and not held:
                message = record.message or session.get_one(Message, record.message_id)
                assert result.facts is not None
                report = route_message(
                    session,
                    message,
                    result.facts,
                    mail_domain=services.mail_domain,
                    now=now,
                    blind_index=services.cipher,
                    notices_dir=services.notices_dir,
                )
            group_answers.append(
                Answer(result, record, held=held, route=report, ack=result.accept_ack())
            )
        answers.append(group_answers)
    return answers


@dataclass(frozen=True)
class Stored:
    """What became of one item handed to `store_batch`: its answers, committed or not."""

    item: Inbound
    answers: list[Answer]
    #: "" when committed; else UNAVAILABLE or FAILED, the answers saying "send again".
    failure: str = ""
    error: BaseException | None = None

    @property
    def committed(self) -> bool:
        return not self.failure

    @property
    def to_route(self) -> list[int]:
        """The committed new messages the route stage must take up."""
        if not self.committed:
            return []
        return [a.message_id for a in self.answers if a.to_route and a.message_id is not None]


#: Told of each failure of `store_batch`: the items not stored and the error.
IntakeFailure = Callable[[Sequence[Inbound], BaseException], None]


def ledger_unreachable(error: BaseException) -> bool:
    """The database cannot be reached right now: trying the items one by one would only
    fail the same way, slower."""
    if isinstance(error, OperationalError | InterfaceError | DisconnectionError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def store_batch(
    sessions: sessionmaker[Session],
    inbound: Sequence[Inbound],
    services: DeliveryServices,
    *,
    failed: IntakeFailure | None = None,
) -> list[Stored]:
    """Record every item in one transaction and commit; one `Stored` per item, in order.

    Nothing is answered here: the caller answers once this returned (after the commit). A
    batch that fails for a reason other than the ledger being unreachable is tried again
    one item at a time, so one message that trips a bug (or races a concurrent writer)
    does not turn away the items that shared its transaction."""
    try:
        with sessions() as session:
            begin_write(session)  # SQLite: wait for another writer rather than fail
            answers = accept_batch(session, inbound, services, now=services.clock())
            session.commit()
        return [Stored(item, group) for item, group in zip(inbound, answers, strict=True)]
    except Exception as error:
        if ledger_unreachable(error) or len(inbound) == 1:
            if failed is not None:
                failed(inbound, error)
            failure, reason = (
                (UNAVAILABLE, UNAVAILABLE_REASON)
                if isinstance(error, DBAPIError)
                else (FAILED, FAILED_REASON)
            )
            return [
                Stored(item, unavailable_answers(item, reason), failure, error) for item in inbound
            ]
    return [store_batch(sessions, [item], services, failed=failed)[0] for item in inbound]


def accept_bytes(
    session: Session,
    data: bytes,
    services: DeliveryServices,
    *,
    source: str,
    source_name: str = "",
) -> list[Answer]:
    """Every message of a file, batch or stream, recorded and routed at once, in order."""
    (answers,) = accept_batch(
        session, [Inbound(data, source, source_name)], services, now=services.clock(), route=True
    )
    return answers


def unavailable_answers(item: Inbound, reason: str) -> list[Answer]:
    """Answers for an item that could not be stored (the ledger is down): an error ACK per
    message telling the LIS to send again; never AA for something not committed."""
    return [
        Answer(
            result,
            ack=None if isinstance(result, HprimResult) else unavailable_ack(result.data, reason),
        )
        for result in _read(item, None)
    ] or [Answer(_empty(item), ack=unavailable_ack(item.data, reason))]


def quarantine(
    session: Session, item: Inbound, result: ReadResult, cipher: StorageCipher, now: datetime
) -> Rejection:
    """Keep a refused message, encrypted, with the reason its ACK gave."""
    error = result.error
    laboratory, control_id = claimed_identity(result)
    digest = hashlib.sha256(result.data).hexdigest()
    blob, key_id = cipher.encrypt(result.data, quarantine_context(digest))
    rejection = Rejection(
        received_at=now,
        source=item.source,
        source_name=_storable(item.source_name, Rejection.source_name),
        laboratory=_storable(laboratory, Rejection.laboratory),
        control_id=_storable(control_id, Rejection.control_id),
        ack_code=error.ack_code if error is not None else "AR",
        error=type(error).__name__ if error is not None else "Unreadable",
        hl7_code=error.hl7_code if error is not None else "",
        reason=_storable(error.reason if error is not None else "unreadable", Rejection.reason),
        size=len(result.data),
        content_sha256=digest,
        raw_encrypted=blob,
        storage_key_id=key_id,
    )
    session.add(rejection)
    session.flush()
    return rejection


def _storable(text: str, column: InstrumentedAttribute[str]) -> str:
    """A sender's text as a quarantine column can hold it on every engine: no NUL
    (PostgreSQL text cannot hold one) and no longer than the column. A refused message's
    header is whatever the sender wrote; keeping it must never fail the rejection."""
    text = text.replace("\0", "\ufffd")
    length = getattr(column.property.columns[0].type, "length", None)
    return text[:length] if length else text


def quarantine_context(digest: str) -> str:
    """What a quarantined message's ciphertext is bound to."""
    return f"rejected\0{digest}"


def _readable(result: ReadResult) -> bool:
    return readable(result)


def _read(item: Inbound, charsets: CharsetLookup | None) -> Iterator[ReadResult]:
    """The results an item holds, as its door allows: MLLP carries HL7 v2 only. HPRIM
    defines no acknowledgement an MLLP sender could wait for, so an HPRIM frame is refused
    there with an AR that says where HPRIM goes, rather than recorded and left unanswered
    (the sender would time out and send it again forever)."""
    if item.source == "mllp" and format_of(item.data) != HL7V2:
        yield IntakeResult(1, item.data, error=NotHL7(HPRIM_OVER_MLLP))
        return
    yield from read_any(item.data, charsets)


def _empty(item: Inbound) -> IntakeResult:
    """An item with no message in it (empty frame or file) still gets an answer and a
    quarantine row."""
    return IntakeResult(1, item.data, error=NotHL7("nothing was sent: no HL7 message in it"))


def _hold_reason(result: ReadResult, delivered: Sequence[str]) -> str:
    """Why a new message is held rather than delivered: its processing ID (MSH-11) is not
    delivered on this platform; empty when it is."""
    assert result.facts is not None
    processing_id = result.facts.processing_id[:8]  # as the ledger keeps it
    if processing_id in delivered:
        return ""
    word = PROCESSING_WORDS.get(processing_id, "?")
    return (
        f"processing ID {processing_id} ({word}): not delivered here, where only "
        f"{', '.join(delivered)} is (LABDISPATCH_DELIVER_PROCESSING_IDS)"
    )
