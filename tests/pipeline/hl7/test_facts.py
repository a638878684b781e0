"""Routing facts: header, patient, orders, result status and embedded documents."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from pipeline.hl7.decode import DecodedMessage
from pipeline.hl7.facts import RoutingFacts, extract_facts
from pipeline.hl7.intake import read_results
from pipeline.hl7.parse import parse
from pipeline.identifiers import INS, Identifier
from tests.pipeline.hl7.builders import seg

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"
INS_AUTH = "ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO"


def msh(
    control: str = "F-1",
    app: str = "SIL",
    facility: str = "LABO",
    version: str = "2.5",
    processing: str = "P",
) -> str:
    return (
        f"MSH|^~\\&|{app}|{facility}|LABDISPATCH|DISPATCH-FAC|20261128093000||ORU^R01^ORU_R01"
        f"|{control}|{processing}|{version}"
    )


def obr(sequence: int = 1, status: str = "", **fields: str) -> str:
    values = {
        1: str(sequence),
        2: f"PL{sequence}",
        3: f"FI{sequence}",
        4: "GLU^Glucose^L",
        25: status,
    }
    values.update({int(key[1:]): value for key, value in fields.items()})
    return seg("OBR", values)


def obx(set_id: int, status: str, value_type: str = "NM", value: str = "5.2") -> str:
    return seg("OBX", {1: str(set_id), 2: value_type, 3: "GLU^Glucose^L", 5: value, 11: status})


def facts_of(*segments: str, header: str | None = None) -> RoutingFacts:
    text = "\r".join([header or msh(), *segments]) + "\r"
    return extract_facts(parse(DecodedMessage(1, text.encode(), text, "utf-8", "")))


def fixture_facts(name: str) -> list[RoutingFacts]:
    results = list(read_results((FIXTURES / name).read_bytes()))
    assert all(result.facts is not None for result in results), [r.error for r in results]
    return [result.facts for result in results if result.facts is not None]


PID = seg("PID", {3: f"248125612345678^^^{INS_AUTH}^INS~IPP9^^^LAB^PI", 5: "DUPONT^Jean"})


# --- header ----------------------------------------------------------------------------------


def test_header_facts_from_fixture() -> None:
    [facts] = fixture_facts("fr_prt_idnps_utf8.hl7")
    assert facts.control_id == "LBC-2026-000101"
    assert facts.sending_application == "SIL-DEMO"
    assert facts.sending_facility == "LABO-BIO-CENTRE"
    assert facts.sender == "LABO-BIO-CENTRE"
    assert facts.receiving_application == "LABDISPATCH"
    assert facts.message_type == "ORU^R01"
    assert facts.version == "2.5"
    assert facts.processing_id == "P"
    assert facts.sent_at == "20261128093000"


def test_sender_falls_back_to_sending_application() -> None:
    facts = facts_of(PID, obr(), header=msh(facility=""))
    assert facts.sending_facility == ""
    assert facts.sender == "SIL"


def test_sender_is_first_component_of_hd() -> None:
    facts = facts_of(PID, obr(), header=msh(facility="LABO-X^1.2.250.1.999^ISO"))
    assert facts.sender == "LABO-X"


def test_version_and_processing_id() -> None:
    facts = facts_of(PID, obr(), header=msh(version="2.3.1", processing="T"))
    assert (facts.version, facts.processing_id) == ("2.3.1", "T")


# --- patient ---------------------------------------------------------------------------------


def test_patient_ids_from_pid3_normalised() -> None:
    facts = facts_of(PID, obr())
    assert facts.patient_ids == (
        Identifier(INS, "248125612345678"),
        Identifier("PI", "IPP9"),
    )
    assert facts.patient_ids[0].authority == "ASIP-SANTE-INS-NIR"


def test_patient_ins_recognised_by_oid_without_type() -> None:
    pid = seg("PID", {3: "248125612345678^^^&1.2.250.1.213.1.4.8&ISO"})
    facts = facts_of(pid, obr())
    assert facts.patient_ids == (Identifier(INS, "248125612345678"),)


def test_no_pid_gives_no_patient_ids_and_a_warning() -> None:
    facts = facts_of(obr())
    assert facts.patient_ids == ()
    assert any("PID" in warning for warning in facts.warnings)


# --- orders ----------------------------------------------------------------------------------


def test_order_placer_filler_service() -> None:
    facts = facts_of(PID, obr(status="F"), obx(1, "F"), obx(2, "F"))
    [order] = facts.orders
    assert order.sequence == 1
    assert (order.placer, order.filler) == ("PL1", "FI1")
    assert order.service == "GLU^Glucose"
    assert order.observations == 2
    assert order.observation_statuses == ("final",)


def test_placer_and_filler_fall_back_to_orc() -> None:
    orc = seg("ORC", {1: "RE", 2: "ORC-PL^CAB", 3: "ORC-FI^LAB"})
    facts = facts_of(PID, orc, obr(o2="", o3=""), obx(1, "F"))
    [order] = facts.orders
    assert (order.placer, order.filler) == ("ORC-PL", "ORC-FI")


def test_service_without_text_is_the_code() -> None:
    facts = facts_of(PID, obr(o4="GLU"))
    assert facts.orders[0].service == "GLU"


def test_fixture_order() -> None:
    [facts] = fixture_facts("fr_prt_idnps_utf8.hl7")
    [order] = facts.orders
    assert order.placer == "CMD-88812"
    assert order.filler == "LBC-88812"
    assert order.service == "24326-1^Ionogramme sanguin"
    assert order.observations == 3


def test_several_obr_groups_are_separate_orders() -> None:
    facts = facts_of(
        PID,
        seg("ORC", {1: "RE", 2: "X1"}),
        obr(1, "F"),
        obx(1, "F"),
        obr(2, "P"),
        obx(1, "P"),
        obx(2, "P"),
    )
    assert [(o.sequence, o.placer, o.status, o.observations) for o in facts.orders] == [
        (1, "PL1", "final", 1),
        (2, "PL2", "preliminary", 2),
    ]


# --- result status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "word"),
    [("F", "final"), ("P", "preliminary"), ("C", "corrected"), ("X", "cancelled")],
)
def test_obr25_status_words(code: str, word: str) -> None:
    facts = facts_of(PID, obr(status=code), obx(1, code))
    assert facts.orders[0].status == word
    assert facts.result_status == word


def test_cancel_with_deleted_observations_is_deleted() -> None:
    facts = facts_of(PID, seg("ORC", {1: "CA"}), obr(status="F"), obx(1, "D"), obx(2, "F"))
    assert facts.orders[0].status == "deleted"
    assert facts.result_status == "deleted"


def test_deleted_cancel_fixture() -> None:
    [facts] = fixture_facts("deleted_cancel.hl7")
    assert facts.result_status == "deleted"


def test_all_observations_deleted_is_deleted_without_cancel() -> None:
    facts = facts_of(PID, seg("ORC", {1: "RE"}), obr(status="F"), obx(1, "D"), obx(2, "D"))
    assert facts.result_status == "deleted"


def test_one_deleted_observation_without_cancel_keeps_obr25() -> None:
    facts = facts_of(PID, seg("ORC", {1: "RE"}), obr(status="F"), obx(1, "D"), obx(2, "F"))
    assert facts.result_status == "final"


def test_empty_obr25_falls_back_to_obx11() -> None:
    assert facts_of(PID, obr(), obx(1, "F"), obx(2, "F")).result_status == "final"
    assert facts_of(PID, obr(), obx(1, "P"), obx(2, "P")).result_status == "preliminary"
    assert facts_of(PID, obr(), obx(1, "F"), obx(2, "C")).result_status == "corrected"


def test_no_status_anywhere_is_empty() -> None:
    facts = facts_of(PID, obr(), obx(1, ""))
    assert facts.orders[0].status == ""
    assert facts.result_status == ""


def test_corrected_order_makes_the_message_corrected() -> None:
    facts = facts_of(PID, obr(1, "F"), obx(1, "F"), obr(2, "C"), obx(1, "C"), obr(3, "P"))
    assert [o.status for o in facts.orders] == ["final", "corrected", "preliminary"]
    assert facts.result_status == "corrected"


def test_deleted_order_outranks_corrected() -> None:
    facts = facts_of(PID, obr(1, "C"), obx(1, "C"), obr(2, "F"), obx(1, "D"))
    assert facts.result_status == "deleted"


def test_preliminary_outranks_final() -> None:
    facts = facts_of(PID, obr(1, "F"), obr(2, "P"))
    assert facts.result_status == "preliminary"


def test_batch_fixture_statuses() -> None:
    assert [f.result_status for f in fixture_facts("batch_fhs_bhs.hl7")] == [
        "corrected",
        "preliminary",
    ]


def test_unknown_obr25_code_warns_naming_table_0123() -> None:
    facts = facts_of(PID, obr(status="Q"), obx(1, "F"))
    assert any("0123" in w and "OBR" in w and "'Q'" in w for w in facts.warnings)


def test_unknown_obx11_code_warns_naming_table_0085() -> None:
    facts = facts_of(PID, obr(status="F"), obx(1, "Q"))
    assert any("0085" in w and "OBX" in w for w in facts.warnings)


def test_known_codes_do_not_warn() -> None:
    facts = facts_of(PID, obr(status="F"), obx(1, "F"))
    assert facts.warnings == ()


# --- embedded documents ----------------------------------------------------------------------


def test_ed_observation_is_a_pdf_document_with_decoded_size() -> None:
    payload = b"%PDF-1.4\n" + bytes(range(256)) + b"%%EOF\n"  # 271 bytes: ends "=="
    encoded = base64.b64encode(payload).decode()
    assert encoded.endswith("==")
    ed = f"^APPLICATION^PDF^Base64^{encoded}"
    facts = facts_of(PID, obr(status="F"), obx(1, "F"), obx(2, "F", "ED", ed))
    [document] = facts.documents
    assert document.mime_type == "application/pdf"
    assert document.encoding == "Base64"
    assert document.size == len(payload)
    assert document.set_id == "2"
    assert document.order == 1
    assert document.code == "GLU"


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 100])
def test_base64_decoded_size_for_each_padding(length: int) -> None:
    encoded = base64.b64encode(b"x" * length).decode()
    facts = facts_of(PID, obr(), obx(1, "F", "ED", f"^APPLICATION^PDF^Base64^{encoded}"))
    assert facts.documents[0].size == length


def test_fixture_pdf_size() -> None:
    [facts] = fixture_facts("fr_prt_idnps_utf8.hl7")
    [document] = facts.documents
    payload = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="
    assert document.size == len(base64.b64decode(payload)) == 52
    assert document.code == "11502-2"


def test_document_in_second_order_belongs_to_it() -> None:
    ed = "^TEXT^XML^A^<a/>"
    facts = facts_of(PID, obr(1), obx(1, "F"), obr(2), obx(1, "F", "ED", ed))
    [document] = facts.documents
    assert document.order == 2
    assert document.mime_type == "text/xml"
    assert document.size == 4


def test_unknown_ed_type_is_built_from_type_and_subtype() -> None:
    facts = facts_of(PID, obr(), obx(1, "F", "ED", "^AUDIO^OGG^Base64^AAAA"))
    assert facts.documents[0].mime_type == "audio/ogg"
