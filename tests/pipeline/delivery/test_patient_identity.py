"""A patient's identity is not kept in the directory in clear, and patients are still found.

The directory is imported as `labdispatch directory import` does it (with the storage key
as blind index); the ANS corpus result, whose patient PAT-TROIS Dominique (INS
279035121518989) asked for a copy, is then recorded and routed through the stages. Every
table of the database is read back as text: neither the INS nor the name is anywhere in it,
and the patient's delivery was made all the same.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import all_metadata, migrate, session_factory
from pipeline.delivery.deliver import send_stage
from pipeline.delivery.route import route_stage
from pipeline.delivery.seal import seal_stage
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery
from pipeline.ledger.storage import StorageCipher, is_sealed
from pipeline.receipts.record import record_report
from pipeline.receipts.reports import parse_report
from pipeline.recipients.directory_csv import PATIENT_NAME, import_directory
from pipeline.recipients.models import Recipient, RecipientIdentifier
from pipeline.recipients.views import describe_recipient
from pipeline.sealing.demo_pki import DemoPki
from tests.pipeline.delivery.conftest import (
    ADAM,
    ADAM_MAIL,
    CORPUS_RESULT,
    PATIENT,
    Clock,
    received,
)
from tests.smtp_relay import Relay
from tests.support import CORPUS

INS = "279035121518989"
#: What identifies the corpus result's patient (family name as in PID-5, given name).
IDENTITY = (INS, "PAT-TROIS", "Dominique")


#: An MSSanté patient address: the INS at the patients' domain.
PATIENT_MAIL = f"{INS}@patient.mssante.example"


def directory(folder: Path, pki: DemoPki, channel: str = f"mailbox:{PATIENT}") -> Path:
    path = folder / "directory.csv"
    path.write_text(
        "key,kind,name,identifiers,channels,certificate\n"
        f"{ADAM},clinician,HODA Adam,RPPS:01234567897,mail:{ADAM_MAIL},"
        f"{pki.recipients[ADAM][0]}\n"
        f"{PATIENT},patient,PAT-TROIS Dominique,INS:{INS},{channel},"
        f"{pki.recipients[PATIENT][0]}\n",
        encoding="utf-8",
    )
    return path


def everything_stored(engine: Engine) -> str:
    """Every value of every table, as text."""
    texts = []
    with engine.connect() as connection:
        for table in all_metadata().sorted_tables:
            for row in connection.execute(select(table)):
                texts.extend(
                    value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    for value in row
                )
    return "\n".join(texts)


def test_a_patients_ins_and_name_are_not_stored_and_their_copy_is_routed(
    engine: Engine, pki: DemoPki, services: DeliveryServices, tmp_path: Path
) -> None:
    migrate(engine)
    sessions: sessionmaker[Session] = session_factory(engine)
    csv = directory(tmp_path, pki)
    with sessions.begin() as session:
        report = import_directory(session, csv, index=services.cipher)
        assert (report.created, report.errors) == (2, [])
    with sessions.begin() as session:  # the same file again: nothing to change
        assert import_directory(session, csv, index=services.cipher).unchanged == 2

    routed = route_stage(
        sessions, received(sessions, services, (CORPUS / CORPUS_RESULT).read_bytes()), services
    )

    with sessions() as session:
        patient = session.scalars(select(Recipient).where(Recipient.key == PATIENT)).one()
        (stored,) = session.scalars(
            select(RecipientIdentifier.value).where(RecipientIdentifier.id_type == "INS")
        ).all()
        deliveries = {d.recipient_key: d for d in session.scalars(select(Delivery))}
        shown = describe_recipient(session, f"INS:{INS}", blind_index=services.cipher)
    assert patient.name == PATIENT_NAME
    assert stored.startswith("hmac:") and INS not in stored
    # Routing found the patient by the hash of the INS the message gave.
    assert deliveries[PATIENT].state == "pending" and deliveries[PATIENT].id in routed.next_ids
    assert deliveries[ADAM].state == "pending"
    # An operator finds the patient by INS too.
    assert shown.key == PATIENT and shown.name == PATIENT_NAME
    # Nowhere in the database, ledger included.
    assert not [part for part in IDENTITY if part in everything_stored(engine)]


def test_after_a_key_rotation_patients_are_still_found(
    engine: Engine, pki: DemoPki, services: DeliveryServices, tmp_path: Path
) -> None:
    """Imported under the old key; the key file then holds a new key first and the old one
    after it (a rotation): the patient is still routed."""
    migrate(engine)
    sessions = session_factory(engine)
    old = services.cipher
    with sessions.begin() as session:
        import_directory(session, directory(tmp_path, pki), index=old)
    services.cipher = StorageCipher.from_key(b"r" * 32, *old.keys.values())

    routed = route_stage(
        sessions, received(sessions, services, (CORPUS / CORPUS_RESULT).read_bytes()), services
    )

    with sessions() as session:
        keys = set(
            session.scalars(select(Delivery.recipient_key).where(Delivery.id.in_(routed.next_ids)))
        )
    assert keys == {ADAM, PATIENT}


def sent_to_patient(
    engine: Engine, pki: DemoPki, services: DeliveryServices, tmp_path: Path
) -> tuple[sessionmaker[Session], int]:
    """The directory with the patient's MSSanté address (built on the INS), the corpus
    result recorded, routed, sealed and sent; the ledger and the patient's delivery ID."""
    migrate(engine)
    sessions = session_factory(engine)
    csv = directory(tmp_path, pki, channel=f"mail:{PATIENT_MAIL}")
    with sessions.begin() as session:
        assert import_directory(session, csv, index=services.cipher).errors == []
    with sessions.begin() as session:
        assert import_directory(session, csv, index=services.cipher).unchanged == 2
    routed = route_stage(
        sessions, received(sessions, services, (CORPUS / CORPUS_RESULT).read_bytes()), services
    )
    sent = send_stage(sessions, seal_stage(sessions, routed.next_ids, services).next_ids, services)
    assert sum(sent.states.values()) == 2
    with sessions() as session:
        (patient,) = session.scalars(
            select(Delivery.id).where(Delivery.recipient_key == PATIENT)
        ).all()
    return sessions, patient


