"""Intake as the listeners call it: many items in one transaction, each message answered."""

from __future__ import annotations

import hashlib

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.intake import (
    Answer,
    Inbound,
    accept_batch,
    quarantine_context,
    unavailable_answers,
)
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery, Event, Message, Rejection
from tests.pipeline.delivery.scenario import LAB, oru
from tests.pipeline.sealing.helpers import FIXTURES

PEER = "10.1.2.3:51234"


def accept(
    ledger: sessionmaker[Session], services: DeliveryServices, *items: bytes
) -> list[list[Answer]]:
    """One listener round: every item recorded (or refused) in one committed transaction."""
    with ledger.begin() as session:
        return accept_batch(
            session, [Inbound(data, "mllp", PEER) for data in items], services, now=services.clock()
        )


def msa(ack: bytes | None) -> list[str]:
    """The MSA segment's fields: ["MSA", code, control ID, text]."""
    assert ack is not None
    (segment,) = [s for s in ack.decode("utf-8").split("\r") if s.startswith("MSA|")]
    return segment.split("|")


def kinds(ledger: sessionmaker[Session], message_id: int | None) -> list[str]:
    with ledger() as session:
        return list(
            session.scalars(
                select(Event.kind).where(Event.message_id == message_id).order_by(Event.id)
            )
        )


