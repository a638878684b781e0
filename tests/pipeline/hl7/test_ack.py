"""ACKs a laboratory's LIS can read: checked by parsing them back with hl7apy."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from pipeline.hl7.ack import ACCEPT, AckContext, AckIssue, build_ack
from pipeline.hl7.errors import Location, MissingField
from pipeline.hl7.intake import IntakeResult, read_results
from pipeline.hl7.segments import unescape

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"


def _result(name: str) -> IntakeResult:
    return next(read_results((FIXTURES / name).read_bytes()))


def _segments(ack: str) -> dict[str, list[str]]:
    lines = [line for line in ack.split("\r") if line]
    out = {}
    for line in lines:
        fields = line.split("|")
        if fields[0] == "MSH":
            fields.insert(1, "|")
        out[fields[0]] = fields
    return out


def test_accepted_result_gets_aa_echoing_control_id_version_and_charset() -> None:
    result = _result("fr_prt_idnps_utf8.hl7")
    ack = result.ack()
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    assert parsed.msa.msa_1.value == "AA"
    assert parsed.msa.msa_2.value == "LBC-2026-000101"
    assert parsed.msh.msh_12.value == "2.5"
    assert parsed.msh.msh_9.to_er7() == "ACK^R01^ACK"
    fields = _segments(ack)["MSH"]
    assert fields[3:7] == ["LABDISPATCH", "LABDISPATCH", "SIL-DEMO", "LABO-BIO-CENTRE"]
    assert fields[18] == "UNICODE UTF-8"


def test_v23_ack_uses_the_v23_message_type_and_err_1() -> None:
    context = AckContext(control_id="C1", version="2.3", sending_facility="LABSUD")
    issue = AckIssue(
        "MSH-10 is empty", "101", "Required field missing", "E", Location("MSH", 1, 10)
    )
    ack = build_ack(context, "AE", [issue])
    fields = _segments(ack)
    assert fields["MSH"][9] == "ACK^R01"
    assert fields["ERR"][1] == "MSH^1^10^101&Required field missing&HL70357"
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.TOLERANT)
    assert parsed.msa.msa_1.value == "AE"
    assert parsed.msa.msa_3.value == "MSH-10 is empty"


def test_v25_error_ack_names_segment_field_code_and_reason() -> None:
    result = _result("adt_a01.hl7")
    assert result.error is not None
    ack = result.ack()
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    assert parsed.msa.msa_1.value == "AR"
    assert parsed.msa.msa_2.value == "ADT-1"
    err = parsed.err
    assert err.err_2.erl_1.value == "MSH"
    assert err.err_2.erl_3.value == "9"
    assert err.err_2.erl_5.value == "1"
    assert err.err_3.cwe_1.value == "200"
    assert err.err_3.cwe_3.value == "HL70357"
    assert err.err_4.value == "E"
    assert "ADT" in err.err_8.value


def test_ack_reason_is_escaped_in_the_senders_encoding_characters() -> None:
    context = AckContext(control_id="X-1", version="2.5")
    ack = build_ack(context, "AE", [AckIssue("value a|b^c&d~e\\f is wrong")])
    err = _segments(ack)["ERR"]
    assert err[8] == "value a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f is wrong"
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.TOLERANT)
    assert parsed.err.err_8.to_er7() == "value a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f is wrong"
    assert unescape(err[8]) == "value a|b^c&d~e\\f is wrong"


def test_ack_reuses_unusual_encoding_characters() -> None:
    raw = b"MSH#$%!*#APP#FAC#RAPP#RFAC#20260101##ORU$R01#CTRL-9#P#2.5\r"
    context = AckContext.from_raw(raw)
    ack = build_ack(context, ACCEPT)
    assert ack.startswith("MSH#$%!*#RAPP#RFAC#APP#FAC#")
    assert "MSA#AA#CTRL-9" in ack


def test_undecodable_message_gets_ar_with_its_control_id() -> None:
    result = _result("declared_utf8_invalid_bytes.hl7")
    assert result.error is not None
    parsed = parse_message(result.ack(), validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.msa.msa_1.value == "AR"
    assert parsed.msa.msa_2.value == "BAD-UTF8"
    assert parsed.err.err_2.erl_1.value == "PID"
    assert parsed.err.err_2.erl_3.value == "5"


def test_garbage_still_gets_an_ack_with_default_version() -> None:
    (result,) = list(read_results(b"this is not HL7 at all"))
    ack = result.ack()
    fields = _segments(ack)
    assert fields["MSH"][12] == "2.5"
    assert fields["MSA"][1:3] == ["AR", ""]


def test_warnings_ride_on_an_aa_as_err_severity_w() -> None:
    result = _result("undeclared_utf8.hl7")
    assert result.ok
    fields = _segments(result.ack())
    assert fields["MSA"][1] == "AA"
    assert fields["ERR"][4] == "W"
    assert "MSH-18" in fields["ERR"][8]


def test_ack_control_id_and_timestamp_can_be_fixed_for_replay() -> None:
    moment = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
    ack = build_ack(AckContext(control_id="C"), ACCEPT, control_id="ACK-1", timestamp=moment)
    fields = _segments(ack)["MSH"]
    assert fields[7] == "20261128093000"
    assert fields[10] == "ACK-1"


@pytest.mark.parametrize("version", ["2.3.1", "2.4", "2.5", "2.5.1"])
def test_error_ack_parses_strictly_in_each_version(version: str) -> None:
    error = MissingField("MSH-10 (message control ID) is empty", Location("MSH", field=10))
    context = AckContext(version=version, control_id="C-1")
    ack = build_ack(context, error.ack_code, [AckIssue.from_error(error)])
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    assert parsed.msa.msa_1.value == "AE"
