"""What a recipient opens for an HPRIM result: the file as sent, named `.hpr`, and a
summary that says HPRIM (no patient data), through the same MIME writer as HL7."""

from __future__ import annotations

import email
from email import policy

from pipeline.hl7.documents import mime_charset
from pipeline.hprim.intake import read_hprim
from pipeline.sealing.content import HPRIM_EXTENSION, HPRIM_TYPE, ResultSummary, build_content
from tests.pipeline.hprim.builders import end, header, order, patient, result, sante


def test_the_hprim_bytes_are_the_main_part_unchanged() -> None:
    data = sante(header(), patient(name="HÉLÈNE~Zoé"), order(), result(), end(), end_with="\n")
    [found] = read_hprim(data, charsets=lambda laboratory: "ISO-8859-1")
    assert found.facts is not None
    content = build_content(
        found.data,
        mime_charset(found.codec),
        found.facts.control_id,
        ResultSummary.from_facts(found.facts),
        [],
        media_type=HPRIM_TYPE,
        extension=HPRIM_EXTENSION,
    )
    message = email.message_from_bytes(content, policy=policy.default)
    summary, attached = list(message.iter_parts())
    text = summary.get_content()
    assert "Message:     HPRIM Santé ORU H2.2" in text
    assert "attached HPRIM file RES0042.HPR-202611281015-1.hpr" in text
    assert "HÉLÈNE" not in text and "MARTIN" not in text
    assert attached.get_filename() == "RES0042.HPR-202611281015-1.hpr"
    assert attached.get_content_type() == "application/octet-stream"
    assert attached.get_param("charset") == "ISO-8859-1"
    assert attached.get_payload(decode=True) == data
