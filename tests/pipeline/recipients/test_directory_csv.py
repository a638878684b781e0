from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.recipients import directory_store
from pipeline.recipients.directory_csv import RowError, import_directory
from pipeline.recipients.errors import UnreadableDirectoryFile
from pipeline.recipients.models import (
    Certificate,
    Channel,
    Laboratory,
    LocalCode,
    Recipient,
    RecipientIdentifier,
)
from tests.pipeline.recipients.directory_files import HEADER, count, recipient, where, write


def test_valid_file_creates_every_recipient(session: Session, directory_dir: Path) -> None:
    report = import_directory(session, directory_dir / "valid.csv")

    assert report.errors == []
    assert (report.created, report.updated, report.unchanged) == (4, 0, 0)
    martin = recipient(session, "dr-martin")
    assert (martin.kind, martin.name, martin.specialty) == (
        "clinician",
        "Dr Claire Martin",
        "Cardiologie",
    )
    assert recipient(session, "chu-nord").name == "Centre hospitalier, Nord"
    assert recipient(session, "chu-nord").specialty is None


def test_identifiers_are_stored_normalised(session: Session, directory_dir: Path) -> None:
    import_directory(session, directory_dir / "valid.csv")

    stored = {
        (key, id_type, value)
        for key, id_type, value in session.execute(
            select(Recipient.key, RecipientIdentifier.id_type, RecipientIdentifier.value).join(
                Recipient
            )
        )
    }
    assert stored == {
        ("dr-martin", "RPPS", "10001234567"),  # written IDNPS:810001234567
        ("dr-bernard", "ADELI", "751234567"),  # written ADELI:0751234567 (an IDNPS)
        ("chu-nord", "FINESS", "590780193"),
        ("patient-durand", "INS", "285017512345678"),
    }


def test_laboratories_are_created_on_first_mention(session: Session, directory_dir: Path) -> None:
    import_directory(session, directory_dir / "valid.csv")

    assert set(session.scalars(select(Laboratory.code))) == {"LABO-NORD", "LABO-SUD"}
    codes = {
        (lab, code, key)
        for lab, code, key in session.execute(
            select(Laboratory.code, LocalCode.code, Recipient.key)
            .select_from(LocalCode)
            .join(Laboratory)
            .join(Recipient)
        )
    }
    assert codes == {
        ("LABO-NORD", "DR9", "dr-martin"),
        ("LABO-NORD", "CM1", "dr-martin"),
        ("LABO-SUD", "DR7", "dr-bernard"),
    }


def test_channels_keep_preference_order_and_urls_keep_their_colons(
    session: Session, directory_dir: Path
) -> None:
    import_directory(session, directory_dir / "valid.csv")

    martin = recipient(session, "dr-martin")
    assert [(c.priority, str(c)) for c in martin.channels] == [
        (0, "mail:claire.martin@mssante.example"),
        (1, "https:https://dpi.clinique.example:8443/inbox"),
    ]


def test_certificate_facts_are_read_from_the_pem(session: Session, directory_dir: Path) -> None:
    import_directory(session, directory_dir / "valid.csv")

    (certificate,) = recipient(session, "dr-martin").certificates
    session.expire_all()  # read back from the database, not the objects we wrote
    certificate = session.get_one(Certificate, certificate.id)
    assert certificate.subject == "CN=Dr Claire Martin"
    assert len(certificate.fingerprint_sha256) == 64
    assert certificate.not_before.tzinfo is not None
    assert certificate.not_after.utcoffset() == timedelta(0)
    now = datetime.now(UTC)
    assert certificate.not_before < now < certificate.not_after
    assert "BEGIN CERTIFICATE" in certificate.pem
    (expired,) = recipient(session, "dr-bernard").certificates
    assert expired.not_after < now


def test_bad_rows_are_reported_by_line_and_column_and_good_rows_kept(
    session: Session, directory_dir: Path
) -> None:
    report = import_directory(session, directory_dir / "bad_rows.csv")

    assert where(report) == {
        (3, "kind"),
        (6, "identifiers"),
        (7, "name"),
        (7, "channels"),
        (8, "certificate"),
        (11, "local_codes"),
        (12, "certificate"),
        (13, "channels"),
    }
    assert report.rejected == 7
    assert report.created == 3
    assert set(session.scalars(select(Recipient.key))) == {"good-one", "good-two", "good-three"}
    assert recipient(session, "good-three").name == "Dr Sept\n(on two lines)"
    messages = {(e.line, e.column): e.message for e in report.errors}
    assert "surgeon" in messages[(3, "kind")]
    assert "RPPS12345" in messages[(6, "identifiers")]
    assert "missing.pem" in messages[(8, "certificate")]


