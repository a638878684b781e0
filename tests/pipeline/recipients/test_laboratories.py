"""A laboratory's character set: kept in the directory, read when a message declares none
(HL7 v2 with MSH-18 empty, every HPRIM file), shown by `labdispatch directory show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from pipeline.db import migrate, session_factory
from pipeline.hl7.errors import UndecodableMessage
from pipeline.hl7.intake import IntakeResult
from pipeline.reading import read_again, read_any
from pipeline.recipients.laboratories import (
    UnknownCharset,
    laboratory_charsets,
    set_laboratory,
)
from tests.conftest import FIXTURES
from workers.cli import main

LATIN1 = (FIXTURES / "hl7" / "undeclared_latin1.hl7").read_bytes()  # MSH-4 LABO-BIO-CENTRE


def test_hl7_with_msh18_empty_is_read_in_the_laboratory_charset(engine: Engine) -> None:
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        [before] = read_any(LATIN1, laboratory_charsets(session))
        assert isinstance(before.error, UndecodableMessage)  # refused, never guessed
        set_laboratory(session, "LABO-BIO-CENTRE", charset="ISO-8859-1")
        [after] = read_any(LATIN1, laboratory_charsets(session))
    assert isinstance(after, IntakeResult) and after.message is not None, after.error
    assert after.message.charset == "iso8859-1"
    # Read again later (route, seal) in the charset it was read in, whatever the directory.
    again = read_again(after.data, "hl7v2", after.message.charset)
    assert again.facts == after.facts


def test_a_declared_msh18_wins_over_the_laboratory_setting(engine: Engine) -> None:
    data = (FIXTURES / "hl7" / "fr_prt_idnps_utf8.hl7").read_bytes()
    [result] = read_any(data, lambda laboratory: "windows-1252")
    assert isinstance(result, IntakeResult) and result.message is not None
    assert result.message.charset == "utf-8"


def test_unknown_charsets_are_refused_when_set(engine: Engine) -> None:
    migrate(engine)
    with session_factory(engine).begin() as session, pytest.raises(UnknownCharset):
        set_laboratory(session, "LAB01", charset="KLINGON-8")


def test_directory_laboratory_sets_and_show_lab_prints_it(
    cli_env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["directory", "laboratory", "LAB01", "--charset", "windows-1252"]) == 0
    assert "charset:     windows-1252" in capsys.readouterr().out
    assert main(["directory", "show", "lab:LAB01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "code": "LAB01",
        "name": None,
        "charset": "windows-1252",
        "local_codes": 0,
    }
    assert main(["directory", "laboratory", "LAB01", "--clear-charset"]) == 0
    assert "charset:     not set" in capsys.readouterr().out
    assert main(["directory", "show", "lab:NOPE"]) == 2
    assert capsys.readouterr().err == "labdispatch: laboratory NOPE is not in the directory\n"
