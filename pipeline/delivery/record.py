"""Recording what a laboratory sent: the step an ACK waits for.

A message is keyed by (laboratory, control ID). The same key with the same bytes is a
resend (an LIS that lost our ACK sends again): it is recorded as a duplicate on the
original and nothing new is delivered. The same key with different bytes is not something
we may guess about (a correction should carry a new control ID): it is kept as the next
revision, held for a person to review, and not delivered.

`load_stored` is the one loader of a recorded result (decrypted, read again as at intake):
route, seal, reconcile and the one pass all call it, so a stored result is read one way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.hl7.facts import RoutingFacts
from pipeline.ledger.models import Event, Message
from pipeline.ledger.states import EVENT_KINDS, HELD, RECEIVED
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
    #: New, but held: its processing ID (MSH-11) is not delivered on this platform.
    held: bool = False

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
    #: Non-empty: record it held (not to be delivered here), with this as the event's words.
    hold: str = ""


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
    """Record a group of accepted messages with three statements, whatever their number
    (the known revisions of their keys, one multi-row INSERT … RETURNING of the messages,
    one of their events; no ORM unit of work): a listener commits what arrived together in
    one transaction (group commit), so the per-message cost is the encryption, not database
    round trips.

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


@dataclass
class _Row:
    """A message row as recording needs it: known already, or inserted by this group."""

    laboratory: str
    control_id: str
    revision: int
    content_sha256: str
    id: int = 0  # 0 until the group's INSERT returned it


def _record_group(
    session: Session, items: Sequence[ToRecord], cipher: StorageCipher, now: datetime
) -> list[Recorded]:
    """Three statements whatever the group's size: the keys' known revisions, one
    multi-row INSERT … RETURNING of the new messages, one multi-row INSERT of their events."""
    keys = {(item.facts.sender, item.facts.control_id) for item in items}
    known: dict[tuple[str, str], list[_Row]] = {}
    for id_, laboratory, control_id, revision, digest in session.execute(
        select(
            Message.id,
            Message.laboratory,
            Message.control_id,
            Message.revision,
            Message.content_sha256,
        )
        .where(Message.control_id.in_({control_id for _, control_id in keys}))
        .order_by(Message.revision)
    ):
        if (laboratory, control_id) in keys:
            row = _Row(laboratory, control_id, revision, digest, id_)
            known.setdefault((laboratory, control_id), []).append(row)

    outcomes: list[tuple[ToRecord, _Row, str]] = []
    inserted: list[_Row] = []  # in `values` order
    values: list[dict[str, object]] = []
    for item in items:
        key = (item.facts.sender, item.facts.control_id)
        digest = hashlib.sha256(item.data).hexdigest()
        revisions = known.setdefault(key, [])
        same = next((row for row in revisions if row.content_sha256 == digest), None)
        if same is not None:
            outcomes.append((item, same, DUPLICATE))
            continue
        revision = revisions[-1].revision + 1 if revisions else 1
        status = CONFLICT if revisions else NEW
        row = _Row(key[0], key[1], revision, digest)
        state = HELD if status == CONFLICT or item.hold else RECEIVED
        values.append(_message_values(item, digest, revision, state, cipher, now))
        inserted.append(row)
        outcomes.append((item, row, status))
        revisions.append(row)
    if values:
        # Matched back by key, unique in the table: no reliance on RETURNING's row order.
        by_key = {(row.laboratory, row.control_id, row.revision): row for row in inserted}
        table = cast(Table, Message.__table__)
        c = table.c
        returned = session.execute(
            insert(table).returning(c.id, c.laboratory, c.control_id, c.revision), values
        )
        for id_, laboratory, control_id, revision in returned:
            by_key[(laboratory, control_id, revision)].id = id_
        assert all(row.id for row in inserted), "INSERT … RETURNING left a row without its ID"

    events: list[dict[str, object]] = []
    recorded: list[Recorded] = []

    def event(row: _Row, kind: str, detail: str) -> None:
        assert kind in EVENT_KINDS
        events.append({"message_id": row.id, "kind": kind, "detail": detail, "at": now})

    for item, row, status in outcomes:
        origin = _origin(item.source, item.source_name)
        if status == DUPLICATE:
            event(row, "duplicate", f"sent again ({origin}); not delivered again")
            recorded.append(_recorded(row, DUPLICATE))
            continue
        facts = item.facts
        event(row, "received", f"from {origin}")
        warnings = len(facts.warnings)
        event(
            row,
            "parsed",
            f"{facts.message_type} v{facts.version}, status {facts.result_status or 'unknown'}, "
            f"{len(facts.orders)} order(s), {len(facts.documents)} document(s)"
            + (f", {warnings} warning(s)" if warnings else ""),
        )
        if status == CONFLICT:
            first = known[(row.laboratory, row.control_id)][0]
            event(
                row,
                "conflict",
                f"control ID already used by revision {first.revision} with different "
                "content; held for review, not delivered",
            )
        elif item.hold:
            event(row, "held", item.hold)
        recorded.append(_recorded(row, status, held=status == NEW and bool(item.hold)))
    # RETURNING makes SQLAlchemy send one multi-row INSERT ("insertmanyvalues", from a
    # cached one-row statement) where it would otherwise executemany, a row at a time.
    event_table = cast(Table, Event.__table__)
    session.execute(insert(event_table).returning(event_table.c.id), events).close()
    return recorded


def _message_values(
    item: ToRecord,
    digest: str,
    revision: int,
    state: str,
    cipher: StorageCipher,
    now: datetime,
) -> dict[str, object]:
    facts = item.facts
    blob, key_id = cipher.encrypt(
        item.data, storage_context(facts.sender, facts.control_id, revision)
    )
    return {
        "laboratory": facts.sender,
        "control_id": facts.control_id,
        "revision": revision,
        "state": state,
        "content_sha256": digest,
        "size": len(item.data),
        "sending_application": facts.sending_application[:200],
        "message_type": facts.message_type,
        "version": facts.version,
        "processing_id": facts.processing_id[:8],
        "result_status": facts.result_status,
        "document_count": len(facts.documents),
        "charset": item.charset[:32],
        "format": facts.format,
        "source": item.source,
        "source_name": item.source_name[:500],
        "raw_encrypted": blob,
        "storage_key_id": key_id,
        "received_at": now,
    }


def read_stored(message: Message, cipher: StorageCipher) -> bytes:
    """The message bytes as the laboratory sent them."""
    return cipher.decrypt(
        message.raw_encrypted,
        message.storage_key_id,
        storage_context(message.laboratory, message.control_id, message.revision),
    )


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


def _recorded(row: _Row, status: str, *, held: bool = False) -> Recorded:
    return Recorded(row.id, row.laboratory, row.control_id, row.revision, status, held=held)


def _origin(source: str, source_name: str) -> str:
    return f"{source} {source_name}".strip()
