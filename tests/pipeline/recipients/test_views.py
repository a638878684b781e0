from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from pipeline.recipients.directory_csv import import_directory
from pipeline.recipients.errors import UnknownRecipient
from pipeline.recipients.views import describe_recipient, render_recipient


@pytest.fixture
def directory(session: Session, directory_dir: Path) -> Session:
    assert import_directory(session, directory_dir / "valid.csv").errors == []
    session.commit()
    session.expunge_all()
    return session


@pytest.mark.parametrize(
    "ref",
    ["dr-martin", "RPPS:10001234567", "IDNPS:810001234567", "LABO-NORD=DR9", " LABO-NORD = CM1 "],
)
def test_a_recipient_is_found_by_key_identifier_or_local_code(directory: Session, ref: str) -> None:
    assert describe_recipient(directory, ref).key == "dr-martin"


def test_the_view_holds_everything_show_prints(directory: Session) -> None:
    view = describe_recipient(directory, "dr-martin")

    assert [(i.id_type, i.value) for i in view.identifiers] == [("RPPS", "10001234567")]
    assert [(c.laboratory, c.code) for c in view.local_codes] == [
        ("LABO-NORD", "CM1"),
        ("LABO-NORD", "DR9"),
    ]
    assert [(c.priority, c.kind) for c in view.channels] == [(0, "mail"), (1, "https")]
    (certificate,) = view.certificates
    assert certificate.subject == "CN=Dr Claire Martin"
    assert not certificate.expired


def test_expiry_is_judged_at_the_moment_asked(directory: Session) -> None:
    (bernard,) = describe_recipient(directory, "dr-bernard").certificates
    assert bernard.expired
    (martin,) = describe_recipient(
        directory, "dr-martin", now=datetime.now(UTC) + timedelta(days=400)
    ).certificates
    assert martin.expired


def test_text_block_flags_an_expired_certificate(directory: Session) -> None:
    text = render_recipient(describe_recipient(directory, "dr-bernard"))

    assert "dr-bernard  Dr Paul Bernard" in text
    assert "ADELI:751234567" in text
    assert "LABO-SUD=DR7" in text
    assert "1. mailbox:bernard-paul" in text
    assert "EXPIRED" in text


def test_json_view_round_trips_with_utc_timestamps(directory: Session) -> None:
    data = json.loads(json.dumps(describe_recipient(directory, "chu-nord").as_json()))

    assert data["name"] == "Centre hospitalier, Nord"
    assert [c["address"] for c in data["channels"]] == [
        "labo@chu-nord.example",
        "secretariat@chu-nord.example",
    ]
    assert data["created_at"].endswith("+00:00")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("dr-nobody", "no recipient has the key 'dr-nobody'"),
        ("RPPS:19999999999", "RPPS 19999999999 is not in the directory"),
        ("LABO-SUD=DR9", "LABO-SUD has no local code DR9 in the directory"),
        ("EI:DR9", "EI DR9 is not a national identifier"),
        ("RPPS:", "has no value"),
        ("", "give a directory key"),
    ],
)
def test_unknown_reference_is_a_readable_error(directory: Session, ref: str, message: str) -> None:
    with pytest.raises(UnknownRecipient, match=message):
        describe_recipient(directory, ref)
