"""Who a result names as recipients: sources, identifiers, merging, PRT participations."""

from __future__ import annotations

from pathlib import Path

from pipeline.hl7.decode import DecodedMessage
from pipeline.hl7.facts import extract_facts
from pipeline.hl7.intake import read_results
from pipeline.hl7.parse import parse
from pipeline.hl7.participants import (
    COPY_TO,
    NO_IDENTIFIER,
    ORDERING,
    ORGANISATION,
    PATIENT,
    PATIENT_KIND,
    PERSON,
    REFERRING,
    Participant,
    extract_participants,
)
from pipeline.identifiers import ADELI, FINESS, INS, LOCAL, RPPS, Identifier
from tests.pipeline.hl7.builders import seg

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"

IDNPS = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"
MARTIN = f"810001234567^MARTIN^Sophie^^^DR^^^{IDNPS}^D^^^IDNPS"
LEROY = f"0751234567^LEROY^Paul^^^DR^^^{IDNPS}^D^^^IDNPS"
PATIENT_INS = "248125612345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"


def message_text(*segments: str, pid3: str = PATIENT_INS, version: str = "2.5") -> str:
    msh = (
        "MSH|^~\\&|APP|LAB|LABDISPATCH|LABDISPATCH|20261128093000||ORU^R01^ORU_R01|P-1|P|"
        + version
        + "||||||UNICODE UTF-8"
    )
    return "\r".join([msh, seg("PID", {3: pid3, 5: "DUPONT^Hélène"}), *segments]) + "\r"


def participants_of(*segments: str, pid3: str = PATIENT_INS) -> tuple[Participant, ...]:
    text = message_text(*segments, pid3=pid3)
    decoded = DecodedMessage(1, text.encode(), text, "utf-8", "UNICODE UTF-8")
    return extract_facts(parse(decoded)).participants


def obr(fields: dict[int, str], sequence: int = 1) -> str:
    return seg("OBR", {1: str(sequence), 2: f"A{sequence}", 4: "GLU^Glucose", **fields})


def prt(role: str, fields: dict[int, str]) -> str:
    return seg("PRT", {2: "UC", 4: f"{role}^^participation", **fields})


def by_id(participants: tuple[Participant, ...]) -> dict[str | None, Participant]:
    return {p.id: p for p in participants}


# --- ordering provider and identifiers -------------------------------------------------------


def test_orc12_and_obr16_same_idnps_person_is_one_recipient() -> None:
    found = participants_of(seg("ORC", {1: "RE", 12: MARTIN}), obr({16: MARTIN}))
    assert len(found) == 1
    [martin] = found
    assert martin.sources == ("ORC-12", "OBR-16")
    assert martin.roles == (ORDERING,)
    assert martin.kind == PERSON
    assert martin.name == "MARTIN Sophie"


def test_idnps_with_8_prefix_becomes_rpps() -> None:
    [martin] = participants_of(obr({16: MARTIN}))
    assert martin.identifier == Identifier(RPPS, "10001234567")
    assert martin.problems == ()


def test_idnps_with_0_prefix_becomes_adeli() -> None:
    [leroy] = participants_of(obr({16: LEROY}))
    assert leroy.identifier == Identifier(ADELI, "751234567")


def test_idnps_typed_as_rpps_becomes_11_digit_rpps() -> None:
    [doctor] = participants_of(obr({16: "810001234567^MARTIN^Sophie^^^^^^^^^^RPPS"}))
    assert doctor.identifier == Identifier(RPPS, "10001234567")
    assert len(doctor.id or "") == 11


def test_stray_spaces_in_authority_are_trimmed() -> None:
    spaced = MARTIN.replace("ASIP-SANTE-PS", "ASIP-SANTE- PS")
    [martin] = participants_of(seg("ORC", {1: "RE", 12: MARTIN}), obr({16: spaced}))
    assert martin.identifier is not None
    assert martin.identifier.authority == "ASIP-SANTE-PS"
    assert martin.sources == ("ORC-12", "OBR-16")


def test_untyped_idnps_recognised_by_authority_only() -> None:
    [martin] = participants_of(obr({16: f"810001234567^MARTIN^Sophie^^^^^^{IDNPS}"}))
    assert martin.identifier == Identifier(RPPS, "10001234567")


