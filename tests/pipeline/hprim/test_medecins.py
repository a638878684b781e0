"""HPRIM Médecins reader: header, LAB blocks, RES lines, several reports, refusals."""

from __future__ import annotations

from pathlib import Path

from pipeline.hprim.errors import MalformedHprim, MissingEndRecord, UndecodableHprim
from pipeline.hprim.intake import read_hprim, sniff
from tests.pipeline.hprim.builders import CORPUS, medecins, medecins_report


def test_a_report_gives_sender_recipient_and_results() -> None:
    data = medecins(medecins_report())
    [found] = read_hprim(data)
    facts = found.facts
    assert facts is not None, found.error
    assert found.data == data and facts.format == "hprim-medecins"
    assert (facts.sender, facts.sending_application) == ("LAB01", "Laboratoire des Lilas")
    assert facts.control_id.startswith("D26-0042-") and len(facts.control_id) == 9 + 16
    [doctor] = facts.participants
    assert (doctor.id_type, doctor.id, doctor.name, doctor.roles, doctor.sources) == (
        "LOCAL",
        "DRDUPONT",
        "Dr Jean Dupont",
        ("receiver",),
        ("line 12",),
    )
    assert facts.orders[0].observations == 2 and facts.result_status == "final"
    assert [found.facts for found in read_hprim(data)] == [facts]  # stable control ID


def test_codes_not_in_a_10_column_field_end_at_the_first_blank() -> None:
    [found] = read_hprim(medecins(medecins_report(recipient="DRX Dr Xavier")))
    assert found.facts is not None
    assert [(p.id, p.name) for p in found.facts.participants] == [("DRX", "Dr Xavier")]


def test_several_reports_are_one_result_each() -> None:
    data = medecins(
        medecins_report("D1", "DRA        Dr A"), medecins_report("D2", "DRB        Dr B")
    )
    first, second = read_hprim(data)
    assert first.facts is not None and second.facts is not None
    assert first.facts.control_id.startswith("D1-") and second.facts.control_id.startswith("D2-")
    assert first.data + second.data == data
    assert [p.id for p in second.facts.participants] == ["DRB"]
    [again] = read_hprim(second.data)
    assert again.facts == second.facts


def test_a_report_without_finfichier_is_refused_as_truncated() -> None:
    [found] = read_hprim(medecins(medecins_report()[:-1]))
    assert isinstance(found.error, MissingEndRecord)
    assert found.claimed_sender == "LAB01" and found.claimed_control_id == "D26-0042"


def test_an_unclosed_lab_block_is_refused() -> None:
    report = medecins_report()
    report.remove("****FIN****")
    [found] = read_hprim(medecins(report))
    assert isinstance(found.error, MalformedHprim) and "not closed" in str(found.error)


def test_text_only_report_is_read_without_results() -> None:
    [found] = read_hprim(medecins(medecins_report(body=["Resultats normaux.", "****FIN****"])))
    assert found.facts is not None and found.facts.orders == ()


def test_the_corpus_fragment_without_header_is_refused_saying_why() -> None:
    data = Path(CORPUS, "hprimtool__hprim_medecins_tags_only.hpr").read_bytes()
    assert sniff(data) == "hprim-medecins"
    [found] = read_hprim(data)
    assert isinstance(found.error, MalformedHprim)
    assert str(found.error).startswith("line 1: the report starting on line 1 has 0 header")


def test_latin1_report_needs_the_laboratory_charset() -> None:
    report = medecins_report(body=["Hémoglobine glyquée normale.", "****FIN****"])
    data = medecins(report)
    [found] = read_hprim(data)
    assert isinstance(found.error, UndecodableHprim) and "line 13" in str(found.error)
    [found] = read_hprim(data, charsets=lambda lab: "ISO-8859-1" if lab == "LAB01" else None)
    assert found.facts is not None and found.codec == "iso8859-1"
    assert found.mime_charset == "ISO-8859-1"


def test_hl7_holding_a_marker_line_stays_hl7() -> None:
    assert sniff(b"MSH|^~\\&|A|B\r****FIN****\r") is None
    assert sniff(b"\x0bMSH|^~\\&|A|B\r****FIN****\r\x1c\r") is None
