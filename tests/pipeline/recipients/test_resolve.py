from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from pipeline.identifiers import LOCAL, RPPS, Identifier, normalise_identifier
from pipeline.recipients.directory_csv import import_directory
from pipeline.recipients.resolve import Resolution, resolve, resolve_many


@pytest.fixture
def directory(session: Session, directory_dir: Path) -> Session:
    report = import_directory(session, directory_dir / "valid.csv")
    assert report.errors == []
    session.commit()
    session.expunge_all()  # resolve must query, not read what the import left in memory
    return session


@pytest.fixture
def statements(directory: Session) -> Iterator[list[str]]:
    seen: list[str] = []
    engine = directory.get_bind()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_national_identifier_resolves_with_channels_in_preference_order(
    directory: Session,
) -> None:
    answer = resolve(directory, "ANY-LAB", Identifier(RPPS, "10001234567"))

    assert answer == Resolution(
        wanted=Identifier(RPPS, "10001234567"),
        recipient_key="dr-martin",
        name="Dr Claire Martin",
        kind="clinician",
        channels=(
            "mail:claire.martin@mssante.example",
            "https:https://dpi.clinique.example:8443/inbox",
        ),
        reason="",
    )
    assert answer.resolved


def test_idnps_from_a_message_resolves_once_normalised(directory: Session) -> None:
    wanted = normalise_identifier("810001234567", "", "ASIP-SANTE-PS")

    answer = resolve(directory, "LABO-SUD", wanted)

    assert answer.recipient_key == "dr-martin"


def test_local_code_resolves_within_its_laboratory(directory: Session) -> None:
    assert resolve(directory, "LABO-NORD", Identifier(LOCAL, "DR9")).recipient_key == "dr-martin"
    assert resolve(directory, "LABO-SUD", Identifier(LOCAL, "DR7")).recipient_key == "dr-bernard"


def test_sender_specific_identifier_type_is_looked_up_as_a_local_code(directory: Session) -> None:
    answer = resolve(directory, "LABO-NORD", normalise_identifier("CM1", "EI"))

    assert answer.recipient_key == "dr-martin"


def test_a_local_code_of_another_laboratory_is_not_found(directory: Session) -> None:
    answer = resolve(directory, "LABO-SUD", Identifier(LOCAL, "DR9"))

    assert not answer.resolved
    assert answer.reason == "LABO-SUD has no local code DR9"
    assert answer.channels == ()


def test_unknown_laboratory_is_named_in_the_reason(directory: Session) -> None:
    answer = resolve(directory, "LABO-EST", Identifier(LOCAL, "DR9"))

    assert not answer.resolved
    assert "laboratory LABO-EST is not in the directory" in answer.reason


def test_unknown_national_identifier_reason_names_it(directory: Session) -> None:
    answer = resolve(directory, "LABO-NORD", Identifier(RPPS, "19999999999"))

    assert answer.recipient_key is None
    assert answer.reason == "RPPS 19999999999 is not in the directory"


def test_a_national_identifier_is_never_matched_against_local_codes(directory: Session) -> None:
    answer = resolve(directory, "LABO-NORD", Identifier(RPPS, "DR9"))

    assert not answer.resolved


def test_no_identifier_in_the_message(directory: Session) -> None:
    answer = resolve(directory, "LABO-NORD", None)

    assert answer == Resolution(None, None, None, None, (), "no identifier in the message")
    assert not answer.resolved


def test_resolve_many_keeps_order_in_a_few_queries(
    directory: Session, statements: list[str]
) -> None:
    pattern = [
        Identifier(RPPS, "10001234567"),
        None,
        Identifier(LOCAL, "DR9"),
        Identifier("ADELI", "751234567"),
        Identifier(RPPS, "19999999999"),
        Identifier(LOCAL, "NOPE"),
        Identifier("FINESS", "590780193"),
    ]
    wanted = pattern * 30

    answers = resolve_many(directory, "LABO-NORD", wanted)

    keys = [answer.recipient_key for answer in answers[: len(pattern)]]
    assert keys == ["dr-martin", None, "dr-martin", "dr-bernard", None, None, "chu-nord"]
    assert [answer.wanted for answer in answers] == wanted
    assert [a.recipient_key for a in answers] == keys * 30
    assert len(statements) <= 5, statements


def test_resolve_many_of_nothing_asks_nothing(directory: Session, statements: list[str]) -> None:
    assert resolve_many(directory, "LABO-NORD", []) == []
    assert statements == []
