"""Conformance over ../shared/corpus: real messages written by others.

Each well-formed ORU^R01 must yield exactly the recipients listed here (worked out by hand
from the file), each malformed or foreign file a specific error, and nothing may raise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.hl7 import errors
from pipeline.hl7.intake import IntakeResult, read_results
from tests.support import CORPUS

NO_ID = "no identifier"

# file -> (result status, [(id_type, id, name, roles)]) for each well-formed ORU^R01.
EXPECTED_RECIPIENTS: dict[
    str, tuple[str, list[tuple[str | None, str | None, str, tuple[str, ...]]]]
] = {
    "ans__oru_cr_bio_init_v2.1.hl7": (
        "final",
        [
            (None, None, "BLUE Eva", ("ordering",)),
            ("RPPS", "01234567897", "Hoda Adam", ("copy_to",)),
            ("INS", "279035121518989", "PAT-TROIS DOMINIQUE", ("patient",)),
        ],
    ),
    "ans__oru_cr_bio_del_v2.1.hl7": (
        "deleted",
        [
            (None, None, "BLUE Eva", ("ordering",)),
            ("RPPS", "01234567897", "Hoda Adam", ("copy_to",)),
            ("INS", "279035121518989", "PAT-TROIS DOMINIQUE", ("patient",)),
        ],
    ),
    "ans__oru_cr_bio_segur_n3_b64.hl7": (
        "final",
        [
            (None, None, "BLUE Eva", ("ordering",)),
            ("RPPS", "01234567897", "Hoda Adam", ("copy_to",)),
            ("INS", "27707279035121518989", "PAT-TROIS DOMINIQUE", ("patient",)),
        ],
    ),
    "ans__oru_cr_bio_v1.2.hl7": ("final", [(None, None, "NEPH", ("ordering",))]),
    "hapi__oru_r01_hnam_radnet_no_ordering_provider.hl7": ("pending", []),
    "hapi__oru_r01_phcn_ultra_ft_escapes.hl7": (
        "final",
        [("PROVIDER NUM", "0129296H", "BRAUN GARY", ("referring", "ordering"))],
    ),
    "msfhirconv__oru_r01_elr_kitchen_sink.hl7": (
        "final",
        [("BA", "C006", "Woolfson Kathleen", ("referring",))],
    ),
    "msfhirconv__oru_r01_lab1_mixed_status.hl7": (
        "preliminary",
        [(None, None, "URO", ("ordering",))],
    ),
    "msfhirconv__oru_r01_lab2.hl7": ("final", [(None, None, "URO", ("ordering",))]),
    "msfhirconv__oru_r01_rmgead_glucose_hl7spec.hl7": (
        "final",
        [("LOCAL", "555-55-5555", "PRIMARY PATRICIA P", ("ordering",))],
    ),
    "pythonhl7__oru_r01_glucose_hl7spec_obr_shifted.hl7": ("final", []),
    "nhapi__oru_r01_olis_cholesterol_escapes.hl7": (
        "final",
        [("LOCAL", "OLIST", "BLAKE DONALD", ("ordering",))],
    ),
    "nhapi__oru_r01_xpress_ft.hl7": (
        "final",
        [("LOCAL", "00002", "eProvider Electronic", ("ordering",))],
    ),
    "nodehl7__oru_r01_cerner_en.hl7": ("final", [(None, None, "Harrison Kyle", ("ordering",))]),
    "nodehl7__oru_r01_nist_elr_lead.hl7": (
        "final",
        [("LOCAL", "1234", "Admit Alan", ("ordering",))],
    ),
    "nodehl7__oru_r01_realm_cj_joeslab.hl7": (
        "final",
        [("LOCAL", "1234", "Admit Alan", ("ordering",))],
    ),
}

# file -> the error each of its messages must give.
EXPECTED_ERRORS: dict[str, type[errors.IntakeError]] = {
    "hapi__MALFORMED_bar_p01_msh2_3chars.hl7": errors.BadDelimiters,
    "hapi__MALFORMED_oru_invalid_segment_I.hl7": errors.UnknownSegment,
    "nhapi__MALFORMED_fuzz_1.hl7": errors.BadDelimiters,
    "nhapi__MALFORMED_fuzz_2.hl7": errors.UnsupportedMessageType,
    "nhapi__MALFORMED_fuzz_4.hl7": errors.BadDelimiters,
    "nodehl7__MALFORMED_orm_o01_wrapped_line.hl7": errors.UnsupportedMessageType,
    "ans__ack_r01.hl7": errors.UnsupportedMessageType,
    "ans__adt_a01_pam_fr_sgl.hl7": errors.UnsupportedMessageType,
    "ans__mdm_t02_cr_radio_v2.0.hl7": errors.UnsupportedMessageType,
    "anstlr__orm_o01_demande_imagerie.hl7": errors.UnsupportedMessageType,
    "hapi__erp_z99_olis_chem_report.hl7": errors.UnsupportedMessageType,
    "hapi__orm_o01_dmcoe_radiology.hl7": errors.UnsupportedMessageType,
    "hl7apy__adt_a01_referring.hl7": errors.UnsupportedMessageType,
    "hl7apy__oml_o33_lab_order.hl7": errors.UnsupportedMessageType,
    "msfhirconv__adt_a01_01_v28.hl7": errors.UnsupportedMessageType,
    "msfhirconv__orm_o01_01.hl7": errors.UnsupportedMessageType,
    "pythonhl7__adt_a01_hnam.hl7": errors.UnsupportedMessageType,
    "pythonhl7__file_fhs_bhs_2msgs.hl7": errors.UnsupportedMessageType,
    "hprimtool__hprim_medecins_tags_only.hpr": errors.NotHL7,
    "instamed__hprim_sante_oru_h2.2.hpr": errors.NotHL7,
    "libhprim__hprim_sante_oru_h2.1.hpr": errors.NotHL7,
}


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.fail(
            f"corpus folder {CORPUS} not found: labdispatch's conformance suite reads"
            " ../shared/corpus; set LABDISPATCH_CORPUS_DIR to its location"
        )
    return sorted(path for path in CORPUS.iterdir() if path.suffix in (".hl7", ".hpr"))


def _read(name: str) -> list[IntakeResult]:
    return list(read_results((CORPUS / name).read_bytes()))


def test_every_corpus_file_has_an_expectation() -> None:
    names = {path.name for path in _corpus_files()}
    assert names == set(EXPECTED_RECIPIENTS) | set(EXPECTED_ERRORS)


@pytest.mark.parametrize("name", sorted(EXPECTED_RECIPIENTS))
def test_well_formed_result_yields_its_recipients(name: str) -> None:
    results = _read(name)
    assert len(results) == 1
    result = results[0]
    assert result.error is None, str(result.error)
    assert result.facts is not None
    status, expected = EXPECTED_RECIPIENTS[name]
    assert result.facts.result_status == status
    got = [(p.id_type, p.id, p.name, p.roles) for p in result.facts.participants]
    assert got == expected
    for participant in result.facts.participants:
        if participant.identifier is None:
            assert any(NO_ID in problem for problem in participant.problems)


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_malformed_or_foreign_file_gets_a_specific_error(name: str) -> None:
    results = _read(name)
    assert results, "every file yields at least one verdict"
    for result in results:
        assert result.facts is None
        assert type(result.error) is EXPECTED_ERRORS[name]
        assert result.error.reason
        ack = result.ack()
        assert ack.startswith("MSH")
        assert f"|{result.error.ack_code}|" in ack.split("\r")[1] + "|"


def test_batch_file_yields_one_verdict_per_message() -> None:
    results = _read("pythonhl7__file_fhs_bhs_2msgs.hl7")
    assert [result.index for result in results] == [1, 2, 3]


def test_ans_results_carry_their_embedded_cda_documents() -> None:
    (result,) = _read("ans__oru_cr_bio_segur_n3_b64.hl7")
    assert result.facts is not None
    sizes = [document.size for document in result.facts.documents]
    assert sizes and max(sizes) > 200_000  # the ~290 KB base64 CDA, decoded
    assert {document.mime_type for document in result.facts.documents} >= {"text/xml"}


def test_recipient_address_comes_from_prt_15() -> None:
    (result,) = _read("ans__oru_cr_bio_init_v2.1.hl7")
    assert result.facts is not None
    addresses = {p.id: p.address for p in result.facts.participants}
    assert addresses["01234567897"] == "adam.hoda@test-ci-sis.mssante.fr"
    assert addresses["279035121518989"] == "279035121518989@patient.mssante.fr"


def test_no_corpus_file_raises() -> None:
    for path in _corpus_files():
        for result in read_results(path.read_bytes()):
            assert result.ok or isinstance(result.error, errors.IntakeError)
            result.ack()


@pytest.mark.parametrize(
    ("name", "format_name"),
    [
        ("libhprim__hprim_sante_oru_h2.1.hpr", "HPRIM Santé"),
        ("instamed__hprim_sante_oru_h2.2.hpr", "HPRIM Santé"),
        ("hprimtool__hprim_medecins_tags_only.hpr", "HPRIM Médecins"),
    ],
)
def test_hprim_files_are_named_as_hprim(name: str, format_name: str) -> None:
    (result,) = _read(name)
    assert result.error is not None
    assert format_name in result.error.reason