# --- copies and referring --------------------------------------------------------------------


def test_obr28_repetitions_are_copy_to_recipients() -> None:
    found = participants_of(obr({28: f"{LEROY}~810009876543^BERNARD^Luc^^^^^^{IDNPS}"}))
    assert [(p.id_type, p.id) for p in found] == [(ADELI, "751234567"), (RPPS, "10009876543")]
    assert all(p.roles == (COPY_TO,) and p.sources == ("OBR-28",) for p in found)


def test_pv1_8_is_referring() -> None:
    [doctor] = participants_of(seg("PV1", {1: "1", 2: "O", 8: LEROY}), obr({}))
    assert doctor.roles == (REFERRING,)
    assert doctor.sources == ("PV1-8",)
    assert doctor.id_type == ADELI


def test_same_person_in_several_roles_keeps_all_roles() -> None:
    found = participants_of(seg("PV1", {1: "1", 8: MARTIN}), obr({16: MARTIN, 28: MARTIN}))
    [martin] = found
    assert martin.roles == (REFERRING, ORDERING, COPY_TO)
    assert martin.sources == ("PV1-8", "OBR-16", "OBR-28")


# --- PRT participations ----------------------------------------------------------------------


def test_prt_rct_person_with_address_is_copy_to() -> None:
    found = participants_of(
        obr({}),
        prt(
            "RCT",
            {
                5: f"810009876543^BERNARD^Luc^^^DR^^^{IDNPS}^D^^^IDNPS",
                15: "^^X.400^luc.bernard@bernard.mssante.example",
            },
        ),
    )
    [bernard] = found
    assert bernard.identifier == Identifier(RPPS, "10009876543")
    assert bernard.roles == (COPY_TO,)
    assert bernard.kind == PERSON
    assert bernard.sources == ("PRT-5",)
    assert bernard.address == "luc.bernard@bernard.mssante.example"


def test_prt_rct_naming_the_patient_is_the_patient() -> None:
    found = participants_of(
        obr({}),
        prt(
            "RCT",
            {
                5: "248125612345678^DUPONT^Hélène^^^^^^1.2.250.1.213.1.4.8^L^^^INS",
                15: "^^X.400^248125612345678@patient.mssante.example",
            },
        ),
    )
    [patient] = found
    assert patient.identifier == Identifier(INS, "248125612345678")
    assert patient.kind == PATIENT_KIND
    assert patient.roles == (PATIENT,)
    assert patient.address == "248125612345678@patient.mssante.example"


def test_prt_reply_and_sb_are_not_recipients() -> None:
    found = participants_of(
        obr({}),
        prt("REPLY", {15: "^^X.400^secretariat@labo.mssante.example"}),
        prt("SB", {5: f"810009876543^BERNARD^Luc^^^^^^{IDNPS}"}),
    )
    assert found == ()


def test_prt_rct_organisation_in_prt8_is_finess_recipient() -> None:
    xon = "LABO DES ALPES^^^^^ASIP-SANTE-ST&1.2.250.1.71.4.2.2&ISO^FINEG^^^1120459876"
    found = participants_of(obr({}), prt("RCT", {8: xon, 15: "^^X.400^labo@alpes.mssante.example"}))
    [labo] = found
    assert labo.kind == ORGANISATION
    assert labo.identifier == Identifier(FINESS, "120459876")
    assert labo.name == "LABO DES ALPES"
    assert labo.sources == ("PRT-8",)
    assert labo.roles == (COPY_TO,)
    assert labo.address == "labo@alpes.mssante.example"


def test_prt_rct_with_address_only_has_no_identifier() -> None:
    found = participants_of(obr({}), prt("RCT", {15: "^^X.400^someone@example.org"}))
    [nobody] = found
    assert nobody.identifier is None
    assert nobody.address == "someone@example.org"
    assert NO_IDENTIFIER in nobody.problems


def test_fixture_participants() -> None:
    [result] = read_results((FIXTURES / "fr_prt_idnps_utf8.hl7").read_bytes())
    assert result.facts is not None
    found = {(p.id_type, p.id): p for p in result.facts.participants}
    assert set(found) == {
        (RPPS, "10001234567"),
        (ADELI, "751234567"),
        (RPPS, "10009876543"),
        (INS, "248125612345678"),
    }
    assert found[(RPPS, "10001234567")].sources == ("ORC-12", "OBR-16")
    assert found[(INS, "248125612345678")].kind == PATIENT_KIND


