from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.identifiers import (
    ADELI,
    IDNPS,
    IDNPS_OID,
    INS,
    LOCAL,
    RPPS,
    Identifier,
    normalise_identifier,
    parse_identifier_text,
)


def test_idnps_of_an_rpps_is_the_rpps() -> None:
    assert normalise_identifier("810001234567", "IDNPS") == Identifier(RPPS, "10001234567")


def test_idnps_of_an_adeli_is_the_adeli() -> None:
    assert normalise_identifier("0751234567", "IDNPS") == Identifier(ADELI, "751234567")


def test_idnps_recognised_by_its_authority_oid_without_a_type() -> None:
    assert normalise_identifier("810001234567", authority_oid=IDNPS_OID) == Identifier(
        RPPS, "10001234567"
    )


def test_idnps_typed_as_rpps_is_the_rpps() -> None:
    assert normalise_identifier("810001234567", "RPPS") == Identifier(RPPS, "10001234567")


def test_plain_rpps_is_kept_as_is() -> None:
    assert normalise_identifier(" 10001234567 ", "rpps") == Identifier(RPPS, "10001234567")


def test_stray_spaces_in_the_authority_are_dropped_and_idnps_still_recognised() -> None:
    identifier = normalise_identifier("810001234567", authority="ASIP-SANTE- PS")
    assert identifier == Identifier(RPPS, "10001234567", "ASIP-SANTE-PS")


def test_ins_recognised_by_its_oid() -> None:
    identifier = normalise_identifier("285017512345678", authority_oid="1.2.250.1.213.1.4.8")
    assert identifier == Identifier(INS, "285017512345678")


def test_ins_nir_type_code_is_ins() -> None:
    assert normalise_identifier("285017512345678", "INS-NIR") == Identifier(INS, "285017512345678")


def test_untyped_value_is_a_local_code() -> None:
    identifier = normalise_identifier("DR9")
    assert identifier == Identifier(LOCAL, "DR9")
    assert not identifier.is_national


def test_sender_specific_type_is_kept_and_not_national() -> None:
    identifier = normalise_identifier("DR9", "ei")
    assert identifier == Identifier("EI", "DR9")
    assert not identifier.is_national


def test_idnps_with_an_unknown_prefix_stays_idnps_and_is_not_national() -> None:
    identifier = normalise_identifier("912345", "IDNPS")
    assert identifier == Identifier(IDNPS, "912345")
    assert not identifier.is_national


def test_empty_value_identifies_no_one() -> None:
    assert normalise_identifier("   ", "RPPS") is None
    assert parse_identifier_text("RPPS:") is None


def test_operator_text_is_normalised_like_hl7() -> None:
    assert parse_identifier_text("IDNPS:810001234567") == Identifier(RPPS, "10001234567")
    assert parse_identifier_text("10001234567") is None  # no type: refuse to guess


@given(rpps=st.text(alphabet="0123456789", min_size=11, max_size=11))
def test_every_spelling_of_an_rpps_normalises_to_one_identifier(rpps: str) -> None:
    spellings = [
        normalise_identifier(rpps, "RPPS"),
        normalise_identifier("8" + rpps, "IDNPS"),
        normalise_identifier("8" + rpps, "RPPS"),
        normalise_identifier("8" + rpps, "", " ASIP-SANTE-PS "),
        parse_identifier_text(f"IDNPS:8{rpps}"),
    ]
    assert {(s.id_type, s.value) for s in spellings if s is not None} == {(RPPS, rpps)}
    assert None not in spellings


@given(adeli=st.text(alphabet="0123456789", min_size=9, max_size=9))
def test_normalising_twice_changes_nothing(adeli: str) -> None:
    once = normalise_identifier("0" + adeli, "IDNPS")
    assert once is not None
    assert parse_identifier_text(str(once)) == once