def test_a_patients_address_built_on_the_ins_is_sealed_and_still_used_to_send(
    engine: Engine, pki: DemoPki, services: DeliveryServices, relay: Relay, tmp_path: Path
) -> None:
    sessions, patient = sent_to_patient(engine, pki, services, tmp_path)

    # The relay was given the patient's real address, the envelope no To: that names it.
    (mail,) = [m for m in relay.handler.messages if m.rcpt_tos == [PATIENT_MAIL]]
    assert b"To: undisclosed-recipients:;" in mail.data and INS.encode() not in mail.data
    with sessions() as session:
        delivery = session.get_one(Delivery, patient)
        assert delivery.state == "accepted" and is_sealed(delivery.channel_address)
    assert not [part for part in IDENTITY if part in everything_stored(engine)]


def test_a_refusal_or_a_dsn_quoting_the_patients_address_is_kept_without_it(
    engine: Engine,
    pki: DemoPki,
    services: DeliveryServices,
    relay: Relay,
    tmp_path: Path,
    clock: Clock,
) -> None:
    relay.handler.rcpt_replies = {
        PATIENT_MAIL: f"450 4.2.1 <{PATIENT_MAIL}>: mailbox {INS} busy, try again later"
    }
    sessions, patient = sent_to_patient(engine, pki, services, tmp_path)
    with sessions() as session:
        delivery = session.get_one(Delivery, patient)
        assert delivery.state == "retrying"
        assert "<patient address>" in delivery.last_error and "4.2.1" in delivery.last_error
    relay.handler.rcpt_replies = {}
    clock.advance(timedelta(hours=1))
    assert dict(send_stage(sessions, [patient], services).states) == {"accepted": 1}
    with sessions() as session:
        delivery = session.get_one(Delivery, patient)
        envelope_id, message_id = delivery.envelope_id, delivery.envelope_message_id
    dsn = (
        "From: MAILER-DAEMON@relay.example\r\nMessage-ID: <dsn-p1@relay.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nUndelivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Original-Envelope-Id: {envelope_id}\r\n\r\n"
        f"Final-Recipient: rfc822; {PATIENT_MAIL}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{PATIENT_MAIL}>: user unknown\r\n"
        f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {message_id}\r\n"
        "--b--\r\n"
    ).encode()

    with sessions.begin() as session:
        record_report(
            session,
            parse_report(dsn),
            source="t",
            now=clock(),
            notices_dir=tmp_path / "notices",
        )

    with sessions() as session:
        delivery = session.get_one(Delivery, patient)
        assert delivery.state == "failed" and "5.1.1" in delivery.last_error
    assert not [part for part in IDENTITY if part in everything_stored(engine)]
