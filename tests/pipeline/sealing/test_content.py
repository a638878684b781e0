"""The content entity: a summary that says nothing about the patient, the HL7 file exactly
as sent, each document as its own attachment, canonical MIME throughout."""

from __future__ import annotations

import email
import re
from email import policy
from email.message import EmailMessage

from pipeline.hl7.documents import EmbeddedDocument
from pipeline.sealing.content import ResultSummary, build_content, summary_text
from tests.pipeline.sealing.helpers import (
    PATIENT_AND_VALUES,
    attachments,
    content_of,
    fixture_result,
    pdf_bytes,
    read_one,
    result_with_pdf,
)

SUMMARY = ResultSummary(
    sending_facility="LABO-BIO-CENTRE",
    sending_application="SIL-DEMO",
    control_id="LBC-2026-000101",
    message_type="ORU^R01",
    version="2.5",
    sent_at="20261128093000+0100",
    result_status="corrected",
    document_count=2,
)


def parse(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_summary_names_sender_control_id_status_and_documents() -> None:
    text = summary_text(SUMMARY)
    assert "LABO-BIO-CENTRE (SIL-DEMO)" in text
    assert "LBC-2026-000101" in text
    assert "corrected" in text
    assert "2 attached" in text
    assert "2026-11-28 09:30:00 +0100" in text
    assert "attached HL7 file LBC-2026-000101.hl7" in text


def test_summary_of_a_real_result_shows_no_patient_data_nor_values() -> None:
    result = fixture_result("fr_prt_idnps_utf8.hl7")
    assert result.facts is not None
    for value in PATIENT_AND_VALUES:  # the fixture does hold them, so the check can fail
        assert value.encode() in result.data
    text = summary_text(ResultSummary.from_facts(result.facts))
    for value in PATIENT_AND_VALUES:
        assert value not in text
    plain = parse(content_of(result)).get_body(("plain",))
    assert plain is not None
    shown = plain.get_content()
    assert "LBC-2026-000101" in shown
    for value in PATIENT_AND_VALUES:
        assert value not in shown


def test_summary_from_facts_counts_documents() -> None:
    result = fixture_result("fr_prt_idnps_utf8.hl7")
    assert result.facts is not None
    summary = ResultSummary.from_facts(result.facts)
    assert summary.document_count == 1
    assert summary.result_status == "final"
    assert summary.sending_facility == "LABO-BIO-CENTRE"


def test_line_breaks_in_hl7_values_cannot_add_lines_to_the_summary() -> None:
    sneaky = ResultSummary("LABO\nPatient: DUPONT", "SIL", "C-1", "ORU^R01", "2.5", "", "", 0)
    text = summary_text(sneaky)
    assert "\nPatient:" not in text
    assert "Documents:   none" in text


def test_content_is_multipart_mixed_summary_hl7_then_documents() -> None:
    pdf = pdf_bytes(5_000)
    result = read_one(result_with_pdf(pdf, control_id="MIX-1"))
    message = parse(content_of(result))
    assert message.get_content_type() == "multipart/mixed"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == [
        "text/plain",
        "application/hl7-v2",
        "application/pdf",
    ]
    assert parts[0].get_param("charset") == "utf-8"
    assert [part.get_filename() for part in parts[1:]] == ["MIX-1.hl7", "MIX-1-1.pdf"]
    assert all(part["Content-Transfer-Encoding"] == "base64" for part in parts[1:])
    assert all(part.get_content_disposition() == "attachment" for part in parts[1:])
    assert attachments(message)["MIX-1-1.pdf"] == ("application/pdf", pdf)
    assert attachments(message)["MIX-1.hl7"][1] == result.data


def test_content_has_crlf_line_ends_and_no_mime_version_inside() -> None:
    content = content_of(fixture_result("v23_local_codes_latin1.hl7"))
    assert re.search(rb"(?<!\r)\n", content) is None
    assert re.search(rb"\r(?!\n)", content) is None
    assert b"MIME-Version" not in content
    assert content.isascii()  # 7-bit: safe to sign, nothing for a relay to re-encode


def test_hl7_file_name_is_made_safe() -> None:
    content = build_content(b"MSH|^~\\&|\r", "utf-8", "../../etc/pass wd", SUMMARY, [])
    [part] = [p for p in parse(content).iter_attachments()]
    assert part.get_filename() == "etc_pass_wd.hl7"
    assert part.get_param("charset") == "UTF-8"


def test_text_document_declares_its_charset() -> None:
    document = EmbeddedDocument(
        "C-1-1.txt", "text/plain", "Créatinine".encode("latin-1"), "ISO-8859-1"
    )
    content = build_content(b"MSH|^~\\&|\r", "iso8859-1", "C-1", SUMMARY, [document])
    parts = list(parse(content).iter_attachments())
    assert parts[0].get_param("charset") == "ISO-8859-1"  # the HL7 file
    assert parts[1].get_filename() == "C-1-1.txt"
    assert parts[1].get_param("charset") == "ISO-8859-1"
    assert parts[1].get_payload(decode=True) == "Créatinine".encode("latin-1")
