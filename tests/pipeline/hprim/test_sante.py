"""HPRIM Santé reader: every record type and the edge cases, from the specification."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.hprim.errors import (
    CountMismatch,
    MalformedHprim,
    MissingEndRecord,
    MissingHprimField,
    UndecodableHprim,
    UnsupportedHprim,
    UnsupportedHprimVersion,
)
from pipeline.hprim.intake import HprimResult, read_hprim
from tests.pipeline.hprim.builders import (
    CORPUS,
    end,
    header,
    order,
    patient,
    result,
    sante,
    simple,
)


def read(data: bytes, **kwargs: object) -> list[HprimResult]:
    return list(read_hprim(data, **kwargs))  # type: ignore[arg-type]


def one(data: bytes, **kwargs: object) -> HprimResult:
    [found] = read(data, **kwargs)
    assert found.error is None, found.error
    assert found.facts is not None
    return found


def refused(data: bytes, **kwargs: object) -> HprimResult:
    [found] = read(data, **kwargs)
    assert found.error is not None and found.facts is None
    return found


def test_libhprim_corpus_file_h21_joins_the_prescriber_continued_on_an_a_record() -> None:
    data = Path(CORPUS, "libhprim__hprim_sante_oru_h2.1.hpr").read_bytes()
    found = one(data)
    facts = found.facts
    assert facts is not None
    assert found.data == data  # one patient: recorded and delivered as sent
    assert (facts.sender, facts.sending_application) == ("PO", "LABM")
    assert facts.control_id == "Test1.HPR-201204292059-1"
    assert (facts.version, facts.format, facts.result_status) == ("H2.1", "hprim-sante", "final")
    prescriber, receiver = facts.participants
    assert (prescriber.id, prescriber.name, prescriber.roles) == (
        "PILO",
        "DR PITO OLIV",
        ("ordering",),
    )
    assert (receiver.id, receiver.kind, receiver.roles) == ("HPRIM", "organisation", ("receiver",))
    assert facts.orders[0].observations == 3
    assert any("AL213202.j1" in warning for warning in facts.warnings)  # FIC: not inside


def test_instamed_corpus_file_h22_cr_only_utf8_unit() -> None:
    found = one(Path(CORPUS, "instamed__hprim_sante_oru_h2.2.hpr").read_bytes())
    facts = found.facts
    assert facts is not None
    assert (facts.sender, facts.control_id, facts.version) == (
        "001",
        "0.HPR-201301011200-1",
        "H2.2",
    )
    assert found.codec == "utf-8" and any("UTF-8" in w for w in facts.warnings)
    assert [p.roles for p in facts.participants] == [("ordering",), ("receiver",)]


@pytest.mark.parametrize("version", ["H2.0~C", "H2.1~C", "H2.2~L", "H2.3", "H2.4~C", "2.4"])
def test_versions_h20_to_h24_are_read(version: str) -> None:
    facts = one(sante(*simple(f13=version))).facts
    assert facts is not None and facts.version == "H2." + version.split("~")[0][-1]


def test_other_versions_are_refused_at_h13() -> None:
    error = refused(sante(*simple(f13="H3.0"))).error
    assert isinstance(error, UnsupportedHprimVersion)
    assert str(error).startswith("line 1 (H record), field 13: H-13 version 'H3.0'")


def test_context_other_than_results_is_refused() -> None:
    error = refused(sante(*simple(f7="ADM"))).error
    assert isinstance(error, UnsupportedHprim) and error.location is not None
    assert error.location.field == 7


def test_sender_is_required() -> None:
    error = refused(sante(*simple(f5=""))).error
    assert isinstance(error, MissingHprimField) and "H-5" in str(error)


def test_all_record_types_with_comments_and_continuations() -> None:
    lines = [
        header(),
        patient(doctors="MEDT~DR MEDECIN TRAITANT~L"),
        "C|1|P|Patient a jeun",
        "OBR|1||D1~E1|GLY~Glycemie~L||||||||||||DUPONT~DR DUP",
        "A|ONT JEAN~L|||||||||F",
        "C|1|L|Prelevement hemolyse",
        result("1"),
        "C|1|L|Controle conseille",
        result("2", status="P"),
        end("1", "10"),
    ]
    facts = one(sante(*lines)).facts
    assert facts is not None
    ordering, copy, receiver = facts.participants
    assert (ordering.id, ordering.name, ordering.sources) == (
        "DUPONT",
        "DR DUPONT JEAN",
        ("OBR-17",),
    )
    assert (copy.id, copy.roles, copy.sources) == ("MEDT", ("copy_to",), ("P-14",))
    assert receiver.roles == ("receiver",)
    assert facts.orders[0].observation_statuses == ("final", "preliminary")
    assert facts.result_status == "final"  # OBR-26 says F


def test_the_same_doctor_named_twice_is_one_recipient_with_both_roles() -> None:
    lines = [header(), patient(doctors="DUPONT~DR DUPONT JEAN~L"), order(), result(), end()]
    facts = one(sante(*lines)).facts
    assert facts is not None
    assert facts.participants[0].roles == ("ordering", "copy_to")


def test_declared_delimiters_are_used_not_assumed() -> None:
    # Repetition and component swapped back to the HL7 habit, declared so in the H record.
    lines = [
        "H!^~\\&!F1!!LAB01^Lab!!ORU!!!CLIN^Clinique!!P!H2.2^C!202611281015",
        "P!1!IPP1",
        "OBR!1!!D1!GLY^Glycemie!!!!!!!!!!!!DUPONT^DR DUPONT~MARTIN^DR MARTIN",
        "OBX!1!NM!GLY^Glycemie!!5.2!!!!!!F",
        "L!1",
    ]
    facts = one(sante(*lines)).facts
    assert facts is not None
    assert facts.sender == "LAB01"
    assert [(p.id, p.name) for p in facts.participants][:2] == [
        ("DUPONT", "DR DUPONT"),
        ("MARTIN", "DR MARTIN"),
    ]


def test_escapes_are_read() -> None:
    lines = [header(), patient(), order(prescriber="D1~DR A\\S\\B \\F\\ C"), result(), end()]
    facts = one(sante(*lines)).facts
    assert facts is not None and facts.participants[0].name == "DR A~B | C"


def test_mixed_line_ends_are_read() -> None:
    records = simple()
    data = (
        records[0]
        + "\r\n"
        + records[1]
        + "\n"
        + records[2]
        + "\r"
        + records[3]
        + "\r\n"
        + records[4]
    ).encode()
    facts = one(data).facts
    assert facts is not None and facts.orders[0].observations == 1


def test_missing_end_record_is_refused_as_truncated() -> None:
    error = refused(sante(*simple()[:-1])).error
    assert isinstance(error, MissingEndRecord)
    assert "line 5" in str(error) and "no L (end) record" in str(error)


def test_wrong_patient_count_is_refused_at_l4() -> None:
    error = refused(sante(*simple()[:-1], end("2"))).error
    assert isinstance(error, CountMismatch)
    assert str(error).startswith("line 5 (L record), field 4: L-4 says 2")


def test_line_count_is_checked_when_given() -> None:
    one(sante(*simple()[:-1], end("1", "5")))
    error = refused(sante(*simple()[:-1], end("1", "7"))).error
    assert isinstance(error, CountMismatch) and error.location is not None
    assert error.location.field == 5


def test_a_wrapped_line_is_refused_with_its_line_number() -> None:
    lines = simple()
    lines.insert(3, "suite du commentaire")
    error = refused(sante(*lines)).error
    assert isinstance(error, MalformedHprim) and str(error).startswith("line 4 does not start")


def test_result_before_any_request_is_refused() -> None:
    error = refused(sante(header(), patient(), result(), order(), end())).error
    assert isinstance(error, MalformedHprim) and "OBX" in str(error)


def test_records_after_the_end_are_refused() -> None:
    error = refused(sante(*simple(), patient("2"))).error
    assert isinstance(error, MalformedHprim) and "after the L" in str(error)


def test_several_patients_become_one_result_each_without_the_others_data() -> None:
    lines = [
        header(),
        patient("1", "MARTIN~Jeanne"),
        order("1", prescriber="DUPONT~DR DUPONT~L"),
        result("1"),
        patient("2", "BERNARD~Paul"),
        order("1", prescriber="LEROY~DR LEROY~L"),
        result("1"),
        end("2", "8"),
    ]
    data = sante(*lines, end_with="\r\n")
    first, second = read(data)
    assert first.facts is not None and second.facts is not None
    assert first.facts.control_id == "RES0042.HPR-202611281015-1"
    assert second.facts.control_id == "RES0042.HPR-202611281015-2"
    assert b"BERNARD" not in first.data and b"MARTIN" not in second.data
    assert [p.id for p in second.facts.participants] == ["LEROY", "CLIN"]
    assert second.data.endswith(b"L|1||1|5\r\n")
    # Each result re-reads (at routing and sealing) to the very same facts.
    for part in (first, second):
        again = one(part.data)
        assert again.data == part.data and again.facts == part.facts


def test_several_patients_need_distinct_sequence_numbers() -> None:
    data = sante(header(), patient("1"), order(), result(), patient("1"), order(), result(), end())
    error = refused(data).error
    assert isinstance(error, MalformedHprim) and "line 2 too" in str(error)


def test_latin1_without_a_configured_charset_is_refused_at_its_field() -> None:
    data = sante(header(), patient(name="HÉLÈNE~Zoé"), order(), result(), end())
    error = refused(data).error
    assert isinstance(error, UndecodableHprim)
    assert str(error).startswith("line 2 (P record), field 6: byte 0xC9")
    assert "charset" in str(error)


@pytest.mark.parametrize(
    ("charset", "text"), [("ISO-8859-1", "DR HÉLÈNE"), ("windows-1252", "DR ŒUF €")]
)
def test_the_laboratory_charset_reads_what_the_file_does_not_declare(
    charset: str, text: str
) -> None:
    data = (
        sante(header(), patient(), order(prescriber="D1~" + text), result(), end())
        if charset == "ISO-8859-1"
        else (
            "\r".join([header(), patient(), order(prescriber="D1~" + text), result(), end()]) + "\r"
        ).encode("cp1252")
    )
    asked: list[str] = []

    def charsets(laboratory: str) -> str:
        asked.append(laboratory)
        return charset

    found = one(data, charsets=charsets)
    assert asked == ["LAB01"]
    assert found.facts is not None and found.facts.participants[0].name == text


def test_processing_mode_and_empty_fields() -> None:
    facts = one(sante(*simple(f12="T"))).facts
    assert facts is not None and facts.processing_id == "T"
    facts = one(sante(*simple(f12="", f7=""))).facts
    assert facts is not None and facts.processing_id == "P"
    assert len(facts.warnings) == 2


def test_without_file_id_and_date_the_control_id_is_the_content_hash() -> None:
    data = sante(*simple(f3="", f14=""))
    facts = one(data).facts
    assert facts is not None and len(facts.control_id) == 18 and facts.control_id.endswith("-1")
    assert one(data).facts == facts