def test_reimporting_the_same_file_changes_nothing(session: Session, directory_dir: Path) -> None:
    import_directory(session, directory_dir / "valid.csv")
    session.commit()
    before = recipient(session, "dr-martin").updated_at

    report = import_directory(session, directory_dir / "valid.csv")

    assert (report.created, report.updated, report.unchanged) == (0, 0, 4)
    assert count(session, Recipient) == 4
    assert count(session, RecipientIdentifier) == 4
    assert count(session, Channel) == 6
    assert recipient(session, "dr-martin").updated_at == before


def test_reimport_updates_instead_of_duplicating(session: Session, tmp_path: Path) -> None:
    first = write(
        tmp_path,
        "first.csv",
        HEADER + "dr-x,clinician,Dr X,,RPPS:10000000001,LAB=X1,mail:x@example.org,\n",
    )
    second = write(
        tmp_path,
        "second.csv",
        HEADER + "dr-x,clinician,Dr Xavier,Biologie,RPPS:10000000002,LAB=X2,mail:x@example.org,\n",
    )
    import_directory(session, first)

    report = import_directory(session, second)

    assert (report.created, report.updated, report.unchanged) == (0, 1, 0)
    assert count(session, Recipient) == 1
    dr_x = recipient(session, "dr-x")
    assert (dr_x.name, dr_x.specialty) == ("Dr Xavier", "Biologie")
    assert [i.value for i in dr_x.identifiers] == ["10000000002"]
    assert [c.code for c in dr_x.local_codes] == ["X2"]
    assert dr_x.updated_at >= dr_x.created_at


def test_reimport_removes_a_channel_no_longer_listed(
    session: Session, directory_dir: Path, tmp_path: Path
) -> None:
    import_directory(session, directory_dir / "valid.csv")
    edited = write(
        tmp_path,
        "edited.csv",
        HEADER + "dr-martin,clinician,Dr Claire Martin,Cardiologie,IDNPS:810001234567,"
        "LABO-NORD=DR9;LABO-NORD=CM1,https:https://dpi.clinique.example:8443/inbox,\n",
    )

    report = import_directory(session, edited)

    assert report.updated == 1
    martin = recipient(session, "dr-martin")
    assert [(c.priority, str(c)) for c in martin.channels] == [
        (0, "https:https://dpi.clinique.example:8443/inbox")
    ]
    assert martin.certificates == []  # the certificate cell is empty now
    assert count(session, Channel) == 5


def test_identifier_owned_by_another_recipient_is_rejected_never_moved(
    session: Session, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "clash.csv",
        HEADER
        + "dr-a,clinician,Dr A,,RPPS:10000000001,,,\n"
        + "dr-b,clinician,Dr B,,IDNPS:810000000001,,,\n",
    )

    report = import_directory(session, path)

    assert report.errors == [
        RowError(
            3,
            "identifiers",
            "RPPS 10000000001 already belongs to 'dr-a'; "
            "remove it there first (identifiers are never moved silently)",
        )
    ]
    assert set(session.scalars(select(Recipient.key))) == {"dr-a"}
    owner = session.scalars(
        select(Recipient.key)
        .join(RecipientIdentifier)
        .where(RecipientIdentifier.value == "10000000001")
    ).one()
    assert owner == "dr-a"


def test_local_code_owned_by_another_recipient_is_rejected(
    session: Session, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "clash.csv",
        HEADER + "dr-a,clinician,Dr A,,,LAB=DR9,,\n" + "dr-b,clinician,Dr B,,,LAB=DR9,,\n",
    )

    report = import_directory(session, path)

    assert where(report) == {(3, "local_codes")}
    assert report.created == 1


def test_same_local_code_in_two_laboratories_names_two_recipients(
    session: Session, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "two-labs.csv",
        HEADER + "dr-a,clinician,Dr A,,,NORD=DR9,,\n" + "dr-b,clinician,Dr B,,,SUD=DR9,,\n",
    )

    report = import_directory(session, path)

    assert report.errors == []
    assert count(session, LocalCode) == 2


def test_byte_order_mark_is_accepted(session: Session, directory_dir: Path) -> None:
    path = directory_dir / "with-bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (directory_dir / "valid.csv").read_bytes())

    report = import_directory(session, path)

    assert report.errors == []
    assert report.created == 4


def test_missing_or_unknown_header_column_rejects_the_whole_file(session: Session) -> None:
    path = Path(__file__).parents[2] / "fixtures" / "directory" / "missing_column.csv"

    report = import_directory(session, path)

    assert len(report.errors) == 1
    (error,) = report.errors
    assert error.line == 1
    assert "'fullname'" in error.message
    assert "missing required column(s) name" in error.message
    assert count(session, Recipient) == 0


