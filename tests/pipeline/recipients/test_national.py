"""The national directory import (Annuaire Santé extractions), on SQLite and PostgreSQL."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.delivery.route import route_message
from pipeline.delivery.withdrawn import fail_withdrawn
from pipeline.hl7.intake import read_results
from pipeline.ledger.models import Delivery, Message
from pipeline.ledger.states import FAILED, PENDING
from pipeline.recipients.directory_csv import import_directory
from pipeline.recipients.models import NATIONAL, Channel, Recipient, RecipientIdentifier
from pipeline.recipients.national_files import NationalFileError
from pipeline.recipients.national_store import NationalReport, import_national
from tests.pipeline.delivery.scenario import LAB, oru
from tests.pipeline.delivery.test_record_and_route import record
from workers.bench.national_files import (
    Person,
    organisation_row,
    person_row,
    write_mssante,
    write_practitioners,
)

NOW = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
MSSANTE = "Extraction_Correspondance_MSSante_202612040800.txt"
MARTIN = Person("10001234567", "MARTIN", "Sophie", "sophie.martin@medecin.mssante.fr")
LEROY = Person("10007654321", "LEROY", "Paul", "paul.leroy@medecin.mssante.fr")
HOSPITAL = organisation_row("750712184", "CH DU CENTRE", "accueil@ch-centre.mssante.fr")
HOSPITAL_LAB = organisation_row(
    "750712184", "CH DU CENTRE", "labo@ch-centre.mssante.fr", service="Laboratoire"
)


def imported(session: Session, folder: Path, rows: list[str], **options: bool) -> NationalReport:
    path = write_mssante(folder / MSSANTE, rows)
    report = import_national(session, [path], **options)
    session.commit()
    return report


def mailboxes(session: Session) -> dict[str, tuple[str, bool | None]]:
    """address → (recipient key, accepts results), for every MSSanté channel."""
    rows = session.execute(
        select(Channel.address, Recipient.key, Channel.accepts_results)
        .join(Recipient)
        .where(Channel.kind == "mssante")
    )
    return {address: (key, accepts) for address, key, accepts in rows}


def test_import_makes_national_recipients_and_an_unchanged_file_changes_nothing(
    session: Session, tmp_path: Path
) -> None:
    rows = [person_row(MARTIN), person_row(LEROY), HOSPITAL, HOSPITAL_LAB]
    first = imported(session, tmp_path, rows)

    assert (first.rows, first.recipients_created, first.mailboxes_added) == (4, 3, 4)
    martin = session.scalars(select(Recipient).where(Recipient.key == "rpps-10001234567")).one()
    assert (martin.source, martin.kind, martin.name, martin.specialty) == (
        NATIONAL, "clinician", "MARTIN Sophie", "Médecine Générale",
    )  # fmt: skip
    assert [(i.id_type, i.value) for i in martin.identifiers] == [("RPPS", "10001234567")]
    hospital = session.scalars(
        select(RecipientIdentifier).where(RecipientIdentifier.value == "750712184")
    ).one()
    assert hospital.id_type == "FINESS" and hospital.recipient.key == "finess-750712184"
    # The general mailbox before the service's.
    assert [str(c) for c in hospital.recipient.channels] == [
        "mssante:accueil@ch-centre.mssante.fr",
        "mssante:labo@ch-centre.mssante.fr",
    ]

    again = imported(session, tmp_path, rows)
    assert not again.changed and again.rows == 4


def test_changed_and_removed_rows_are_applied(session: Session, tmp_path: Path) -> None:
    imported(session, tmp_path, [person_row(MARTIN), person_row(LEROY), HOSPITAL])
    renamed = Person(MARTIN.rpps, "MARTIN-DURAND", "Sophie", MARTIN.address, accepts="false")

    report = imported(session, tmp_path, [person_row(renamed), HOSPITAL], allow_removals=True)

    assert (report.recipients_updated, report.mailboxes_changed) == (1, 1)
    assert (report.recipients_removed, report.withdrawn) == (
        1, [("rpps-10007654321", LEROY.address)],
    )  # fmt: skip
    assert mailboxes(session) == {
        MARTIN.address: ("rpps-10001234567", False),
        "accueil@ch-centre.mssante.fr": ("finess-750712184", True),
    }
    assert session.scalar(select(Recipient.name).where(Recipient.key == "rpps-10001234567")) == (
        "MARTIN-DURAND Sophie"
    )
    assert session.scalar(select(Recipient).where(Recipient.key == "rpps-10007654321")) is None


def test_a_file_withdrawing_many_mailboxes_is_refused_unless_allowed(
    session: Session, tmp_path: Path
) -> None:
    imported(session, tmp_path, [person_row(MARTIN), person_row(LEROY), HOSPITAL])

    with pytest.raises(NationalFileError, match="would withdraw 2 of the 3 national mailboxes"):
        imported(session, tmp_path, [HOSPITAL])
    session.rollback()

    assert len(mailboxes(session)) == 3


def test_the_laboratorys_own_entries_are_never_touched(session: Session, tmp_path: Path) -> None:
    csv = tmp_path / "directory.csv"
    csv.write_text(
        "key,kind,name,identifiers,local_codes,channels\n"
        f"sophie.martin,clinician,Dr Sophie MARTIN,RPPS:{MARTIN.rpps},{LAB}=SM1,"
        "mail:sophie@cabinet.example\n",
        encoding="utf-8",
    )
    assert not import_directory(session, csv).errors
    session.commit()
    refusing = Person(MARTIN.rpps, "MARTIN", "Sophie", MARTIN.address, accepts="false")

    report = imported(session, tmp_path, [person_row(refusing), person_row(LEROY)])
    imported(session, tmp_path, [person_row(LEROY)])  # and gone again: still untouched

    assert report.kept_local == 1
    mine = session.scalars(select(Recipient).where(Recipient.key == "sophie.martin")).one()
    session.refresh(mine)
    assert (mine.source, mine.name) == ("local", "Dr Sophie MARTIN")
    assert [str(c) for c in mine.channels] == ["mail:sophie@cabinet.example"]
    assert [c.code for c in mine.local_codes] == ["SM1"]
    assert set(mailboxes(session)) == {LEROY.address}


def route(session: Session, tmp_path: Path, data: bytes) -> list[Delivery]:
    recorded = record(session, data)
    message = session.get_one(Message, recorded.message_id)
    facts = next(read_results(data)).facts
    assert facts is not None
    route_message(
        session, message, facts, mail_domain="labdispatch.test", now=NOW,
        notices_dir=tmp_path / "notices",
    )  # fmt: skip
    session.flush()
    query = select(Delivery).where(Delivery.message_id == message.id).order_by(Delivery.id)
    return list(session.scalars(query))


def test_a_clinician_refusing_electronic_results_is_not_sent_them_and_the_lab_is_told(
    session: Session, tmp_path: Path
) -> None:
    refusing = Person(MARTIN.rpps, "MARTIN", "Sophie", MARTIN.address, accepts="false")
    imported(session, tmp_path, [person_row(refusing)])

    (martin,) = route(session, tmp_path, oru(copy_to=""))

    assert martin.state == FAILED and martin.recipient_key == "rpps-10001234567"
    assert "Dématérialisation = false" in martin.last_error
    assert martin.notified_at is not None
    (notice,) = (tmp_path / "notices" / LAB).iterdir()
    text = notice.read_text(encoding="utf-8")
    assert "LT-0001" in text and "send this result on paper" in text


def test_an_mssante_mailbox_is_not_sent_to_until_the_channel_exists(
    session: Session, tmp_path: Path
) -> None:
    imported(session, tmp_path, [person_row(MARTIN)])

    (martin,) = route(session, tmp_path, oru(copy_to=""))

    assert martin.state == FAILED and "MSSanté" in martin.last_error
    assert martin.channel_kind == "mssante" and martin.channel_address == MARTIN.address
    # A queued delivery to a mailbox withdrawn later is given up (none pending here).
    assert (
        fail_withdrawn(session, [(martin.recipient_key or "", MARTIN.address)], NOW, None).failed
        == 0
    )


def test_withdrawn_mailbox_fails_the_deliveries_still_queued_for_it(
    session: Session, tmp_path: Path
) -> None:
    imported(session, tmp_path, [person_row(MARTIN)])
    (martin,) = route(session, tmp_path, oru(copy_to=""))
    # As the MSSanté channel will route: a pending delivery to the mailbox.
    martin.state, martin.last_error, martin.failed_at = PENDING, "", None
    session.commit()

    report = imported(session, tmp_path, [person_row(LEROY)], allow_removals=True)
    queued = fail_withdrawn(session, report.withdrawn, NOW, tmp_path / "notices")

    assert queued.failed == 1
    session.refresh(martin)
    assert martin.state == FAILED and "withdrawn from the national directory" in martin.last_error


@pytest.mark.parametrize(
    ("row", "where"),
    [
        (person_row(MARTIN).replace("|true|", "|peut-être|"), ":3: column 18 (Dématérialisation)"),
        (
            person_row(MARTIN).replace(MARTIN.address, "pas une adresse"),
            ":3: column 2 (Adresse BAL)",
        ),
        (person_row(MARTIN) + "|extra", ":3: 32 columns"),
        ("PER|" + "x" * 1200, ":3: column 2 (Adresse BAL): longer than 1000"),
    ],
)
def test_a_bad_file_is_refused_with_line_and_column_and_nothing_is_applied(
    session: Session, tmp_path: Path, row: str, where: str
) -> None:
    imported(session, tmp_path, [person_row(LEROY)])

    with pytest.raises(NationalFileError) as refused:
        imported(session, tmp_path, [person_row(LEROY), row, HOSPITAL], allow_removals=True)
    session.rollback()

    assert f"{MSSANTE}{where}" in str(refused.value)
    assert "nothing was imported" in str(refused.value)
    assert set(mailboxes(session)) == {LEROY.address}


def test_not_utf8_is_refused_with_its_line_and_column(session: Session, tmp_path: Path) -> None:
    path = write_mssante(tmp_path / MSSANTE, [person_row(LEROY), person_row(MARTIN)])
    path.write_bytes(path.read_bytes().replace(b"Sophie", "Sophie é".encode("latin-1")))

    with pytest.raises(NationalFileError, match=r":3: column 11 \(Prénom d'exercice\): not UTF-8"):
        import_national(session, [path])


def test_the_published_zip_with_the_activity_file_gives_names_and_specialties(
    session: Session, tmp_path: Path
) -> None:
    mssante = write_mssante(tmp_path / MSSANTE, [person_row(MARTIN)])
    named = Person(MARTIN.rpps, "MARTIN", "Sophie-Anne", MARTIN.address, specialty="Pédiatrie")
    people = write_practitioners(
        tmp_path / "PS_LibreAcces_Personne_activite_202612040800.txt", [named, LEROY]
    )
    archive = tmp_path / "PS_LibreAcces_202612040800.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.write(people, people.name)
        out.write(tmp_path / MSSANTE, MSSANTE)
        out.writestr("PS_LibreAcces_SavoirFaire_202612040800.txt", "ignored\n")
    mssante.unlink()

    report = import_national(session, [archive])
    session.commit()

    assert report.recipients_created == 1
    martin = session.scalars(select(Recipient).where(Recipient.key == "rpps-10001234567")).one()
    assert (martin.name, martin.specialty) == ("MARTIN Sophie-Anne", "Pédiatrie")


def test_the_mssante_file_is_required(tmp_path: Path, session: Session) -> None:
    people = write_practitioners(tmp_path / "PS_LibreAcces_Personne_activite_1.txt", [LEROY])

    with pytest.raises(NationalFileError, match="exactly one Extraction_Correspondance_MSSante"):
        import_national(session, [people])


def test_a_csv_row_for_a_national_recipient_makes_it_the_laboratorys(
    session: Session, tmp_path: Path
) -> None:
    imported(session, tmp_path, [person_row(MARTIN), person_row(LEROY)])
    csv = tmp_path / "directory.csv"
    csv.write_text(
        f"key,kind,name,local_codes\nrpps-{MARTIN.rpps},clinician,Dr MARTIN,{LAB}=SM1\n",
        encoding="utf-8",
    )
    assert not import_directory(session, csv).errors
    session.commit()

    report = imported(session, tmp_path, [person_row(LEROY)])

    assert (report.kept_local, report.recipients_removed, report.withdrawn) == (0, 0, [])
    martin = session.scalars(select(Recipient).where(Recipient.key == f"rpps-{MARTIN.rpps}")).one()
    session.refresh(martin)
    assert (martin.source, martin.name) == ("local", "Dr MARTIN")
    assert [c.code for c in martin.local_codes] == ["SM1"]


def test_rows_naming_no_one_are_skipped_and_counted(session: Session, tmp_path: Path) -> None:
    anonymous = person_row(MARTIN).replace(f"|8|{MARTIN.rpps}|8{MARTIN.rpps}|", "||||")
    unknown_type = person_row(LEROY).replace("PER|", "XYZ|", 1)

    report = imported(session, tmp_path, [anonymous, unknown_type, HOSPITAL])

    assert report.rows == 1 and report.skipped.count == 2
    assert report.skipped.examples[0].endswith(":2: a personal mailbox with no national identifier")