def test_prt_op_is_ordering_and_merges_with_orc12() -> None:
    found = participants_of(
        seg("ORC", {1: "RE", 12: MARTIN}),
        obr({}),
        prt("OP", {5: MARTIN, 15: "^^X.400^sophie.martin@martin.mssante.example"}),
    )
    [martin] = found
    assert martin.roles == (ORDERING,)
    assert martin.sources == ("ORC-12", "PRT-5")
    assert martin.address == "sophie.martin@martin.mssante.example"


def test_prt_address_in_a_later_prt15_repetition_is_found() -> None:
    # PRT-15 repeats: a phone number first must not hide the secure-messaging address.
    found = participants_of(
        obr({}),
        prt(
            "RCT",
            {
                5: f"810009876543^BERNARD^Luc^^^^^^{IDNPS}",
                15: "^PRN^PH^^^^0123456789~^^X.400^luc.bernard@bernard.mssante.example",
            },
        ),
    )
    [bernard] = found
    assert bernard.address == "luc.bernard@bernard.mssante.example"


def test_v23_local_codes_fixture_participants() -> None:
    [result] = read_results((FIXTURES / "v23_local_codes_latin1.hl7").read_bytes())
    assert result.facts is not None
    durand, petit, roux = result.facts.participants
    assert durand.identifier == Identifier(LOCAL, "DR042")
    assert durand.roles == (REFERRING, ORDERING)
    assert durand.sources == ("PV1-8", "ORC-12", "OBR-16")
    assert petit.identifier == Identifier(LOCAL, "DR777")
    assert petit.roles == (COPY_TO,)
    assert roux.identifier is None
    assert roux.name == "ROUX Anne"
    assert NO_IDENTIFIER in roux.problems


# --- names without identifiers ---------------------------------------------------------------


def test_name_without_identifier_is_reported_never_invented() -> None:
    [roux] = participants_of(obr({28: "^ROUX^Anne^^^DR"}))
    assert roux.identifier is None
    assert roux.id is None
    assert roux.id_type is None
    assert roux.name == "ROUX Anne"
    assert NO_IDENTIFIER in roux.problems


def test_free_text_name_in_xcn1_is_not_an_identifier() -> None:
    [kyle] = participants_of(obr({16: "Harrison , Kyle"}))
    assert kyle.identifier is None
    assert "Harrison" in kyle.name
    assert NO_IDENTIFIER in kyle.problems
    assert any("text" in problem for problem in kyle.problems)


def test_name_only_mention_joins_the_identified_person_of_that_name() -> None:
    found = participants_of(seg("ORC", {1: "RE", 12: MARTIN}), obr({28: "^MARTIN^Sophie"}))
    [martin] = found
    assert martin.id_type == RPPS
    assert martin.roles == (ORDERING, COPY_TO)
    assert NO_IDENTIFIER not in martin.problems


# --- merging ---------------------------------------------------------------------------------


def test_untyped_local_code_and_typed_code_with_same_name_merge() -> None:
    found = participants_of(
        seg("PV1", {1: "1", 8: "10001234567^MARTIN^Sophie^^^DR"}),
        obr({16: "10001234567^MARTIN^Sophie^^^DR^^^^^^^RPPS"}),
    )
    [martin] = found
    assert martin.identifier == Identifier(RPPS, "10001234567")
    assert martin.sources == ("PV1-8", "OBR-16")
    assert martin.roles == (REFERRING, ORDERING)


def test_untyped_idnps_code_and_typed_idnps_with_same_name_merge() -> None:
    # The lab writes the same IDNPS once bare (PV1-8) and once typed IDNPS (OBR-16).
    found = participants_of(
        seg("PV1", {1: "1", 8: "810001234567^MARTIN^Sophie^^^DR"}),
        obr({16: MARTIN}),
    )
    assert len(found) == 1, found
    assert found[0].identifier == Identifier(RPPS, "10001234567")


