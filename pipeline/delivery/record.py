"""Recording what a laboratory sent: the step an ACK waits for.

A message is keyed by (laboratory, control ID). The same key with the same bytes is a
resend (an LIS that lost our ACK sends again): it is recorded as a duplicate on the
original and nothing new is delivered. The same key with different bytes is not something
we may guess about (a correction should carry a new control ID): it is kept as the next
revision, held for a person to review, and not delivered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.hl7.facts import RoutingFacts
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Message
from pipeline.ledger.storage import StorageCipher
from pipeline.reading import ReadResult, read_again

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
    #: The row itself, for the caller's next step in the same session (not compared).
    message: Message | None = field(default=None, compare=False, repr=False)

    @property
    def to_deliver(self) -> bool:
        return self.status == NEW


def storage_context(laboratory: str, control_id: str, revision: int) -> str:
    """What a stored message's ciphertext is bound to."""
    return f"{laboratory}\0{control_id}\0{revision}"


@dataclass(frozen=True)
class ToRecord:
    """One accepted message to record: its bytes as cut by intake (CR segment ends)."""

    data: bytes
    facts: RoutingFacts
    source: str
    source_name: str = ""
    charset: str = ""


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
    """Record one accepted message; the caller commits, then ACKs."""
    (recorded,) = record_messages(
        session, [ToRecord(data, facts, source, source_name, charset)], cipher=cipher, now=now
    )
    return recorded


def record_messages(
    session: Session, items: Sequence[ToRecord], *, cipher: StorageCipher, now: datetime
) -> list[Recorded]:
    """Record a group of accepted messages with a handful of statements, whatever their
    number: a listener commits what arrived together in one transaction (group commit), so
    the per-message cost is the encryption, not database round trips.

    Within the group, a key seen twice is handled in order (a resend arriving right behind
    the original is its duplicate). If another process records one of the keys meanwhile,
    the group is recorded again one message at a time, each looking again."""
    if not items:
        return []
    try:
        with session.begin_nested():
            return _record_group(session, items, cipher, now)
    except IntegrityError:
        pass
    recorded: list[Recorded] = []
    for item in items:
        for _ in range(3):
            try:
                with session.begin_nested():
                    recorded.extend(_record_group(session, [item], cipher, now))
                break
            except IntegrityError:
                continue  # recorded by another process meanwhile: look again
        else:  # pragma: no cover
            raise RuntimeError("the ledger kept changing under a concurrent writer")
    return recorded


def _record_group(
    session: Session, items: Sequence[ToRecord], cipher: StorageCipher, now: datetime
) -> list[Recorded]:
    keys = {(item.facts.sender, item.facts.control_id) for item in items}
    known: dict[tuple[str, str], list[Message]] = {}
    for message in session.scalars(
        select(Message)
        .where(Message.control_id.in_({control_id for _, control_id in keys}))
        .order_by(Message.revision)
    ):
        key = (message.laboratory, message.control_id)
        if key in keys:
            known.setdefault(key, []).append(message)

    outcomes: list[tuple[ToRecord, Message, str]] = []
    for item in items:
        key = (item.facts.sender, item.facts.control_id)
        digest = hashlib.sha256(item.data).hexdigest()
        revisions = known.setdefault(key, [])
        same = next((m for m in revisions if m.content_sha256 == digest), None)
        if same is not None:
            outcomes.append((item, same, DUPLICATE))
            continue
        revision = revisions[-1].revision + 1 if revisions else 1
        message = _new_message(
            session,
            item.data,
            digest,
            item.facts,
            revision,
            cipher,
            item.source,
            item.source_name,
            item.charset,
        )
        message.received_at = now
        message.state = "held" if revisions else "received"
        outcomes.append((item, message, CONFLICT if revisions else NEW))
        revisions.append(message)
    session.flush()

    recorded: list[Recorded] = []
    for item, message, status in outcomes:
        origin = _origin(item.source, item.source_name)
        if status == DUPLICATE:
            record_event(
                session, message, "duplicate", f"sent again ({origin}); not delivered again", now
            )
            recorded.append(_recorded(message, DUPLICATE))
            continue
        facts = item.facts
        record_event(session, message, "received", f"from {origin}", now)
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
        if status == CONFLICT:
            first = known[(message.laboratory, message.control_id)][0]
            record_event(
                session,
                message,
                "conflict",
                f"control ID already used by revision {first.revision} with different "
                "content; held for review, not delivered",
                now,
            )
        recorded.append(_recorded(message, status))
    return recorded


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
        format=facts.format,
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


def read_recorded(message: Message, cipher: StorageCipher) -> ReadResult:
    """A recorded result read again, in the format and character set of its intake."""
    return load_stored(message, cipher).result


@dataclass(frozen=True)
class StoredResult:
    """A recorded result as the delivery steps need it: the bytes the laboratory sent (the
    attachment) and what they read as (routing facts, documents)."""

    data: bytes
    result: ReadResult


def load_stored(message: Message, cipher: StorageCipher) -> StoredResult:
    """The one loader of a stored result: decrypted, then read again in the format and
    character set of its intake. Routing and sealing share what it returns, so a result is
    read once per pass."""
    data = read_stored(message, cipher)
    return StoredResult(data, read_again(data, message.format, message.charset))


def _recorded(message: Message, status: str) -> Recorded:
    return Recorded(
        message.id, message.laboratory, message.control_id, message.revision, status, message
    )


def _origin(source: str, source_name: str) -> str:
    return f"{source} {source_name}".strip()
