"""Property tests: whatever bytes arrive, intake answers with a result and an ACK, never a crash."""

from __future__ import annotations

import codecs
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.hl7.errors import IntakeError
from pipeline.hl7.intake import IntakeResult, read_results
from pipeline.hl7.segments import escape

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"
FRENCH = (FIXTURES / "fr_prt_idnps_utf8.hl7").read_bytes()
LATIN1_V23 = (FIXTURES / "v23_local_codes_latin1.hl7").read_bytes()
BASES = (FRENCH, LATIN1_V23)

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

INTERESTING_BYTES = [
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x0b",
    b"\x1c",
    b"\x1c\r",
    codecs.BOM_UTF8,
    b"\xef",
    b"\xbb",
    b"\xbf",
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
    b"\x00",
    b"\x07",
    b"\x7f",
    b"\xe9",
    b"\xc3\xa9",
    b"\xff",
    b"\xb2",  # Latin-1 superscript two: a "digit" to str.isdigit
    b"MSH|^~\\&|",
    b"FHS|^~\\&|",
    b"BHS|",
    b"BTS|1",
    b"PRT|",
    b"OBR|",
    b"OBX|1|ED|X||^APPLICATION^PDF^Base64^",
    b"\\X41\\",
    b"\\.br\\",
    b"\\F\\",
    b"\\",
    b" ",
]


def check_results(data: bytes) -> list[IntakeResult]:
    """The guarantees every input gets: results, each accepted with facts or refused."""
    results = list(read_results(data))
    for result in results:
        assert isinstance(result, IntakeResult)
        if result.ok:
            assert result.error is None
            assert result.message is not None
            assert result.facts is not None
            assert result.facts.control_id
        else:
            assert isinstance(result.error, IntakeError)
            assert result.error.ack_code in {"AE", "AR"}
            assert result.facts is None
        ack = result.ack()
        assert isinstance(ack, str)
        assert ack.startswith("MSH")
        assert "\rMSA" in ack
    return results


# --- (a) arbitrary bytes ---------------------------------------------------------------------

_arbitrary = st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=400).map(lambda tail: b"MSH|^~\\&|" + tail),
    st.lists(st.one_of(st.sampled_from(INTERESTING_BYTES), st.binary(max_size=6)), max_size=40).map(
        b"".join
    ),
)


@SETTINGS
@given(data=_arbitrary)
@example(data=b"")
@example(data=b"MSH")
@example(data=b"MSH|")
@example(data=codecs.BOM_UTF16_LE + b"M")
@example(data=b"\x0b\x1c\r")
def test_arbitrary_bytes_give_only_intake_results(data: bytes) -> None:
    for result in read_results(data):
        assert isinstance(result, IntakeResult)
        if result.error is not None:
            assert isinstance(result.error, IntakeError)
        else:
            assert result.facts is not None


@SETTINGS
@given(data=_arbitrary)
def test_arbitrary_bytes_always_get_an_ack(data: bytes) -> None:
    check_results(data)


# --- (b) byte-level mutations of a valid message ---------------------------------------------


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 6))):
        # Half of the edits land in the header, where one byte changes the whole reading.
        position = draw(st.one_of(st.integers(0, 130), st.integers(0, len(data))))
        position = min(position, len(data))
        operation = draw(st.sampled_from(("delete", "insert", "replace")))
        chunk = draw(
            st.one_of(st.sampled_from(INTERESTING_BYTES), st.binary(min_size=1, max_size=3))
        )
        if operation == "delete":
            del data[position : position + draw(st.integers(1, 12))]
        elif operation == "insert":
            data[position:position] = chunk
        else:
            data[position : position + len(chunk)] = chunk
    return bytes(data)


@SETTINGS
@given(data=byte_mutations())
@example(data=FRENCH)
@example(data=LATIN1_V23)
def test_byte_mutations_never_crash_intake_or_ack(data: bytes) -> None:
    check_results(data)


# --- (c) field-level mutations ---------------------------------------------------------------

