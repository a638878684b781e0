"""Enhanced acknowledgment mode (MSH-15/16): the accept ACK a connection gets, or none.

Every ACK is parsed back with hl7apy, as the laboratory's LIS would read it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from pipeline.hl7.intake import IntakeResult, read_results, unavailable_ack
from pipeline.hl7.segments import unescape

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"
ACCEPTED = "fr_prt_idnps_utf8.hl7"  # ORU^R01 2.5, UTF-8, accepted
CONTENT_ERROR = "no_obr.hl7"  # refused with AE (no OBR)
UNSUPPORTED = "adt_a01.hl7"  # refused with AR (not a result)
STORE_DOWN = "not stored: the ledger is unavailable; send the message again later"


def _with_ack_types(data: bytes, accept: str, application: str) -> bytes:
    """The message with MSH-15 and MSH-16 set (the MSH keeps its other fields)."""
    head, sep, rest = data.partition(b"\r")
    fields = head.split(b"|")
    # fields[0] is "MSH", fields[1] is MSH-2: MSH-n sits at fields[n - 1].
    fields += [b""] * (16 - len(fields))
    fields[14] = accept.encode()
    fields[15] = application.encode()
    return b"|".join(fields) + sep + rest


def _result(name: str, accept: str = "", application: str = "") -> IntakeResult:
    data = (FIXTURES / name).read_bytes()
    if accept or application:
        data = _with_ack_types(data, accept, application)
    (result,) = list(read_results(data))
    return result


def _parsed(ack: bytes | None, codec: str = "utf-8") -> object:
    assert ack is not None
    return parse_message(ack.decode(codec), validation_level=VALIDATION_LEVEL.TOLERANT)


def _code(ack: bytes | None) -> str | None:
    if ack is None:
        return None
    code: str = _parsed(ack).msa.msa_1.value  # type: ignore[attr-defined]
    return code


def test_original_mode_accept_ack_is_the_aa_ae_ar_of_ack() -> None:
    for name, code in ((ACCEPTED, "AA"), (CONTENT_ERROR, "AE"), (UNSUPPORTED, "AR")):
        result = _result(name)
        ack = result.accept_ack()
        assert _code(ack) == code
        assert ack is not None
        # Same answer as `ack()` but for the ACK's own time stamp and control ID (MSH-7/10).
        ours, theirs = ack.decode().split("\r"), result.ack().split("\r")
        assert ours[1:] == theirs[1:]


def test_enhanced_always_commits_an_accepted_result_with_ca() -> None:
    result = _result(ACCEPTED, "AL", "NE")
    parsed = parse_message(
        (result.accept_ack() or b"").decode(), validation_level=VALIDATION_LEVEL.STRICT
    )
    parsed.validate()
    assert parsed.msa.msa_1.value == "CA"
    assert parsed.msa.msa_2.value == "LBC-2026-000101"
    assert parsed.msh.msh_9.to_er7() == "ACK^R01^ACK"


@pytest.mark.parametrize(
    ("accept", "application"),
    [("AL", ""), ("", "AL"), ("al", ""), ("ZZ", "")],
    ids=["AL", "only-MSH-16", "lower-case", "outside-table-0155"],
)
def test_enhanced_modes_that_always_answer(accept: str, application: str) -> None:
    assert _code(_result(ACCEPTED, accept, application).accept_ack()) == "CA"
    assert _code(_result(CONTENT_ERROR, accept, application).accept_ack()) == "CE"
    assert _code(_result(UNSUPPORTED, accept, application).accept_ack()) == "CR"


def test_never_means_no_accept_ack_whatever_the_outcome() -> None:
    for name in (ACCEPTED, CONTENT_ERROR, UNSUPPORTED):
        assert _result(name, "NE", "AL").accept_ack() is None


def test_error_only_answers_refusals_and_stays_silent_on_success() -> None:
    assert _result(ACCEPTED, "ER", "").accept_ack() is None
    assert _code(_result(CONTENT_ERROR, "ER", "").accept_ack()) == "CE"
    assert _code(_result(UNSUPPORTED, "ER", "").accept_ack()) == "CR"


def test_success_only_answers_success_and_stays_silent_on_refusals() -> None:
    assert _code(_result(ACCEPTED, "SU", "").accept_ack()) == "CA"
    assert _result(CONTENT_ERROR, "SU", "").accept_ack() is None
    assert _result(UNSUPPORTED, "SU", "").accept_ack() is None


def test_commit_error_keeps_the_err_segment_with_the_reason() -> None:
    result = _result(CONTENT_ERROR, "AL", "")
    assert result.error is not None
    parsed = _parsed(result.accept_ack())
    assert parsed.msa.msa_1.value == "CE"  # type: ignore[attr-defined]
    err = parsed.err  # type: ignore[attr-defined]
    assert err.err_4.value == "E"
    assert unescape(err.err_8.value) == result.error.reason


def test_commit_reject_names_the_unsupported_type() -> None:
    parsed = _parsed(_result(UNSUPPORTED, "AL", "AL").accept_ack())
    assert parsed.msa.msa_1.value == "CR"  # type: ignore[attr-defined]
    assert parsed.msa.msa_2.value == "ADT-1"  # type: ignore[attr-defined]
    assert "ADT" in parsed.err.err_8.value  # type: ignore[attr-defined]


def test_ack_of_a_latin1_sender_is_encoded_in_latin1() -> None:
    data = (FIXTURES / "v23_local_codes_latin1.hl7").read_bytes()
    (result,) = list(read_results(_with_ack_types(data, "AL", "NE")))
    assert result.ok
    ack = result.accept_ack()
    assert ack is not None
    text = ack.decode("iso8859-1")
    assert "|8859/1" in text.split("\r")[0]
    assert "MSA|CA|" in text


def test_store_unavailable_is_ae_in_original_mode_never_aa() -> None:
    data = (FIXTURES / ACCEPTED).read_bytes()
    parsed = _parsed(unavailable_ack(data, STORE_DOWN))
    assert parsed.msa.msa_1.value == "AE"  # type: ignore[attr-defined]
    assert parsed.msa.msa_2.value == "LBC-2026-000101"  # type: ignore[attr-defined]
    assert parsed.err.err_8.value == STORE_DOWN  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("accept", "code"), [("AL", "CE"), ("ER", "CE"), ("", "CE"), ("NE", None), ("SU", None)]
)
def test_store_unavailable_in_enhanced_mode(accept: str, code: str | None) -> None:
    data = _with_ack_types((FIXTURES / ACCEPTED).read_bytes(), accept, "AL")
    assert _code(unavailable_ack(data, STORE_DOWN)) == code


def test_store_unavailable_for_unreadable_bytes_still_answers_ae() -> None:
    assert _code(unavailable_ack(b"\x00 not HL7", STORE_DOWN)) == "AE"
