"""Recording what a laboratory sent: the step an ACK waits for.

A message is keyed by (laboratory, control ID). The same key with the same bytes is a
resend (an LIS that lost our ACK sends again): it is recorded as a duplicate on the
original and nothing new is delivered. The same key with different bytes is not something
we may guess about (a correction should carry a new control ID): it is kept as the next
revision, held for a person to review, and not delivered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.hl7.facts import RoutingFacts
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Message
from pipeline.ledger.storage import StorageCipher

NEW = "new"
DUPLICATE = "duplicate"
CONFLICT = "conflict"


@dataclass(frozen=True)
class Recorded:
    message_id: int
    laboratory: str
    control_id: str
    revision: int
    #: new / duplicate / conflict
    status: str

    @property
    def to_deliver(self) -> bool:
        return self.status == NEW


def storage_context(laboratory: str, control_id: str, revision: int) -> str:
    """What a stored message's ciphertext is bound to."""
    return f"{laboratory}\0{control_id}\0{revision}"


def record_message(
    session: Session,
    data: bytes,
    facts: RoutingFacts,
    *,
    cipher: StorageCipher,
    source: str,
    source_name: str = "",
    charset: str = "",
    now: datetime,
) -> Recorded:
    """Record one accepted message (bytes as cut by intake, CR segment ends); the caller
    commits, then ACKs."""
    digest = hashlib.sha256(data).hexdigest()
    for _ in range(3):
        known = session.scalars(
            select(Message)
            .where(Message.laboratory == facts.sender, Message.control_id == facts.control_id)
            .order_by(Message.revision)
        ).all()
        same = next((m for m in known if m.content_sha256 == digest), None)
        if same is not None:
            record_event(
                session,
                same,
                "duplicate",
                f"sent again ({_origin(source, source_name)}); not delivered again",
                now,
            )
            return _recorded(same, DUPLICATE)
        revision = known[-1].revision + 1 if known else 1
        try:
            with session.begin_nested():
                message = _new_message(
                    session, data, digest, facts, revision, cipher, source, source_name, charset
                )
                message.received_at = now
                message.state = "held" if known else "received"
                session.flush()
        except IntegrityError:
            continue  # another process recorded the same key meanwhile: look again
        record_event(session, message, "received", f"from {_origin(source, source_name)}", now)
        warnings = len(facts.warnings)
        record_event(
            session,
            message,
            "parsed",
            f"{facts.message_type} v{facts.version}, status {facts.result_status or 'unknown'}, "
            f"{len(facts.orders)} order(s), {len(facts.documents)} document(s)"
            + (f", {warnings} warning(s)" if warnings else ""),
            now,
        )
        if known:
            record_event(
                session,
                message,
                "conflict",
                f"control ID already used by revision {known[0].revision} with different "
                "content; held for review, not delivered",
                now,
            )
            return _recorded(message, CONFLICT)
        return _recorded(message, NEW)
    raise RuntimeError("the ledger kept changing under a concurrent writer")  # pragma: no cover


def _new_message(
    session: Session,
    data: bytes,
    digest: str,
    facts: RoutingFacts,
    revision: int,
    cipher: StorageCipher,
    source: str,
    source_name: str,
    charset: str,
) -> Message:
    blob, key_id = cipher.encrypt(data, storage_context(facts.sender, facts.control_id, revision))
    message = Message(
        laboratory=facts.sender,
        control_id=facts.control_id,
        revision=revision,
        content_sha256=digest,
        size=len(data),
        sending_application=facts.sending_application[:200],
        message_type=facts.message_type,
        version=facts.version,
        processing_id=facts.processing_id[:8],
        result_status=facts.result_status,
        document_count=len(facts.documents),
        charset=charset[:32],
        source=source,
        source_name=source_name[:500],
        raw_encrypted=blob,
        storage_key_id=key_id,
    )
    session.add(message)
    return message


def read_stored(message: Message, cipher: StorageCipher) -> bytes:
    """The message bytes as the laboratory sent them."""
    return cipher.decrypt(
        message.raw_encrypted,
        message.storage_key_id,
        storage_context(message.laboratory, message.control_id, message.revision),
    )


def _recorded(message: Message, status: str) -> Recorded:
    return Recorded(message.id, message.laboratory, message.control_id, message.revision, status)


def _origin(source: str, source_name: str) -> str:
    return f"{source} {source_name}".strip()