_FIELD_TOKENS = [
    "^", "~", "\\", "&", "|", "\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\X41\\",
    "\\XE9\\", "\\.br\\", "\\H\\", "\\N\\", "\\Zx\\", "é", " ", ",", "2.5", "ORU", "R01",
    "D", "C", "F", "CA", "RCT", "ED", "Base64", "IDNPS", "INS", "RPPS", "8",
]  # fmt: skip
_field_text = st.lists(
    st.one_of(st.sampled_from(_FIELD_TOKENS), st.characters(blacklist_categories=("Cs",))),
    max_size=12,
).map("".join)


@st.composite
def field_mutations(draw: st.DrawFn) -> bytes:
    base = draw(st.sampled_from(BASES))
    codec = "utf-8" if base is FRENCH else "latin-1"
    lines = [line.split("|") for line in base.decode(codec).split("\r") if line]
    for _ in range(draw(st.integers(1, 3))):
        parts = lines[draw(st.integers(0, len(lines) - 1))]
        number = draw(st.integers(1, len(parts) + 2))
        while len(parts) <= number:
            parts.append("")
        parts[number] = draw(_field_text)
    text = "\r".join("|".join(parts) for parts in lines) + "\r"
    return text.encode(codec, errors="replace")


@SETTINGS
@given(data=field_mutations())
def test_field_mutations_never_crash_intake_or_ack(data: bytes) -> None:
    check_results(data)


# --- (d) valid messages keep their control ID ------------------------------------------------

_control_ids = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("ABCXYZ0123456789-_.:/ ^~&\\|é")),
        st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_categories=("Cc",)),
    ),
    min_size=1,
    max_size=20,
).filter(lambda text: text == text.strip() and text != "")


def valid_message(control_id: str, version: str, observations: int) -> str:
    escaped = escape(control_id)
    segments = [
        f"MSH|^~\\&|SIL|LABO|LABDISPATCH|LABDISPATCH|20261128093000||ORU^R01|{escaped}|P|{version}"
        "||||||UNICODE UTF-8",
        "PID|||248125612345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||DUPONT^Hélène",
        "ORC|RE|A1|B1||||||||||810001234567^MARTIN^Sophie^^^^^^^^^^IDNPS",
        "OBR|1|A1|B1|GLU^Glycémie|||202611280700|||||||||||||||||F",
    ]
    segments += [f"OBX|{n}|NM|GLU^Glycémie||5.{n}|mmol/L|||||F" for n in range(1, observations + 1)]
    return "\r".join(segments) + "\r"


@SETTINGS
@given(
    control_ids=st.lists(_control_ids, min_size=1, max_size=3),
    version=st.sampled_from(["2.3", "2.3.1", "2.4", "2.5", "2.5.1"]),
    observations=st.integers(0, 3),
    line_end=st.sampled_from(["\r", "\n", "\r\n"]),
    bom=st.booleans(),
    mllp=st.booleans(),
)
def test_valid_messages_are_accepted_with_their_control_id(
    control_ids: list[str],
    version: str,
    observations: int,
    line_end: str,
    bom: bool,
    mllp: bool,
) -> None:
    chunks = []
    for control_id in control_ids:
        chunk = valid_message(control_id, version, observations).replace("\r", line_end).encode()
        if bom:
            chunk = codecs.BOM_UTF8 + chunk
        if mllp:
            chunk = b"\x0b" + chunk + b"\x1c\r"
        chunks.append(chunk)
    results = check_results(b"".join(chunks))
    assert [r.error for r in results] == [None] * len(control_ids)
    assert [r.facts.control_id for r in results if r.facts] == control_ids
    for result, control_id in zip(results, control_ids, strict=True):
        assert result.ack().split("\r")[1] == f"MSA|AA|{escape(control_id)}"
        assert result.facts is not None
        assert result.facts.version == version
        assert result.facts.orders[0].observations == observations


def test_ack_of_refused_latin1_message_with_superscript_version_digit() -> None:
    # Found by the byte mutations: "²" (0xB2 in Latin-1) is a digit to str.isdigit.
    data = LATIN1_V23.replace(b"|P|2.3|", b"|P|2.\xb2|")
    [result] = read_results(data)
    assert result.error is not None
    assert result.ack().startswith("MSH")
