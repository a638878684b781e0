"""Structure checks: which messages `parse` accepts, refuses (and why), or warns about."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.hl7.decode import DecodedMessage, decode_message, split_messages
from pipeline.hl7.errors import (
    BadDelimiters,
    BrokenLine,
    FieldTooLong,
    IntakeError,
    InvalidValue,
    MissingField,
    MissingSegment,
    NotHL7,
    UnknownSegment,
    UnsupportedEvent,
    UnsupportedMessageType,
    UnsupportedProcessingId,
    UnsupportedVersion,
)
from pipeline.hl7.intake import read_results
from pipeline.hl7.parse import Hl7Message, parse, read_delimiters
from pipeline.ledger.models import Message

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"

BODY = [
    "PID|||123^^^LAB^PI||DUPONT^Jean",
    "ORC|RE|A1|B1",
    "OBR|1|A1|B1|GLU^Glucose|||202611280700|||||||||||||||||F",
    "OBX|1|NM|GLU^Glucose||5.2|mmol/L|||||F",
]


def msh(
    control: str = "CTRL-1",
    version: str = "2.5",
    message_type: str = "ORU^R01",
    processing: str = "P",
) -> str:
    return (
        f"MSH|^~\\&|APP|LAB|LABDISPATCH|LABDISPATCH|20261128093000||{message_type}|{control}"
        f"|{processing}|{version}"
    )


def text_of(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def decoded(text: str) -> DecodedMessage:
    return DecodedMessage(
        index=1,
        data=text.encode(),
        text=text,
        charset="utf-8",
        declared_charset="",
    )


def parse_text(text: str) -> Hl7Message:
    return parse(decoded(text))


def parse_fixture(name: str) -> Hl7Message:
    [raw] = split_messages((FIXTURES / name).read_bytes())
    return parse(decode_message(raw))


def fixture_error(name: str) -> IntakeError:
    [result] = read_results((FIXTURES / name).read_bytes())
    assert result.error is not None, f"{name} was accepted"
    return result.error


def oru(*extra: str, version: str = "2.5", header: str | None = None) -> str:
    return text_of(header or msh(version=version), *BODY, *extra)


# --- accepted --------------------------------------------------------------------------------


def test_fixture_message_is_parsed_with_its_header() -> None:
    message = parse_fixture("fr_prt_idnps_utf8.hl7")
    assert message.message_type == "ORU^R01"
    assert message.structure == "ORU_R01"
    assert message.version == "2.5"
    assert message.control_id == "LBC-2026-000101"
    assert message.processing_id == "P"
    assert message.delimiters.field == "|"
    assert message.delimiters.encoding_characters == "^~\\&"
    assert [s.name for s in message.segments][:5] == ["MSH", "PID", "PV1", "ORC", "OBR"]
    assert message.warnings == []


@pytest.mark.parametrize(
    "version", ["2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8.2"]
)
def test_simple_oru_r01_accepted_in_version(version: str) -> None:
    message = parse_text(oru(version=version))
    assert message.version == version
    assert message.control_id == "CTRL-1"
    assert [s.name for s in message.segments] == ["MSH", "PID", "ORC", "OBR", "OBX"]
    assert message.warnings == []


def test_segment_sequences_count_per_name() -> None:
    message = parse_text(oru("OBX|2|NM|K^Potassium||4.1|mmol/L|||||F"))
    obx = message.all("OBX")
    assert [(s.sequence, s.line) for s in obx] == [(1, 5), (2, 6)]
    assert message.first("OBR") is not None
    assert message.first("NTE") is None


def test_unusual_delimiters_are_read_from_msh() -> None:
    text = "MSH#$%!*#APP#LAB#####ORU$R01#C-9#P#2.5\rPID###1\rOBR#1#A1\r"
    message = parse_text(text)
    assert message.delimiters.field == "#"
    assert message.delimiters.component == "$"
    assert message.delimiters.escape == "!"
    assert message.control_id == "C-9"


def test_z_segment_is_accepted() -> None:
    message = parse_text(oru("ZLB|1|local data"))
    assert "ZLB" in [s.name for s in message.segments]
    assert not any("ZLB" in w for w in message.warnings)


def test_prt_is_accepted_in_2_5_without_warning() -> None:
    message = parse_text(oru("PRT||UC||RCT^^participation|123^DOC^Ann"))
    assert "PRT" in [s.name for s in message.segments]
    assert message.warnings == []


def test_prt_is_read_in_2_3_too_without_a_warning() -> None:
    # PRT means the same in any message that carries it, so the back-port is not limited
    # to the 2.5 profile that made it common.
    message = parse_text(oru("PRT||UC||RCT^^participation|123^DOC^Ann", version="2.3"))
    assert "PRT" in [s.name for s in message.segments]
    assert message.warnings == []


def test_segment_from_a_later_version_is_a_warning_naming_that_version() -> None:
    message = parse_text(oru("SPM|1|SP-1||BLD^Blood", version="2.4"))
    assert "SPM" in [s.name for s in message.segments]
    assert message.warnings == [
        "segments from later HL7 versions than 2.4 were ignored: SPM (HL7 2.5)"
    ]


def test_segment_outside_oru_r01_is_a_warning_not_an_error() -> None:
    message = parse_text(oru("TXA|1|CN", version="2.5.1"))
    assert "TXA" in [s.name for s in message.segments]
    assert any("TXA" in w and "ORU_R01" in w for w in message.warnings)


def test_segment_outside_oru_r01_in_2_3_is_a_warning() -> None:
    message = parse_text(oru("TXA|1|CN", version="2.3"))
    assert any("TXA" in w for w in message.warnings)


def test_no_pid_is_a_warning() -> None:
    message = parse_text(text_of(msh(), *BODY[1:]))
    assert any("PID" in w for w in message.warnings)


def test_empty_processing_id_is_a_warning_and_means_production() -> None:
    message = parse_text(oru(header=msh(processing="")))
    assert message.processing_id == "P"
    assert any("MSH-11" in w for w in message.warnings)


@pytest.mark.parametrize("processing", ["P", "T", "D"])
def test_processing_ids_accepted(processing: str) -> None:
    assert parse_text(oru(header=msh(processing=processing))).processing_id == processing


def test_decode_warnings_are_kept() -> None:
    message = parse_fixture("undeclared_utf8.hl7")
    assert any("MSH-18" in w for w in message.warnings)


# --- refused: not HL7 / delimiters -----------------------------------------------------------


def test_text_not_starting_with_msh_is_not_hl7() -> None:
    with pytest.raises(NotHL7) as caught:
        parse_text("PID|||123\r")
    assert caught.value.ack_code == "AR"


def test_three_encoding_characters_are_bad_delimiters() -> None:
    with pytest.raises(BadDelimiters) as caught:
        parse_text(oru(header=msh().replace("^~\\&", "^~\\")))
    assert caught.value.location is not None
    assert caught.value.location.field == 2
    assert caught.value.ack_code == "AR"


def test_alphanumeric_field_separator_is_bad_delimiters() -> None:
    with pytest.raises(BadDelimiters) as caught:
        read_delimiters("MSHA^~\\&AAPP")
    assert caught.value.location is not None
    assert caught.value.location.field == 1


def test_too_short_msh_is_bad_delimiters() -> None:
    with pytest.raises(BadDelimiters):
        parse_text("MSH|^~\r")


def test_repeated_encoding_character_is_bad_delimiters() -> None:
    with pytest.raises(BadDelimiters):
        read_delimiters("MSH|^^\\&|APP")


def test_field_separator_inside_encoding_characters_is_bad_delimiters() -> None:
    with pytest.raises(BadDelimiters):
        read_delimiters("MSH|^~\\&&|APP")


# --- refused: broken lines and segments ------------------------------------------------------


def test_wrapped_line_is_broken_line_named_after_previous_segment() -> None:
    error = fixture_error("wrapped_line.hl7")
    assert type(error) is BrokenLine
    assert error.location is not None
    assert error.location.segment == "OBR"
    assert error.location.sequence == 1
    assert "after OBR[1]" in error.reason
    assert error.ack_code == "AE"


def test_broken_line_after_second_obx_names_its_sequence() -> None:
    text = oru("OBX|2|NM|K^Potassium||4.1", "continued text")
    with pytest.raises(BrokenLine) as caught:
        parse_text(text)
    assert caught.value.location is not None
    assert (caught.value.location.segment, caught.value.location.sequence) == ("OBX", 2)


def test_misspelt_segment_name_is_unknown_segment() -> None:
    with pytest.raises(UnknownSegment) as caught:
        parse_text(oru("I|1|NM"))
    assert caught.value.location is not None
    assert caught.value.location.segment == "I"


def test_segment_no_version_defines_is_unknown() -> None:
    with pytest.raises(UnknownSegment) as caught:
        parse_text(oru("QQQ|1|x"))
    assert caught.value.location is not None
    assert caught.value.location.segment == "QQQ"
    assert "no HL7 version defines it" in caught.value.reason


def test_no_obr_is_missing_segment() -> None:
    error = fixture_error("no_obr.hl7")
    assert type(error) is MissingSegment
    assert error.location is not None
    assert error.location.segment == "OBR"


def test_control_character_is_invalid_value_with_location() -> None:
    error = fixture_error("control_char.hl7")
    assert type(error) is InvalidValue
    assert error.location is not None
    assert (error.location.segment, error.location.sequence, error.location.field) == ("OBX", 1, 3)
    assert "U+0007" in error.reason


def test_control_character_in_second_obx_field_5() -> None:
    text = oru("OBX|2|NM|K^Potassium||4\x011")
    with pytest.raises(InvalidValue) as caught:
        parse_text(text)
    assert caught.value.location is not None
    assert (caught.value.location.segment, caught.value.location.sequence) == ("OBX", 2)
    assert caught.value.location.field == 5


def test_c1_control_character_from_cp1252_declared_8859_1_is_refused() -> None:
    # Windows-1252 bytes sent as 8859/1: 0x92 (a curly apostrophe) decodes to U+0092, a C1
    # control character, which must not pass silently into a patient's name.
    header = msh() + "||||||8859/1"
    data = text_of(header, "PID|||1^^^LAB^PI||O\u2019BRIEN^Sean", *BODY[1:]).encode("cp1252")
    [result] = read_results(data)
    assert result.error is not None, "U+0092 accepted in PID-5"
    assert result.error.location is not None
    assert (result.error.location.segment, result.error.location.field) == ("PID", 5)


# --- refused: header -------------------------------------------------------------------------


def test_missing_control_id_fixture() -> None:
    error = fixture_error("missing_control_id.hl7")
    assert type(error) is MissingField
    assert error.location is not None
    assert (error.location.segment, error.location.field) == ("MSH", 10)
    assert error.hl7_code == "101"


def test_blank_control_id_is_missing() -> None:
    with pytest.raises(MissingField) as caught:
        parse_text(oru(header=msh(control="   ")))
    assert caught.value.location is not None
    assert caught.value.location.field == 10


def test_empty_message_type_is_missing_field() -> None:
    with pytest.raises(MissingField) as caught:
        parse_text(oru(header=msh(message_type="")))
    assert caught.value.location is not None
    assert caught.value.location.field == 9


def test_empty_version_is_missing_field() -> None:
    with pytest.raises(MissingField) as caught:
        parse_text(oru(header=msh(version="")))
    assert caught.value.location is not None
    assert caught.value.location.field == 12


def test_adt_is_unsupported_message_type() -> None:
    error = fixture_error("adt_a01.hl7")
    assert type(error) is UnsupportedMessageType
    assert (error.ack_code, error.hl7_code) == ("AR", "200")
    assert error.location is not None
    assert (error.location.field, error.location.component) == (9, 1)


def test_oru_r30_is_unsupported_event() -> None:
    error = fixture_error("oru_r30.hl7")
    assert type(error) is UnsupportedEvent
    assert (error.ack_code, error.hl7_code) == ("AR", "201")
    assert error.location is not None
    assert (error.location.field, error.location.component) == (9, 2)


def test_oru_without_event_is_unsupported_event() -> None:
    with pytest.raises(UnsupportedEvent):
        parse_text(oru(header=msh(message_type="ORU")))


def test_version_2_1_is_unsupported() -> None:
    error = fixture_error("version_2_1.hl7")
    assert type(error) is UnsupportedVersion
    assert (error.ack_code, error.hl7_code) == ("AR", "203")
    assert error.location is not None
    assert error.location.field == 12


def test_processing_id_x_is_unsupported() -> None:
    error = fixture_error("processing_x.hl7")
    assert type(error) is UnsupportedProcessingId
    assert (error.ack_code, error.hl7_code) == ("AR", "202")
    assert error.location is not None
    assert error.location.field == 11


def test_header_checks_come_before_segment_checks() -> None:
    data = (FIXTURES / "wrapped_line.hl7").read_bytes().replace(b"ORU^R01^ORU_R01", b"ADT^A01")
    [result] = read_results(data)
    assert type(result.error) is UnsupportedMessageType


def test_unsupported_version_reported_before_unknown_segment() -> None:
    with pytest.raises(UnsupportedVersion):
        parse_text(oru("QQQ|1", version="2.1"))


def test_message_type_checked_before_control_id() -> None:
    with pytest.raises(UnsupportedMessageType):
        parse_text(oru(header=msh(message_type="ADT^A01", control="")))


@pytest.mark.parametrize(
    ("head", "field", "limit"),
    [
        (msh().replace("|LAB|", "|" + "L" * 65 + "|", 1), 4, 64),
        (msh().replace("|APP|LAB|", "|" + "A" * 65 + "||", 1), 3, 64),
        (msh(control="C" * 200), 10, 199),
    ],
    ids=["MSH-4", "MSH-3-without-MSH-4", "MSH-10"],
)
def test_key_fields_longer_than_the_ledger_keeps_are_refused_with_ar(
    head: str, field: int, limit: int
) -> None:
    with pytest.raises(FieldTooLong) as caught:
        parse_text(text_of(head, *BODY))
    assert caught.value.ack_code == "AR"
    assert caught.value.location is not None and caught.value.location.field == field
    assert f"MSH-{field} " in caught.value.reason and f"at most {limit} " in caught.value.reason


def test_key_field_limits_are_the_ledger_columns() -> None:
    """One source of truth: a longer column is a longer accepted field."""
    assert Message.__table__.c.laboratory.type.length == 64  # type: ignore[attr-defined]
    assert Message.__table__.c.control_id.type.length == 199  # type: ignore[attr-defined]
    at_limit = msh(control="C" * 199).replace("|LAB|", "|" + "L" * 64 + "|", 1)
    message = parse_text(text_of(at_limit, *BODY))
    assert message.control_id == "C" * 199
    # A long MSH-3 is fine when MSH-4 names the laboratory (MSH-3 is not the key then).
    parse_text(text_of(msh().replace("|APP|", "|" + "A" * 100 + "|", 1), *BODY))
