"""The tokenizer: HL7 field numbering, repetitions, components, escapes."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.hl7.errors import Location
from pipeline.hl7.segments import (
    DEFAULT_DELIMITERS,
    Delimiters,
    Segment,
    component_value,
    escape,
    locate_offset,
    unescape,
)

D = DEFAULT_DELIMITERS
MSH = "MSH|^~\\&|APP|LAB|RCV|RFAC|20261128||ORU^R01^ORU_R01|CTRL-42|P|2.5"
UNUSUAL = Delimiters(field="#", component="$", repetition="%", escape="!", subcomponent="*")


def seg(text: str, delimiters: Delimiters = D) -> Segment:
    return Segment(text, delimiters, 1, 1)


# --- field numbering -------------------------------------------------------------------------


def test_msh1_is_the_field_separator() -> None:
    assert seg(MSH).field(1) == "|"


def test_msh2_is_the_encoding_characters() -> None:
    assert seg(MSH).field(2) == "^~\\&"


def test_msh_fields_follow_hl7_numbering() -> None:
    msh = seg(MSH)
    assert msh.field(3) == "APP"
    assert msh.field(4) == "LAB"
    assert msh.field(7) == "20261128"
    assert msh.field(9) == "ORU^R01^ORU_R01"
    assert msh.field(10) == "CTRL-42"
    assert msh.field(11) == "P"
    assert msh.field(12) == "2.5"


def test_msh_numbering_with_unusual_separator() -> None:
    msh = seg("MSH#$%!*#APP#LAB#####ORU$R01#C-9#P#2.5", UNUSUAL)
    assert msh.field(1) == "#"
    assert msh.field(2) == "$%!*"
    assert msh.field(10) == "C-9"
    assert msh.value(9, 2) == "R01"


def test_other_segments_number_from_the_first_field() -> None:
    pid = seg("PID|1||123^^^LAB^PI||DUPONT^Jean")
    assert pid.field(0) == "PID"
    assert pid.field(1) == "1"
    assert pid.field(3) == "123^^^LAB^PI"
    assert pid.field(5) == "DUPONT^Jean"


def test_absent_field_is_empty() -> None:
    pid = seg("PID|1")
    assert pid.field(2) == ""
    assert pid.field(99) == ""
    assert pid.repetitions(99) == []
    assert pid.components(99) == []
    assert pid.value(99) == ""


def test_msh1_and_msh2_are_not_split_into_repetitions() -> None:
    msh = seg(MSH)
    assert msh.repetitions(1) == ["|"]
    assert msh.repetitions(2) == ["^~\\&"]


def test_msh2_value_is_the_encoding_characters() -> None:
    # MSH-2 holds the separators themselves: reading it must not split on "^".
    assert seg(MSH).value(2) == "^~\\&"


def test_segment_name_and_sequence() -> None:
    obx = Segment("OBX|1|NM", D, 3, 7)
    assert (obx.name, obx.sequence, obx.line) == ("OBX", 3, 7)


# --- repetitions, components, subcomponents --------------------------------------------------


def test_repetitions_split_on_tilde() -> None:
    obr = seg("OBR|1" + "|" * 27 + "A^X~B^Y~~C^Z")
    assert obr.repetitions(28) == ["A^X", "B^Y", "", "C^Z"]


def test_components_of_a_given_repetition() -> None:
    s = seg("ZZZ|a^b^c~d^e")
    assert s.components(1) == ["a", "b", "c"]
    assert s.components(1, 1) == ["d", "e"]
    assert s.components(1, 2) == []


def test_value_reads_component_of_first_repetition() -> None:
    s = seg("ZZZ|a^b^c~d^e")
    assert s.value(1) == "a"
    assert s.value(1, 2) == "b"
    assert s.value(1, 3) == "c"
    assert s.value(1, 4) == ""


def test_subcomponents() -> None:
    s = seg("XCN|810001234567^MARTIN^^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO")
    assert s.value(1, 9) == "ASIP-SANTE-PS"
    assert s.value(1, 9, 2) == "1.2.250.1.71.4.2.1"
    assert s.value(1, 9, 3) == "ISO"
    assert s.value(1, 9, 4) == ""
    assert s.value(1, 2, 2) == ""  # no subcomponent separator: only the first exists


def test_component_value_unescapes() -> None:
    assert component_value(["A\\S\\B", "x"], 1, D) == "A^B"
    assert component_value(["A"], 5, D) == ""


def test_value_is_unescaped_but_field_is_raw() -> None:
    s = seg("NTE|1||a\\F\\b")
    assert s.field(3) == "a\\F\\b"
    assert s.value(3) == "a|b"


# --- unescape --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("\\X41\\", "A"),
        ("\\X4142\\", "AB"),
        ("\\XE9\\", "é"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\H\\bold\\N\\", "bold"),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_unescape_known_sequences(raw: str, text: str) -> None:
    assert unescape(raw) == text


@pytest.mark.parametrize(
    "raw",
    ["\\Q\\", "a\\Zlocal\\b", "\\X4\\", "\\XZZ\\", "\\P\\", "trailing\\", "\\unclosed", "\\\\"],
)
def test_unknown_escape_sequences_are_kept_verbatim(raw: str) -> None:
    assert unescape(raw) == raw


def test_unescape_with_unusual_delimiters() -> None:
    assert unescape("a!F!b!S!c!T!d!R!e!E!f", UNUSUAL) == "a#b$c*d%e!f"
    # The default escape character is ordinary text under other delimiters.
    assert unescape("a\\F\\b", UNUSUAL) == "a\\F\\b"


def test_truncation_escape_when_declared() -> None:
    delimiters = Delimiters(truncation="#")
    assert unescape("a\\P\\b", delimiters) == "a#b"


def test_escape_produces_no_raw_delimiters() -> None:
    escaped = escape("a|b^c&d~e\\f")
    assert escaped == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"


def test_escape_crlf_is_one_line_break() -> None:
    # A CRLF line end in free text is one line break, not two.
    assert unescape(escape("a\r\nb")) == "a\nb"


# --- escape round trip -----------------------------------------------------------------------

_unusual_delimiters = st.permutations(list("#$%!*@+")).map(
    lambda chars: Delimiters(
        field=chars[0],
        component=chars[1],
        repetition=chars[2],
        escape=chars[3],
        subcomponent=chars[4],
    )
)
_texts = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("|^~\\&#$%!*@+.XHNFSTRE0123456789\n ")),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(text=_texts)
@example(text="\\X41\\")
@example(text="\\.br\\")
@example(text="a\\E\\b")
def test_escape_round_trips_with_default_delimiters(text: str) -> None:
    escaped = escape(text)
    for char in ("|", "^", "~", "&", "\r", "\n"):
        assert char not in escaped
    assert unescape(escaped) == text


@settings(max_examples=300, deadline=None)
@given(text=_texts, delimiters=_unusual_delimiters)
def test_escape_round_trips_with_unusual_delimiters(text: str, delimiters: Delimiters) -> None:
    escaped = escape(text, delimiters)
    for char in (delimiters.field, delimiters.component, delimiters.repetition):
        assert char not in escaped
    assert delimiters.subcomponent not in escaped
    assert unescape(escaped, delimiters) == text


@settings(max_examples=200, deadline=None)
@given(text=_texts)
def test_escaped_text_reads_back_as_one_field_value(text: str) -> None:
    segment = seg("NTE|1||" + escape(text))
    assert len(segment.fields) == 4
    assert segment.value(3) == text


# --- locate_offset ---------------------------------------------------------------------------


def test_locate_offset_names_segment_sequence_and_field() -> None:
    text = MSH + "\rOBX|1|NM|A\rOBX|2|NM|GLU^Glucose||5.2\r"
    offset = text.index("5.2")
    assert locate_offset(text, offset) == Location("OBX", 2, 5)


def test_locate_offset_in_msh_counts_msh1() -> None:
    text = MSH + "\r"
    assert locate_offset(text, text.index("CTRL-42")) == Location("MSH", 1, 10)
    assert locate_offset(text, text.index("^~")) == Location("MSH", 1, 2)
