"""Recording a result and creating its deliveries, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pipeline.delivery.record import (
    CONFLICT,
    DUPLICATE,
    NEW,
    Recorded,
    read_stored,
    record_message,
)
from pipeline.delivery.route import route_message
from pipeline.hl7.intake import read_results
from pipeline.ledger.models import Delivery, Event, Message
from pipeline.ledger.storage import StorageCipher, StoredMessageUnreadable
from pipeline.recipients.directory_csv import import_directory
from tests.pipeline.delivery.scenario import LAB, STRANGER, directory_csv, oru

NOW = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
CIPHER = StorageCipher.from_key(b"k" * 32)


@pytest.fixture
def directory(session: Session, tmp_path: Path) -> Session:
    report = import_directory(session, directory_csv(tmp_path))
    assert not report.errors
    session.commit()
    return session


def record(session: Session, data: bytes, source_name: str = "a.hl7") -> Recorded:
    result = next(read_results(data))
    assert result.facts is not None, result.error
    return record_message(
        session, result.data, result.facts, cipher=CIPHER, source="file",
        source_name=source_name, now=NOW,
    )  # fmt: skip


def route(session: Session, recorded: Recorded, data: bytes) -> Message:
    message = session.get_one(Message, recorded.message_id)
    facts = next(read_results(data)).facts
    assert facts is not None
    route_message(session, message, facts, mail_domain="labdispatch.test", now=NOW)
    session.flush()
    return message


def kinds(session: Session, message_id: int) -> list[str]:
    return list(
        session.scalars(select(Event.kind).where(Event.message_id == message_id).order_by(Event.id))
    )


def test_a_new_result_is_stored_encrypted_and_reads_back_exactly(directory: Session) -> None:
    data = oru()
    recorded = record(directory, data)

    message = directory.get_one(Message, recorded.message_id)
    assert recorded.status == NEW
    assert (message.laboratory, message.control_id, message.revision) == (LAB, "LT-0001", 1)
    assert b"DUPONT" not in message.raw_encrypted and b"Potassium" not in message.raw_encrypted
    assert read_stored(message, CIPHER) == data
    assert kinds(directory, message.id) == ["received", "parsed"]


def test_resent_control_id_with_the_same_content_is_a_duplicate(directory: Session) -> None:
    first = record(directory, oru())
    route(directory, first, oru())
    again = record(directory, oru(), source_name="again.hl7")

    assert again.status == DUPLICATE and not again.to_deliver
    assert again.message_id == first.message_id
    assert directory.scalar(select(func.count()).select_from(Message)) == 1
    assert directory.scalar(select(func.count()).select_from(Delivery)) == 2
    assert kinds(directory, first.message_id)[-1] == "duplicate"


def test_same_control_id_with_other_content_is_held_as_a_new_revision(
    directory: Session,
) -> None:
    first = record(directory, oru())
    changed = record(directory, oru(potassium="4.1"))

    held = directory.get_one(Message, changed.message_id)
    assert changed.status == CONFLICT and not changed.to_deliver
    assert (held.revision, held.state) == (2, "held")
    assert kinds(directory, held.id) == ["received", "parsed", "conflict"]
    assert directory.get_one(Message, first.message_id).state == "received"


def test_routing_creates_one_delivery_per_recipient_on_its_preferred_channel(
    directory: Session,
) -> None:
    data = oru()
    message = route(directory, record(directory, data), data)

    deliveries = {d.recipient_key: d for d in message.deliveries}
    assert message.state == "routed"
    assert set(deliveries) == {"sophie.martin", "paul.leroy"}  # ORC-12 = OBR-16: one delivery
    martin = deliveries["sophie.martin"]
    assert (martin.role, martin.channel_kind, martin.state) == ("ordering", "mail", "pending")
    assert martin.channel_address == "sophie.martin@martin.mssante.example"
    assert deliveries["paul.leroy"].channel_kind == "mailbox"
    assert martin.envelope_message_id is not None
    assert martin.envelope_message_id.endswith("@labdispatch.test>")
    assert kinds(directory, message.id).count("routed") == 2


def test_envelope_ids_are_stable_for_the_same_message_and_recipient(
    directory: Session,
) -> None:
    data = oru()
    message = route(directory, record(directory, data), data)
    ids = {d.recipient_key: (d.envelope_message_id, d.envelope_id) for d in message.deliveries}

    # Routed afresh (as after an operator's reset), the IDs come out the same: they derive
    # from the ledger key and the recipient, never from time or chance.
    directory.execute(delete(Event))
    directory.execute(delete(Delivery))
    directory.expire_all()
    message.state = "received"
    route(directory, Recorded(message.id, LAB, "LT-0001", 1, NEW), data)

    again = {d.recipient_key: (d.envelope_message_id, d.envelope_id) for d in message.deliveries}
    assert again == ids
    assert len({envelope_id for _, envelope_id in ids.values()}) == 2


def test_a_participant_unknown_to_the_directory_is_parked_as_unroutable(
    directory: Session,
) -> None:
    data = oru(copy_to=STRANGER)
    message = route(directory, record(directory, data), data)

    unknown = [d for d in message.deliveries if d.state == "unroutable"]
    assert message.state == "routed"  # Dr Martin still gets it
    assert len(unknown) == 1
    assert unknown[0].wanted == "RPPS:10009999999"
    assert "not in the directory" in unknown[0].last_error
    assert "unroutable" in kinds(directory, message.id)


def test_a_result_nobody_can_receive_is_unroutable(directory: Session) -> None:
    data = oru(ordering=STRANGER, copy_to="")
    message = route(directory, record(directory, data), data)

    assert message.state == "unroutable"
    assert [d.state for d in message.deliveries] == ["unroutable"]


def test_routing_twice_creates_nothing_more(directory: Session) -> None:
    data = oru()
    recorded = record(directory, data)
    message = route(directory, recorded, data)
    report = route_message(
        directory, message, next(read_results(data)).facts,  # type: ignore[arg-type]
        mail_domain="labdispatch.test", now=NOW,
    )  # fmt: skip

    assert (report.routed, report.unroutable) == (2, 0)
    assert directory.scalar(select(func.count()).select_from(Delivery)) == 2


def test_a_stored_ciphertext_opens_only_on_its_own_laboratory_control_id_and_revision(
    directory: Session,
) -> None:
    """The at-rest cipher binds each row to (laboratory, control ID, revision): a ciphertext
    moved to another revision of the same result, or to another laboratory's result with the
    same control ID, no longer opens (someone with write access to the database cannot make
    one result read as another)."""
    first = directory.get_one(Message, record(directory, oru("BIND-1")).message_id)
    second = directory.get_one(
        Message, record(directory, oru("BIND-1", potassium="6.1")).message_id
    )
    other_lab_data = oru("BIND-1").replace(f"|{LAB}|".encode(), b"|LABO-AUTRE|", 1)
    other_lab = directory.get_one(Message, record(directory, other_lab_data).message_id)
    assert [(m.laboratory, m.revision) for m in (first, second, other_lab)] == [
        (LAB, 1),
        (LAB, 2),
        ("LABO-AUTRE", 1),
    ]
    assert read_stored(second, CIPHER) != read_stored(first, CIPHER)
    # Each opens where it was written.
    for message in (first, second, other_lab):
        assert read_stored(message, CIPHER)

    first.raw_encrypted, second.raw_encrypted = second.raw_encrypted, first.raw_encrypted
    for message in (first, second):
        with pytest.raises(StoredMessageUnreadable, match="does not decrypt"):
            read_stored(message, CIPHER)
    first.raw_encrypted, second.raw_encrypted = second.raw_encrypted, first.raw_encrypted

    first.raw_encrypted, other_lab.raw_encrypted = other_lab.raw_encrypted, first.raw_encrypted
    for message in (first, other_lab):
        with pytest.raises(StoredMessageUnreadable, match="does not decrypt"):
            read_stored(message, CIPHER)
