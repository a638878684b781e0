"""From bytes to message text: framing, batches, BOMs, line ends and MSH-18 charsets."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.hl7 import errors
from pipeline.hl7.decode import (
    DecodedMessage,
    RawMessage,
    decode_message,
    split_messages,
)
from pipeline.hl7.errors import (
    IntakeError,
    NotHL7,
    UndecodableMessage,
    UnsupportedCharacterSet,
)
from pipeline.hl7.intake import read_results

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"
BOM = codecs.BOM_UTF8


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def oru(control: str = "CTRL-1", charset: str = "UNICODE UTF-8", name: str = "DUPONT^Jean") -> str:
    """A small valid ORU^R01 as CR-separated text (MSH-18 omitted when `charset` is "")."""
    msh = (
        f"MSH|^~\\&|APP|LAB|LABDISPATCH|LABDISPATCH|20261128093000||ORU^R01^ORU_R01|{control}|P|2.5"
    )
    if charset:
        msh += "||||||" + charset
    return (
        "\r".join(
            [
                msh,
                f"PID|||123^^^LAB^PI||{name}",
                "OBR|1|A1|B1|GLU^Glucose|||202611280700",
                "OBX|1|NM|GLU^Glucose||5.2|mmol/L|||||F",
            ]
        )
        + "\r"
    )


def read_messages(data: bytes) -> Iterator[DecodedMessage | tuple[RawMessage, IntakeError]]:
    """Every message of `data` decoded, or paired with the reason it was refused."""
    for raw in split_messages(data):
        try:
            yield decode_message(raw)
        except IntakeError as error:
            yield raw, error


def decoded(data: bytes) -> list[DecodedMessage]:
    """Every message of `data`, failing the test if one could not be decoded."""
    out: list[DecodedMessage] = []
    for item in read_messages(data):
        assert isinstance(item, DecodedMessage), item
        out.append(item)
    return out


def refused(data: bytes) -> IntakeError:
    """The one error `data` (a single message) is refused with."""
    items = list(read_messages(data))
    assert len(items) == 1
    item = items[0]
    assert isinstance(item, tuple), f"expected a refusal, got {item!r}"
    raw, error = item
    assert isinstance(raw, RawMessage)
    return error


def control_ids(messages: list[DecodedMessage]) -> list[str]:
    return [message.text.split("\r", 1)[0].split("|")[9] for message in messages]


# --- line ends ---------------------------------------------------------------------------------


def test_cr_lf_and_crlf_line_ends_give_identical_text() -> None:
    text = oru("A") + oru("B")
    variants = [text, text.replace("\r", "\n"), text.replace("\r", "\r\n")]
    results = [[m.text for m in decoded(v.encode())] for v in variants]
    assert results[0] == [oru("A"), oru("B")]
    assert results[1] == results[0]
    assert results[2] == results[0]


def test_lf_only_fixture_decodes_to_cr_segments() -> None:
    [message] = decoded(fixture("lf_only.hl7"))
    assert "\n" not in message.text
    assert message.text.endswith("\r")
    assert message.text.count("\r") == 11


def test_split_messages_makes_every_line_end_cr() -> None:
    [raw] = split_messages(oru().replace("\r", "\r\n").encode())
    assert b"\n" not in raw.data
    assert raw.data == oru().encode()


# --- byte-order marks ------------------------------------------------------------------------


def test_utf8_bom_at_file_start_is_removed() -> None:
    [message] = decoded(BOM + oru().encode())
    assert message.text == oru()
    assert "\ufeff" not in message.text


def test_utf8_bom_before_each_message_is_removed() -> None:
    data = BOM + oru("A").encode() + BOM + oru("B").encode()
    messages = decoded(data)
    assert [m.text for m in messages] == [oru("A"), oru("B")]


def test_split_messages_records_the_bom() -> None:
    first, second = split_messages(BOM + oru("A").encode() + oru("B").encode())
    assert first.had_bom is True
    assert second.had_bom is False


def test_utf8_bom_crlf_fixture_is_accepted() -> None:
    [message] = decoded(fixture("utf8_bom_crlf.hl7"))
    assert message.text.startswith("MSH|")
    assert "BOM-CRLF-1" in message.text
    assert "Hélène" in message.text


# --- MLLP framing ----------------------------------------------------------------------------


def test_one_mllp_frame_gives_the_bare_message() -> None:
    [message] = decoded(b"\x0b" + oru().encode() + b"\x1c\x0d")
    assert message.text == oru()


def test_several_mllp_frames_give_one_message_each() -> None:
    data = b"".join(b"\x0b" + oru(c).encode() + b"\x1c\x0d" for c in ("M1", "M2", "M3"))
    messages = decoded(data)
    assert [m.text for m in messages] == [oru("M1"), oru("M2"), oru("M3")]
    assert [m.index for m in messages] == [1, 2, 3]


def test_mllp_fixture_with_two_frames() -> None:
    messages = decoded(fixture("mllp_framed_two.hl7"))
    assert control_ids(messages) == ["MLLP-1", "MLLP-2"]
    for message in messages:
        assert "\x0b" not in message.text
        assert "\x1c" not in message.text


# --- batches ---------------------------------------------------------------------------------


def test_fhs_bhs_batch_is_split_into_its_messages_with_batch_id() -> None:
    messages = decoded(fixture("batch_fhs_bhs.hl7"))
    assert control_ids(messages) == ["LBC-2026-000102", "LBC-2026-000103"]
    assert [m.batch for m in messages] == ["LBC-BATCH-0001", "LBC-BATCH-0001"]


def test_batch_envelope_lines_are_gone_from_messages() -> None:
    for message in decoded(fixture("batch_fhs_bhs.hl7")):
        tags = [line[:3] for line in message.text.split("\r") if line]
        assert tags[0] == "MSH"
        assert not {"FHS", "BHS", "BTS", "FTS"} & set(tags)


def test_file_control_id_is_kept_when_there_is_no_bhs() -> None:
    data = ("FHS|^~\\&|APP|LAB|||20261128||||FILE-7\r" + oru("A") + "FTS|1\r").encode()
    [message] = decoded(data)
    assert message.batch == "FILE-7"
    assert message.text == oru("A")


def test_two_batches_keep_their_own_ids() -> None:
    data = (
        "BHS|^~\\&|APP|LAB|||20261128||||B-1\r" + oru("A") + "BTS|1\r"
        "BHS|^~\\&|APP|LAB|||20261128||||B-2\r" + oru("B") + "BTS|1\r"
    ).encode()
    assert [m.batch for m in decoded(data)] == ["B-1", "B-2"]


def test_message_after_the_batch_trailer_is_not_in_the_batch() -> None:
    data = (
        "FHS|^~\\&|APP|LAB|||20261128||||FILE-1\r"
        "BHS|^~\\&|APP|LAB|||20261128||||B-1\r" + oru("IN") + "BTS|1\rFTS|1\r" + oru("AFTER")
    ).encode()
    inside, after = decoded(data)
    assert inside.batch == "B-1"
    assert after.batch == ""


def test_message_outside_any_batch_has_no_batch_id() -> None:
    [message] = decoded(oru().encode())
    assert message.batch == ""


# --- stray text ------------------------------------------------------------------------------


def test_stray_text_before_first_msh_is_its_own_refused_chunk() -> None:
    data = b"Hello, here are the results\r\n" + oru("A").encode() + oru("B").encode()
    items = list(read_messages(data))
    assert len(items) == 3
    first = items[0]
    assert isinstance(first, tuple)
    raw, error = first
    assert isinstance(error, NotHL7)
    assert raw.data.startswith(b"Hello")
    assert raw.index == 1
    rest = [item for item in items[1:] if isinstance(item, DecodedMessage)]
    assert [m.text for m in rest] == [oru("A"), oru("B")]
    assert [m.index for m in rest] == [2, 3]


def test_not_hl7_is_rejected_with_ar() -> None:
    error = refused(b"just some text\r")
    assert isinstance(error, NotHL7)
    assert error.ack_code == "AR"


# --- MSH-18 character sets -------------------------------------------------------------------


def test_msh18_ascii_decodes_as_ascii() -> None:
    [message] = decoded(oru(charset="ASCII").encode("ascii"))
    assert message.charset == "ascii"
    assert message.declared_charset == "ASCII"
    assert message.warnings == ()


def test_msh18_8859_1_reads_latin1_e_acute() -> None:
    data = oru(charset="8859/1", name="GARCIA^José").encode("latin-1")
    assert b"Jos\xe9" in data
    [message] = decoded(data)
    assert message.charset == "iso8859-1"
    assert "GARCIA^José" in message.text


def test_v23_latin1_fixture_reads_accents() -> None:
    [message] = decoded(fixture("v23_local_codes_latin1.hl7"))
    assert message.declared_charset == "8859/1"
    assert "Glycémie à jeun" in message.text


def test_msh18_unicode_utf8_decodes_utf8() -> None:
    [message] = decoded(oru(name="DUPONT^Hélène").encode("utf-8"))
    assert message.charset == "utf-8"
    assert "DUPONT^Hélène" in message.text


def test_declared_utf8_with_invalid_bytes_names_pid5() -> None:
    error = refused(fixture("declared_utf8_invalid_bytes.hl7"))
    assert type(error) is UndecodableMessage
    assert error.location is not None
    assert error.location.segment == "PID"
    assert error.location.field == 5
    assert "0xE9" in error.reason


def test_invalid_byte_location_counts_fields_in_an_inline_message() -> None:
    data = oru(name="X").encode().replace(b"|123^^^LAB^PI|", b"|12\xff^^^LAB^PI|")
    error = refused(data)
    assert isinstance(error, UndecodableMessage)
    assert (error.location.segment, error.location.field) == ("PID", 3)  # type: ignore[union-attr]


def test_declared_ascii_with_non_ascii_is_undecodable() -> None:
    error = refused(fixture("declared_ascii_non_ascii.hl7"))
    assert type(error) is UndecodableMessage
    assert error.location is not None
    assert (error.location.segment, error.location.field) == ("PID", 5)


def test_empty_msh18_with_valid_utf8_is_accepted_with_warning() -> None:
    [message] = decoded(fixture("undeclared_utf8.hl7"))
    assert message.charset == "utf-8"
    assert message.declared_charset == ""
    assert "Hélène" in message.text
    assert any("MSH-18" in warning for warning in message.warnings)


def test_empty_msh18_with_ascii_text_has_no_warning() -> None:
    [message] = decoded(oru(charset="").encode())
    assert message.charset == "ascii"
    assert message.warnings == ()


def test_empty_msh18_with_latin1_bytes_is_undecodable() -> None:
    error = refused(fixture("undeclared_latin1.hl7"))
    assert type(error) is UndecodableMessage
    assert error.location is not None
    assert error.location.segment == "PID"


def test_unknown_charset_is_unsupported_and_rejected() -> None:
    error = refused(fixture("unknown_charset.hl7"))
    assert isinstance(error, UnsupportedCharacterSet)
    assert error.ack_code == "AR"
    assert error.location is not None
    assert (error.location.segment, error.location.field) == ("MSH", 18)
    assert "KLINGON-8" in error.reason


def test_utf8_bom_with_8859_1_and_non_ascii_is_refused() -> None:
    data = BOM + oru(charset="8859/1", name="GARCIA^José").encode("latin-1")
    error = refused(data)
    assert type(error) is UndecodableMessage
    assert error.location is not None
    assert error.location.field == 18


def test_utf8_bom_with_8859_1_and_plain_ascii_is_accepted_with_warning() -> None:
    [message] = decoded(BOM + oru(charset="8859/1").encode())
    assert message.charset == "iso8859-1"
    assert any("byte-order mark" in warning for warning in message.warnings)


def test_utf8_bom_with_empty_msh18_reads_utf8() -> None:
    [message] = decoded(BOM + oru(charset="", name="DUPONT^Hélène").encode())
    assert message.charset == "utf-8"
    assert "Hélène" in message.text


def test_utf16le_file_with_bom_is_decoded() -> None:
    text = oru("U16", charset="", name="DUPONT^Hélène")
    data = codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    [message] = decoded(data)
    assert message.text == text
    assert message.charset == "utf-16"


def test_utf16le_file_declared_8859_1_is_refused() -> None:
    data = codecs.BOM_UTF16_LE + oru(charset="8859/1").encode("utf-16-le")
    error = refused(data)
    assert isinstance(error, UndecodableMessage)
    assert error.location is not None
    assert error.location.field == 18


def test_utf16_declared_without_bom_is_refused() -> None:
    error = refused(oru(charset="UNICODE UTF-16").encode())
    assert isinstance(error, UndecodableMessage)


@pytest.mark.parametrize(
    ("declared", "codec"),
    [
        ("ASCII", "ascii"),
        ("8859/1", "iso8859-1"),
        ("8859/15", "iso8859-15"),
        ("ISO IR100", "iso8859-1"),
        ("UNICODE UTF-8", "utf-8"),
        ("unicode_utf-8", "utf-8"),
    ],
)
def test_msh18_spellings_map_to_codecs(declared: str, codec: str) -> None:
    [message] = decoded(oru(charset=declared).encode())
    assert message.charset == codec


def test_decode_message_refuses_raw_without_msh() -> None:
    with pytest.raises(NotHL7):
        decode_message(RawMessage(1, b"PID|||1\r"))


# --- error taxonomy --------------------------------------------------------------------------


def _all_error_classes() -> list[type[IntakeError]]:
    found: list[type[IntakeError]] = []
    pending: list[type[IntakeError]] = [IntakeError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_has_ack_code_and_3_digit_hl7_code(cls: type[IntakeError]) -> None:
    assert issubclass(cls, IntakeError)
    assert cls.ack_code in {"AE", "AR"}
    assert len(cls.hl7_code) == 3
    assert cls.hl7_code.isdigit()
    assert cls.hl7_text


def test_error_module_exports_are_intake_errors() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == errors.__name__
    ]
    assert len(classes) >= 15
    assert all(issubclass(cls, IntakeError) for cls in classes)


@pytest.mark.parametrize(
    "name",
    [
        "declared_utf8_invalid_bytes.hl7",
        "declared_ascii_non_ascii.hl7",
        "undeclared_latin1.hl7",
        "unknown_charset.hl7",
    ],
)
def test_decode_errors_carry_ack_and_hl7_codes(name: str) -> None:
    error = refused(fixture(name))
    assert isinstance(error, IntakeError)
    assert error.ack_code in {"AE", "AR"}
    assert len(error.hl7_code) == 3 and error.hl7_code.isdigit()
    assert error.reason


@pytest.mark.parametrize("declared", ["ISO-8859-1", "ISO8859-1", "LATIN1", "8859/1", "ISO_IR 100"])
def test_common_latin1_spellings_in_msh18_are_read_as_declared(declared: str) -> None:
    data = oru(charset=declared, name="Hélène").encode("latin-1")
    [message] = decoded(data)
    assert "Hélène" in message.text
    assert message.charset == "iso8859-1"


def test_windows_1252_declared_reads_curly_apostrophe() -> None:
    data = oru(charset="WINDOWS-1252", name="O\u2019BRIEN").encode("cp1252")
    [message] = decoded(data)
    assert "O\u2019BRIEN" in message.text


# --- line feeds inside fields, end-of-file marks ----------------------------------------------


def test_bare_lf_inside_a_field_of_a_cr_message_is_a_line_break_in_the_text() -> None:
    text = oru().replace("GLU^Glucose|||", "GLU^Glucose\nfasting|||", 1)
    (result,) = list(read_results(text.encode()))
    assert result.message is not None, result.error
    obr = result.message.first("OBR")
    assert obr is not None
    assert obr.value(4, 2) == "Glucose\nfasting"
    assert result.facts is not None
    assert any("line feed inside OBR" in warning for warning in result.facts.warnings)


def test_lf_before_a_segment_name_still_ends_a_segment_in_a_cr_message() -> None:
    text = oru().replace("\rOBX|", "\nOBX|", 1)
    (result,) = list(read_results(text.encode()))
    assert result.message is not None, result.error
    assert [s.name for s in result.message.segments] == ["MSH", "PID", "OBR", "OBX"]
    assert result.facts is not None and result.facts.warnings == ()


def test_line_wrapped_with_crlf_in_a_crlf_file_is_still_refused() -> None:
    text = oru().replace("GLU^Glucose|||", "GLU^Glu\rcose|||", 1).replace("\r", "\r\n")
    (result,) = list(read_results(text.encode()))
    assert isinstance(result.error, errors.BrokenLine)


def test_trailing_dos_end_of_file_mark_and_nul_padding_are_ignored() -> None:
    data = oru().encode() + b"\x1a" + b"\x00" * 16
    (result,) = list(read_results(data))
    assert result.ok, result.error