def test_local_code_with_different_name_is_not_merged_with_typed() -> None:
    found = participants_of(
        seg("PV1", {1: "1", 8: "10001234567^DURAND^Claire"}),
        obr({16: "10001234567^MARTIN^Sophie^^^^^^^^^^RPPS"}),
    )
    assert {(p.id_type, p.name) for p in found} == {
        (LOCAL, "DURAND Claire"),
        (RPPS, "MARTIN Sophie"),
    }


def test_two_different_people_stay_two() -> None:
    found = participants_of(seg("ORC", {1: "RE", 12: MARTIN}), obr({16: LEROY}))
    assert [p.name for p in found] == ["MARTIN Sophie", "LEROY Paul"]
    assert len({p.identifier for p in found}) == 2


def test_two_people_named_only_stay_two() -> None:
    found = participants_of(obr({28: "^ROUX^Anne~^PETIT^Marc"}))
    assert [p.name for p in found] == ["ROUX Anne", "PETIT Marc"]


def test_several_obr_groups_are_all_read() -> None:
    found = participants_of(
        seg("ORC", {1: "RE", 12: MARTIN}),
        obr({16: MARTIN}, 1),
        "OBX|1|NM|GLU^Glucose||5.2|||||||F",
        seg("ORC", {1: "RE", 12: LEROY}),
        obr({16: LEROY, 28: "^ROUX^Anne"}, 2),
    )
    ids = by_id(found)
    assert ids["10001234567"].sources == ("ORC-12", "OBR-16")
    assert ids["751234567"].sources == ("ORC[2]-12", "OBR[2]-16")
    assert ids[None].sources == ("OBR[2]-28",)


def test_empty_xcn_fields_are_ignored() -> None:
    found = participants_of(
        seg("PV1", {1: "1", 8: "^^^^"}),
        seg("ORC", {1: "RE", 12: ""}),
        obr({16: "^^^^^^^^^^^^", 28: "~~"}),
    )
    assert found == ()


def test_doctor_local_code_equal_to_patient_local_id_stays_ordering() -> None:
    # A lab's local doctor code may equal a local patient number: different namespaces.
    found = participants_of(
        obr({16: "4711^DURAND^Claire^^^DR"}),
        pid3="4711^^^LABSUD",
    )
    [durand] = found
    assert durand.kind == PERSON
    assert durand.roles == (ORDERING,)


def test_extract_participants_marks_pid_identifier_as_patient() -> None:
    text = message_text(obr({28: "248125612345678^DUPONT^Hélène^^^^^^^^^^INS"}))
    message = parse(DecodedMessage(1, text.encode(), text, "utf-8", ""))
    patient_id = Identifier(INS, "248125612345678")
    [patient] = extract_participants(message, frozenset({patient_id}))
    assert patient.kind == PATIENT_KIND
    assert patient.roles == (PATIENT,)


def test_v22_cn_providers_are_read_like_xcn() -> None:
    text = (
        "\r".join(
            [
                "MSH|^~\\&|LIS|OLDLAB|||19990101||ORU^R01|OLD-1|P|2.2",
                seg("PID", {3: "P1", 5: "DOE^JOHN"}),
                seg("PV1", {1: "1", 2: "O", 8: "D77^REFER^ROSE"}),
                seg("ORC", {1: "RE", 2: "A1", 3: "B1", 12: "D42^WELBY^MARCUS"}),
                seg(
                    "OBR",
                    {
                        1: "1",
                        2: "A1",
                        3: "B1",
                        4: "GLU^GLUCOSE",
                        16: "D42^WELBY^MARCUS",
                        25: "F",
                        28: "D99^COPY^CARL",
                    },
                ),
                seg("OBX", {1: "1", 2: "NM", 3: "GLU^GLUCOSE", 5: "5.2", 11: "F"}),
            ]
        )
        + "\r"
    )
    (result,) = list(read_results(text.encode()))
    assert result.facts is not None, result.error
    got = [(p.id_type, p.id, p.name, p.roles) for p in result.facts.participants]
    assert got == [
        ("LOCAL", "D77", "REFER ROSE", ("referring",)),
        ("LOCAL", "D42", "WELBY MARCUS", ("ordering",)),
        ("LOCAL", "D99", "COPY CARL", ("copy_to",)),
    ]
