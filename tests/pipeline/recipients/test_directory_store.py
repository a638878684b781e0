"""How checked rows are written: a batch in one SAVEPOINT, row by row only when the database
refuses something in it, so a refused row still costs only itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from pipeline.recipients import directory_csv, directory_store
from pipeline.recipients.directory_csv import import_directory
from pipeline.recipients.models import (
    Certificate,
    Laboratory,
    LocalCode,
    Recipient,
    RecipientIdentifier,
)
from tests.conftest import CertificateMaker
from tests.pipeline.recipients.directory_files import HEADER, recipient, where, write


@pytest.fixture
def savepoints(session: Session) -> Iterator[list[str]]:
    """The SAVEPOINT statements the session sends, in order."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        statement = args[2]
        if statement.lstrip().upper().startswith("SAVEPOINT"):
            sent.append(statement)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize("batch", [1, 2, 200])
def test_a_row_the_database_refuses_when_its_batch_is_flushed_costs_only_itself(
    session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """A value only the database rejects (here a kind its CHECK constraint refuses, let
    through by loosening the file's check) fails the batch's single flush: the batch is
    then written row by row, and every other row of it is kept exactly as it would be."""
    monkeypatch.setattr(directory_store, "BATCH", batch)
    import_directory(
        session,
        write(
            tmp_path,
            "before.csv",
            HEADER
            + "dr-old,clinician,Dr Old,,RPPS:10000000009,LAB=OLD,mail:old@example.org,\n"
            + "dr-same,clinician,Dr Same,,RPPS:10000000008,LAB=SAME,,\n",
        ),
    )
    session.commit()
    monkeypatch.setattr(directory_csv, "RECIPIENT_KINDS", ("clinician", "robot"))
    path = write(
        tmp_path,
        "mixed.csv",
        HEADER
        + "dr-a,clinician,Dr A,,RPPS:10000000001,LAB=A,mail:a@example.org,\n"
        + "dr-robot,robot,Robot,,RPPS:10000000002,NEW-LAB=R,mail:r@example.org,\n"
        + "dr-c,clinician,Dr C,,RPPS:10000000002,LAB=C,,\n"  # free: the robot row is refused
        + "dr-old,clinician,Dr Old Renamed,,RPPS:10000000007,LAB=OLD,mailbox:old,\n"
        + "dr-same,clinician,Dr Same,,RPPS:10000000008,LAB=SAME,,\n",
    )

    report = import_directory(session, path)
    session.commit()

    assert where(report) == {(3, "")}
    assert report.errors[0].message.startswith("the database refused the row: ")
    assert (report.created, report.updated, report.unchanged) == (2, 1, 1)
    assert set(session.scalars(select(Recipient.key))) == {"dr-a", "dr-c", "dr-old", "dr-same"}
    assert "NEW-LAB" not in set(session.scalars(select(Laboratory.code)))
    owners = {
        value: key
        for value, key in session.execute(
            select(RecipientIdentifier.value, Recipient.key).join(Recipient)
        )
    }
    assert owners == {
        "10000000001": "dr-a",
        "10000000002": "dr-c",
        "10000000007": "dr-old",
        "10000000008": "dr-same",
    }
    old = recipient(session, "dr-old")
    assert old.name == "Dr Old Renamed"
    assert [str(channel) for channel in old.channels] == ["mailbox:old"]
    assert [code.code for code in old.local_codes] == ["OLD"]


@pytest.mark.parametrize("batch", [2, 200])
def test_a_nul_character_is_refused_by_the_file_check_and_costs_only_its_row(
    session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """PostgreSQL refuses NUL in text and SQLite would store it: the file check refuses it
    on both, naming the column, and the row's neighbours are kept."""
    monkeypatch.setattr(directory_store, "BATCH", batch)
    path = write(
        tmp_path,
        "nul.csv",
        HEADER
        + "dr-a,clinician,Dr A,,RPPS:10000000001,LAB=A,,\n"
        + "dr-b,clinician,Dr \x00B,,RPPS:10000000002,LAB=B,,\n"
        + "dr-c,clinician,Dr C,,RPPS:10000000003,LAB=C,,\n",
    )

    report = import_directory(session, path)
    session.commit()

    assert where(report) == {(3, "name")}
    assert "U+0000" in report.errors[0].message
    assert report.created == 2
    assert set(session.scalars(select(Recipient.key))) == {"dr-a", "dr-c"}


def test_a_batch_the_database_accepts_is_written_in_one_savepoint(
    session: Session, tmp_path: Path, savepoints: list[str]
) -> None:
    path = write(
        tmp_path,
        "fine.csv",
        HEADER
        + "".join(f"dr-{n},clinician,Dr {n},,RPPS:1000000000{n},LAB=D{n},,\n" for n in range(5)),
    )

    report = import_directory(session, path)

    assert (report.created, report.errors) == (5, [])
    assert len(savepoints) == 1


@pytest.mark.parametrize("column", ["identifiers", "local_codes", "certificate"])
def test_what_a_row_gives_up_a_later_row_of_its_batch_takes_in_the_same_savepoint(
    session: Session,
    tmp_path: Path,
    make_certificate: CertificateMaker,
    savepoints: list[str],
    column: str,
) -> None:
    """A flush inserts before it deletes, so the batch flushes the giving-up row first;
    the move must not make the database refuse the batch and send it row by row."""
    (tmp_path / "shared.pem").write_bytes(make_certificate("Shared"))
    cells = {
        "identifiers": ",RPPS:10000000001,,,",
        "local_codes": ",,LAB=X1,,",
        "certificate": ",,,,shared.pem",
    }[column]
    before = write(tmp_path, "before.csv", HEADER + f"dr-a,clinician,Dr A,{cells}\n")
    import_directory(session, before)
    session.commit()
    savepoints.clear()
    moved = write(
        tmp_path,
        "moved.csv",
        HEADER + "dr-a,clinician,Dr A,,,,,\n" + f"dr-b,clinician,Dr B,{cells}\n",
    )

    report = import_directory(session, moved)
    session.commit()

    assert (report.created, report.updated, report.errors) == (1, 1, [])
    assert len(savepoints) == 1
    model: Any = {
        "identifiers": RecipientIdentifier,
        "local_codes": LocalCode,
        "certificate": Certificate,
    }[column]
    owner = session.scalars(select(Recipient.key).join(model)).one()
    assert owner == "dr-b"
