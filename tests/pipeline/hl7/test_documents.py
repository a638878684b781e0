"""Embedded documents (OBX-2 = ED): decoded the way labs actually send them, named safely,
and refused at intake when they cannot be read."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.hl7.documents import (
    EmbeddedDocument,
    _unescape,
    extract_documents,
    message_charset,
    safe_filename_stem,
)
from pipeline.hl7.intake import IntakeResult, read_results
from pipeline.hl7.segments import DEFAULT_DELIMITERS, unescape
from tests.pipeline.hl7.builders import seg

PAYLOAD = b"%PDF-1.4\n" + bytes(range(256)) * 3 + b"%%EOF\n"


def message(*ed_values: str, control: str = "DOC-1", charset: str = "UNICODE UTF-8") -> bytes:
    segments = [
        "MSH|^~\\&|SIL|LABO|LABDISPATCH|LABDISPATCH|20261128093000||ORU^R01^ORU_R01"
        f"|{control}|P|2.5|||||FRA|{charset}",
        seg("PID", {3: "IPP1^^^LABO^PI", 5: "DUPONT^Jean"}),
        seg("OBR", {1: "1", 2: "PL1", 3: "FI1", 4: "GLU^Glucose^L", 25: "F"}),
        seg("OBX", {1: "1", 2: "NM", 3: "GLU^Glucose^L", 5: "5.2", 11: "F"}),
    ]
    for number, value in enumerate(ed_values, start=2):
        segments.append(seg("OBX", {1: str(number), 2: "ED", 3: "RPT^Report^L", 5: value, 11: "F"}))
    text = "\r".join(segments) + "\r"
    return text.encode("latin-1" if charset == "8859/1" else "utf-8")


def read(data: bytes) -> IntakeResult:
    [result] = list(read_results(data))
    return result


def documents(data: bytes) -> list[EmbeddedDocument]:
    result = read(data)
    assert result.message is not None, result.error
    return extract_documents(result.message)


def wrapped(data: bytes, line_break: str) -> str:
    """Base64 in 76-column lines, each break written as `line_break`."""
    return base64.encodebytes(data).decode().rstrip("\n").replace("\n", line_break)


# --- decoding ----------------------------------------------------------------------------------


def test_plain_base64_pdf() -> None:
    encoded = base64.b64encode(PAYLOAD).decode()
    [document] = documents(message(f"^APPLICATION^PDF^Base64^{encoded}"))
    assert document == EmbeddedDocument("DOC-1-1.pdf", "application/pdf", PAYLOAD)


@pytest.mark.parametrize("line_break", ["\\.br\\", "\\X0D0A\\", "\\X0A\\", "\\.sp\\"])
def test_base64_with_escaped_line_breaks(line_break: str) -> None:
    value = f"^APPLICATION^PDF^Base64^{wrapped(PAYLOAD, line_break)}"
    assert line_break in value
    [document] = documents(message(value))
    assert document.data == PAYLOAD


def test_base64_sent_in_separately_padded_chunks() -> None:
    chunks = [PAYLOAD[:100], PAYLOAD[100:401], PAYLOAD[401:]]
    encoded = "".join(base64.b64encode(chunk).decode() for chunk in chunks)
    assert "=" in encoded.rstrip("=")  # padding inside the data, not only at the end
    [document] = documents(message(f"^APPLICATION^PDF^Base64^{encoded}"))
    assert document.data == PAYLOAD


def test_base64_without_its_final_padding() -> None:
    encoded = base64.b64encode(PAYLOAD[:-1]).decode()
    assert encoded.endswith("=")
    [document] = documents(message(f"^APPLICATION^PDF^Base64^{encoded.rstrip('=')}"))
    assert document.data == PAYLOAD[:-1]


def test_hex_document() -> None:
    [document] = documents(message(f"^IMAGE^PNG^Hex^{PAYLOAD[:64].hex().upper()}"))
    assert document.data == PAYLOAD[:64]
    assert document.filename == "DOC-1-1.png"
    assert document.charset == ""


def test_text_document_is_unescaped_and_keeps_the_message_charset() -> None:
    value = "^TEXT^XML^A^<cr>Glyc\\XE9\\mie \\T\\ ur\\E\\e</cr>"
    [document] = documents(message(value, charset="8859/1"))
    assert document.data == "<cr>Glycémie & ur\\e</cr>".encode("latin-1")
    assert document.mime_type == "text/xml"
    assert document.charset == "ISO-8859-1"


def test_several_documents_keep_message_order_and_stable_names() -> None:
    first = base64.b64encode(b"%PDF-1 first").decode()
    second = base64.b64encode(b"<xml/>").decode()
    data = message(f"^APPLICATION^PDF^Base64^{first}", f"^TEXT^XML^Base64^{second}")
    names = [document.filename for document in documents(data)]
    assert names == ["DOC-1-1.pdf", "DOC-1-2.xml"]
    assert [document.filename for document in documents(data)] == names


def test_hl7_type_codes_that_are_not_mime_types_become_octet_stream() -> None:
    [document] = documents(message("^NS^Octet-stream^Base64^AAEC"))
    assert document.mime_type == "application/octet-stream"
    assert document.filename == "DOC-1-1.bin"
    assert document.data == b"\x00\x01\x02"


def test_unknown_but_real_mime_type_keeps_its_subtype_as_extension() -> None:
    [document] = documents(message("^AUDIO^OGG^Base64^AAAA"))
    assert document.mime_type == "audio/ogg"
    assert document.filename == "DOC-1-1.ogg"


@pytest.mark.parametrize(
    ("control_id", "stem"),
    [
        ("LBC-2026-000101", "LBC-2026-000101"),
        ("../../etc/passwd", "etc_passwd"),
        ("A B:C*D", "A_B_C_D"),
        (".hidden", "hidden"),
        ("Ü", "result"),
        ("X" * 80, "X" * 64),
    ],
)
def test_file_names_are_safe_on_any_system(control_id: str, stem: str) -> None:
    assert safe_filename_stem(control_id) == stem


def test_message_charset_is_the_iana_name_of_the_bytes() -> None:
    utf16 = message(charset="UNICODE UTF-16").decode("utf-8").encode("utf-16")
    for data, expected in [
        (message(charset="8859/1"), "ISO-8859-1"),
        (message(), "UTF-8"),
        (utf16, "UTF-8"),  # intake re-encodes UTF-16 files: the bytes it keeps are UTF-8
    ]:
        result = read(data)
        assert result.message is not None, result.error
        assert message_charset(result.message) == expected
        result.data.decode(expected)


# --- intake warns about what cannot be decoded, and delivers the rest ---------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "^TEXT^^Base64^Q2hlciBjb25mcsOocmUsIHZvdXMgdHJvdXZlcmV6IGNpLWpvaW50IGxlIENSIGTigJlpbWFnZXJpZSBkZSBNLkR1cG9ud",
            "truncated",
        ),
        ("^APPLICATION^PDF^Base64^JVBERi0x*LjQK", "'*' is not Base64"),
        ("^APPLICATION^PDF^Base64^JVBE=RGVm", "padding appears in the middle"),
        ("^IMAGE^PNG^Hex^89504E470", "odd number"),
        ("^IMAGE^PNG^Hex^89504G47", "'G' is not hexadecimal"),
        ("^APPLICATION^PDF^Uuencode^begin 644", "Base64, Hex or A"),
    ],
)
def test_undecodable_document_is_accepted_with_a_warning_naming_obx_5(
    value: str, reason: str
) -> None:
    result = read(message(value))

    assert result.ok and result.facts is not None and result.message is not None
    [document] = result.facts.documents
    assert not document.readable and reason in document.problem
    [warning] = [w for w in result.facts.warnings if w.startswith("OBX[2]-5")]
    assert reason in warning and "inside the HL7 message only" in warning
    ack = result.ack()
    assert ack.split("\r")[1].startswith("MSA|AA|DOC-1")
    assert "OBX[2]-5" in ack  # the laboratory is told, as an ERR of severity W
    assert extract_documents(result.message) == []  # no broken file handed to a clinician


def test_document_size_in_facts_is_the_decoded_size() -> None:
    result = read(message(f"^APPLICATION^PDF^Base64^{wrapped(PAYLOAD, chr(92) + '.br' + chr(92))}"))
    assert result.facts is not None
    [document] = result.facts.documents
    assert document.size == len(PAYLOAD)


def test_empty_document_is_accepted_as_empty() -> None:
    result = read(message("App5^NS^Octet-stream^Base64"))
    assert result.ok, result.error
    assert result.message is not None
    [document] = extract_documents(result.message)
    assert document.data == b""


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="\\XEFSTRbr.H0D9A^|&~ zé", max_size=40))
def test_fast_unescape_agrees_with_the_tokenizer(text: str) -> None:
    """Documents skip the character-by-character walk of `unescape`; the result must not
    differ, whatever the pairing of escape characters."""
    assert _unescape(text, DEFAULT_DELIMITERS) == unescape(text, DEFAULT_DELIMITERS)