def test_semicolon_separated_file_gets_a_hint(session: Session, tmp_path: Path) -> None:
    path = write(tmp_path, "excel.csv", "key;kind;name\ndr-a;clinician;Dr A\n")

    report = import_directory(session, path)

    assert "use ','" in report.errors[0].message
    assert count(session, Recipient) == 0


def test_a_key_given_twice_in_one_file_is_rejected(session: Session, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dup.csv",
        HEADER + "dr-a,clinician,Dr A,,,,,\n" + "dr-a,clinician,Dr A bis,,,,,\n",
    )

    report = import_directory(session, path)

    assert report.errors == [RowError(3, "key", "'dr-a' is already used on line 2")]
    assert recipient(session, "dr-a").name == "Dr A"


def test_row_with_more_values_than_columns_is_rejected(session: Session, tmp_path: Path) -> None:
    path = write(tmp_path, "extra.csv", "key,kind,name\ndr-a,clinician,Dr A, Jr\n")

    report = import_directory(session, path)

    assert where(report) == {(2, "")}
    assert "double quotes" in report.errors[0].message


def test_local_identifier_types_are_refused_in_the_identifiers_column(
    session: Session, tmp_path: Path
) -> None:
    path = write(tmp_path, "local.csv", HEADER + "dr-a,clinician,Dr A,,LOCAL:DR9,,,\n")

    report = import_directory(session, path)

    assert where(report) == {(2, "identifiers")}
    assert "local_codes" in report.errors[0].message


def test_a_column_left_out_leaves_that_part_untouched(
    session: Session, directory_dir: Path, tmp_path: Path
) -> None:
    import_directory(session, directory_dir / "valid.csv")
    renamed = write(tmp_path, "names.csv", "key,kind,name\ndr-martin,clinician,Pr Claire Martin\n")

    report = import_directory(session, renamed)

    assert report.updated == 1
    martin = recipient(session, "dr-martin")
    assert martin.name == "Pr Claire Martin"
    assert martin.specialty == "Cardiologie"
    assert len(martin.channels) == 2
    assert len(martin.identifiers) == 1


def test_a_row_the_database_refuses_is_rolled_back_alone(
    session: Session, directory_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply = directory_store._apply

    def refuse_bernard(session: Session, recipient: Recipient, plan: Any, *rest: Any) -> None:
        apply(session, recipient, plan, *rest)
        if plan.key == "dr-bernard":
            raise IntegrityError("INSERT ...", {}, Exception("simulated constraint failure"))

    monkeypatch.setattr(directory_store, "_apply", refuse_bernard)

    report = import_directory(session, directory_dir / "valid.csv")
    session.commit()

    assert where(report) == {(3, "")}
    assert "simulated constraint failure" in report.errors[0].message
    assert report.created == 3
    assert "dr-bernard" not in set(session.scalars(select(Recipient.key)))
    assert "LABO-SUD" not in set(session.scalars(select(Laboratory.code)))  # created in that row
    assert count(session, RecipientIdentifier) == 3


def test_file_that_is_not_utf8_names_the_line(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "dr-a,clinician,Dr Hélène A,,,,,\n").encode("latin-1"))

    with pytest.raises(UnreadableDirectoryFile, match=r"latin1.csv:2: not UTF-8"):
        import_directory(session, path)


def test_missing_file_is_a_readable_error(session: Session, tmp_path: Path) -> None:
    with pytest.raises(UnreadableDirectoryFile, match="cannot read directory file"):
        import_directory(session, tmp_path / "nowhere.csv")


@pytest.mark.parametrize("batch", [1, 2, 200])
def test_an_identifier_freed_by_an_earlier_row_can_be_taken_by_a_later_one(
    session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    monkeypatch.setattr(directory_store, "BATCH", batch)
    import_directory(
        session,
        write(tmp_path, "before.csv", HEADER + "dr-a,clinician,Dr A,,RPPS:10000000001,,,\n"),
    )
    moved = write(
        tmp_path,
        "moved.csv",
        HEADER
        + "dr-a,clinician,Dr A,,,,,\n"  # gives RPPS 10000000001 up...
        + "dr-b,clinician,Dr B,,RPPS:10000000001,,,\n"  # ...so dr-b may take it
        + "dr-c,clinician,Dr C,,RPPS:10000000001,,,\n",  # but not dr-c: dr-b has it now
    )

    report = import_directory(session, moved)

    assert where(report) == {(4, "identifiers")}
    assert "'dr-b'" in report.errors[0].message
    owner = session.scalars(
        select(Recipient.key)
        .join(RecipientIdentifier)
        .where(RecipientIdentifier.value == "10000000001")
    ).one()
    assert owner == "dr-b"