def count(ledger: sessionmaker[Session], table: type[Message | Rejection | Delivery]) -> int:
    with ledger() as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def test_many_items_in_one_call_each_get_a_row_events_and_an_aa(
    ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    answers = accept(ledger, services, oru("B-1"), oru("B-2"), oru("B-3") + oru("B-4"))

    assert [len(group) for group in answers] == [1, 1, 2]  # a stream of two: two answers
    flat = [answer for group in answers for answer in group]
    assert [a.status for a in flat] == ["accepted"] * 4
    assert all(a.to_route for a in flat)
    assert [msa(a.ack)[1:3] for a in flat] == [["AA", f"B-{n}"] for n in range(1, 5)]
    assert len({a.message_id for a in flat}) == 4
    with ledger() as session:
        messages = session.scalars(select(Message).order_by(Message.id)).all()
        assert [(m.laboratory, m.control_id, m.state) for m in messages] == [
            (LAB, f"B-{n}", "received") for n in range(1, 5)
        ]
        assert {(m.source, m.source_name) for m in messages} == {("mllp", PEER)}
    for answer in flat:
        assert kinds(ledger, answer.message_id) == ["received", "parsed"]
    assert count(ledger, Delivery) == 0  # routing is the next stage's work


def test_a_resend_within_a_batch_and_in_a_later_one_is_a_duplicate_of_one_row(
    ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    (first,), (again,) = accept(ledger, services, oru("D-1"), oru("D-1"))
    (later,) = accept(ledger, services, oru("D-1"))[0]

    assert [first.status, again.status, later.status] == ["accepted", "duplicate", "duplicate"]
    assert first.message_id == again.message_id == later.message_id
    assert [first.to_route, again.to_route, later.to_route] == [True, False, False]
    # The LIS that lost our ACK gets AA again: it is stored, it must stop sending.
    assert msa(again.ack)[1] == msa(later.ack)[1] == "AA"
    assert count(ledger, Message) == 1
    assert kinds(ledger, first.message_id) == ["received", "parsed", "duplicate", "duplicate"]


def test_a_changed_resend_or_a_training_message_is_recorded_but_held_not_routed(
    ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    training = oru("T-1").replace(b"|P|2.5|", b"|T|2.5|")

    (original,), (changed,), (trained,) = accept(
        ledger, services, oru("C-1"), oru("C-1", potassium="4.1"), training
    )
    ((changed_later,),) = accept(ledger, services, oru("C-1", potassium="3.2"))

    statuses = [a.status for a in (original, changed, changed_later, trained)]
    assert statuses == ["accepted", "conflict", "conflict", "held"]
    assert [a.to_route for a in (original, changed, changed_later, trained)] == [
        True,
        False,
        False,
        False,
    ]
    # Stored, so the LIS gets AA and must not send them again; a person reviews them.
    assert {msa(a.ack)[1] for a in (changed, changed_later, trained)} == {"AA"}
    with ledger() as session:
        rows = session.scalars(select(Message).order_by(Message.id)).all()
    assert [(m.control_id, m.revision, m.state) for m in rows] == [
        ("C-1", 1, "received"),
        ("C-1", 2, "held"),
        ("T-1", 1, "held"),
        ("C-1", 3, "held"),
    ]
    assert kinds(ledger, changed.message_id) == ["received", "parsed", "conflict"]
    assert kinds(ledger, trained.message_id) == ["received", "parsed", "held"]


def test_a_refused_message_is_quarantined_encrypted_with_the_reason_its_ack_gave(
    ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    no_control_id = (FIXTURES / "missing_control_id.hl7").read_bytes()
    admission = (FIXTURES / "adt_a01.hl7").read_bytes()

    (good,), (bad,), (unsupported,), (empty,) = accept(
        ledger, services, oru("Q-1"), no_control_id, admission, b""
    )

    assert good.status == "accepted"  # one bad message holds up nobody
    refused = (bad, unsupported, empty)
    assert [a.status for a in refused] == ["rejected"] * 3
    assert not any(a.to_route or a.message_id is not None for a in refused)
    assert msa(bad.ack)[1] == "AE" and "MSH-10" in msa(bad.ack)[3]
    assert msa(unsupported.ack)[1:3] == ["AR", "ADT-1"]
    assert msa(empty.ack)[1] == "AR" and "nothing was sent" in msa(empty.ack)[3]
    with ledger() as session:
        rows = {r.id: r for r in session.scalars(select(Rejection))}
    assert sorted(rows) == sorted(a.rejection_id for a in refused)  # type: ignore[type-var]
    missing, adt, nothing = (rows[a.rejection_id] for a in refused)  # type: ignore[index]
    assert (missing.laboratory, missing.control_id) == ("LABO-BIO-CENTRE", "")
    assert (missing.ack_code, missing.error, missing.hl7_code) == ("AE", "MissingField", "101")
    assert missing.reason.startswith("MSH-10 (message control ID) is empty")
    assert (adt.laboratory, adt.control_id) == ("LABO-BIO-CENTRE", "ADT-1")
    assert (adt.ack_code, adt.error, adt.hl7_code) == ("AR", "UnsupportedMessageType", "200")
    assert (adt.source, adt.source_name, adt.size) == ("mllp", PEER, len(admission))
    assert (nothing.ack_code, nothing.error, nothing.size, nothing.laboratory) == (
        "AR",
        "NotHL7",
        0,
        "",
    )
    for row, sent in ((missing, no_control_id), (adt, admission), (nothing, b"")):
        assert row.content_sha256 == hashlib.sha256(sent).hexdigest()
        assert b"DUPONT" not in row.raw_encrypted
        opened = services.cipher.decrypt(
            row.raw_encrypted, row.storage_key_id, quarantine_context(row.content_sha256)
        )
        assert opened == sent
    assert count(ledger, Message) == 1


def test_when_nothing_could_be_stored_every_message_gets_an_error_never_aa() -> None:
    enhanced = oru("U-3").replace(b"|P|2.5|||||FRA|", b"|P|2.5|||AL|NE|FRA|")
    stream = Inbound(oru("U-1") + oru("U-2") + enhanced, "mllp", PEER)

    answers = unavailable_answers(stream, "the ledger is unavailable; send again later")
    (empty,) = unavailable_answers(Inbound(b"", "file", "empty.hl7"), "the ledger is down")

    assert [msa(a.ack)[1:3] for a in answers] == [["AE", "U-1"], ["AE", "U-2"], ["CE", "U-3"]]
    assert all("send again later" in msa(a.ack)[3] for a in answers)
    assert msa(empty.ack)[1] == "AE"
    for answer in [*answers, empty]:
        assert not answer.to_route and answer.message_id is None
        assert answer.status != "accepted"


def test_a_group_is_recorded_with_a_fixed_number_of_statements_whatever_its_size(
    ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    """The ACK path of a group commit (issue 12): messages in one multi-row INSERT …
    RETURNING, their events in one, held ones included; no statement per message."""
    accept(ledger, services, oru("S-0"))
    engine = ledger.kw["bind"]
    statements: list[str] = []
    texts: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.split(None, 1)[0].upper())
        texts.append(statement)

    def run(prefix: str, size: int) -> list[str]:
        items = [oru(f"{prefix}-{n}") for n in range(size)]
        items.append(oru("S-0"))  # a resend: a duplicate event on the known row
        items.append(oru(f"{prefix}-0", potassium="6.1"))  # a conflict within the group
        items.append(oru(f"{prefix}-T").replace(b"|P|2.5|", b"|T|2.5|"))  # held
        statements.clear()
        texts.clear()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            answers = accept(ledger, services, *items)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        assert [a.status for (a,) in answers][-3:] == ["duplicate", "conflict", "held"]
        return list(statements)

    small, large = run("S", 3), run("L", 60)
    assert small == large, (small, large)
    assert large.count("INSERT") == 2, large
    # Multi-row: 62 messages in one INSERT, their 127 events (received and parsed each, a
    # conflict, a held, a duplicate) in another.
    messages, events = [text for text in texts if text.startswith("INSERT")]
    assert messages.count("?") + messages.count("%(") >= 62 * 18, messages[:200]
    assert events.count("?") + events.count("%(") == 127 * 4, events[:200]
    assert kinds(ledger, None) == []
    with ledger() as session:
        trained = session.scalars(select(Message).where(Message.control_id == "L-T")).one()
        assert trained.state == "held"
    assert kinds(ledger, trained.id) == ["received", "parsed", "held"]
