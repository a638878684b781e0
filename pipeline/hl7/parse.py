"""Structure checks: from decoded text to an `Hl7Message` we can read fields from safely.

Everything here runs on every result, so the checks are the ones that decide whether a
message can be trusted: usable separators, every line a segment, a header that names a
type, version and control ID we handle, segments the version defines. What is unusual but
harmless (a segment the ORU^R01 structure does not list, no PID) becomes a warning the lab
sees in its ACK, not a rejection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.hl7 import reference
from pipeline.hl7.decode import DecodedMessage
from pipeline.hl7.errors import (
    BadDelimiters,
    BrokenLine,
    FieldTooLong,
    InvalidValue,
    Location,
    MissingField,
    MissingSegment,
    NotHL7,
    UnknownSegment,
    UnsupportedEvent,
    UnsupportedMessageType,
    UnsupportedProcessingId,
    UnsupportedVersion,
)
from pipeline.hl7.limits import CONTROL_ID_MAX_CHARACTERS, SENDER_MAX_CHARACTERS
from pipeline.hl7.segments import SEGMENT_NAME, Delimiters, Segment, locate_offset

SUPPORTED_TYPES = {("ORU", "R01"): "ORU_R01"}
PROCESSING_IDS = {"P": "production", "T": "training", "D": "debugging"}
_MISSPELT_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,3}")
#: C0 controls but CR and tab, DEL, and C1 controls (what cp1252 punctuation becomes when a
#: sender declares 8859/1 but writes Windows-1252: refused rather than delivered garbled).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: Every byte but the C0 controls (tab and CR aside) and DEL: deleting these leaves only
#: bytes `_CONTROL_CHARACTERS` would find, ~8x faster than the regex on a 300 KB message.
#: (These bytes never occur inside multi-byte characters of the charsets we decode.)
_C0_BYTES = (set(range(0x20)) - {0x09, 0x0D}) | {0x7F}
_NOT_C0_BYTES = bytes(byte for byte in range(256) if byte not in _C0_BYTES)
_NOT_C1_BYTES = bytes(byte for byte in range(256) if not 0x80 <= byte <= 0x9F)
_UTF8_C1_LEAD = b"\xc2"  # U+0080..U+00BF in UTF-8; C1 controls are U+0080..U+009F


@dataclass
class Hl7Message:
    """A message that passed the structure checks, with its header already read."""

    index: int
    data: bytes
    text: str
    delimiters: Delimiters
    segments: list[Segment]
    message_type: str  # "ORU^R01"
    structure: str  # "ORU_R01"
    version: str
    control_id: str
    processing_id: str
    charset: str
    declared_charset: str
    batch: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def all(self, name: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.name == name]

    def first(self, name: str) -> Segment | None:
        for segment in self.segments:
            if segment.name == name:
                return segment
        return None


def read_delimiters(text: str) -> Delimiters:
    """MSH-1 and MSH-2, checked: every later split depends on them."""
    if not text.startswith("MSH"):
        raise NotHL7("no MSH segment at the start: this is not an HL7 v2 message")
    if len(text) < 8:
        raise BadDelimiters("MSH is too short to declare its separators", Location("MSH", field=2))
    field_sep = text[3]
    if field_sep.isalnum() or field_sep.isspace():
        raise BadDelimiters(
            f"MSH-1 must be a separator character such as '|', got {field_sep!r}",
            Location("MSH", field=1),
        )
    end = text.find(field_sep, 4)
    line_end = text.find("\r")
    if end == -1 or (line_end != -1 and end > line_end):
        end = line_end if line_end != -1 else len(text)
    encoding = text[4:end]
    if not 4 <= len(encoding) <= 5:
        raise BadDelimiters(
            f"MSH-2 must hold 4 encoding characters (component, repetition, escape,"
            f" subcomponent, as in ^~\\&), got {len(encoding)}: {encoding!r}",
            Location("MSH", field=2),
        )
    if (
        len(set(encoding)) != len(encoding)
        or field_sep in encoding
        or any(char.isalnum() or char.isspace() for char in encoding)
    ):
        raise BadDelimiters(
            f"MSH-2 encoding characters must be distinct punctuation, got {encoding!r}",
            Location("MSH", field=2),
        )
    return Delimiters(
        field=field_sep,
        component=encoding[0],
        repetition=encoding[1],
        escape=encoding[2],
        subcomponent=encoding[3],
        truncation=encoding[4] if len(encoding) == 5 else "",
    )


def read_msh(text: str) -> Segment:
    """The first line as the MSH segment, split with the separators it declares."""
    return Segment(text.split("\r", 1)[0], read_delimiters(text), 1, 1)


def split_segments(text: str, delimiters: Delimiters) -> list[Segment]:
    """Every line must open with a segment name: anything else is a broken or wrapped line."""
    segments: list[Segment] = []
    counts: dict[str, int] = {}
    for number, line in enumerate(text.split("\r"), start=1):
        if not line:
            continue
        name = line[:3]
        if not SEGMENT_NAME.fullmatch(name) or (len(line) > 3 and line[3] != delimiters.field):
            head = line.split(delimiters.field, 1)[0]
            if delimiters.field in line and _MISSPELT_NAME.fullmatch(head):
                raise UnknownSegment(
                    f"line {number} starts with {head!r}, which is not a segment name"
                    " (three capital letters or digits, such as PID)",
                    Location(head),
                )
            after = segments[-1] if segments else None
            where = f" (after {after.name}[{after.sequence}])" if after else ""
            raise BrokenLine(
                f"line {number}{where} does not begin with a segment name followed by"
                " the field separator: a segment was broken across lines (for example by a"
                " mail gateway wrapping long lines) or the message is corrupted",
                Location(after.name, after.sequence) if after else None,
            )
        counts[name] = counts.get(name, 0) + 1
        segments.append(Segment(line, delimiters, counts[name], number))
    return segments


def _may_hold_controls(decoded: DecodedMessage) -> bool:
    """Cheap byte-level screening, so the regex runs only when a control may be there."""
    data = decoded.data
    if data.translate(None, _NOT_C0_BYTES):
        return True
    if decoded.charset.startswith("iso8859"):
        return bool(data.translate(None, _NOT_C1_BYTES))
    if decoded.charset in ("utf-8", "ascii"):
        return _UTF8_C1_LEAD in data
    return True


def _check_key_lengths(msh: Segment, control_id: str) -> None:
    """The fields of the message's key fit the ledger (`limits`), or FieldTooLong."""
    facility = msh.value(4).strip()
    if facility:
        sender = (4, "sending facility", facility)
    else:
        sender = (
            3,
            "sending application, which names the laboratory when MSH-4 is empty",
            msh.value(3).strip(),
        )
    for number, name, value, limit in (
        (*sender, SENDER_MAX_CHARACTERS),
        (10, "message control ID", control_id, CONTROL_ID_MAX_CHARACTERS),
    ):
        if len(value) > limit:
            raise FieldTooLong(
                f"MSH-{number} ({name}) is {len(value)} characters long; at most {limit} are"
                " accepted",
                Location("MSH", field=number),
            )


def parse(decoded: DecodedMessage) -> Hl7Message:
    """Check the structure of one decoded message and read its header."""
    text = decoded.text
    # The header first: "we do not take ADT" is the answer that matters, whatever follows.
    msh = read_msh(text)
    delimiters = msh.delimiters
    warnings = list(decoded.warnings)

    message_code = msh.value(9, 1).strip()
    event = msh.value(9, 2).strip()
    if not message_code:
        raise MissingField("MSH-9 (message type) is empty", Location("MSH", field=9))
    if message_code != "ORU":
        raise UnsupportedMessageType(
            f"message type {message_code}^{event} is not accepted; labdispatch takes"
            " laboratory results as ORU^R01",
            Location("MSH", field=9, component=1),
        )
    structure = SUPPORTED_TYPES.get((message_code, event))
    if structure is None:
        raise UnsupportedEvent(
            f"event {event or '(empty)'} is not accepted for ORU; labdispatch takes ORU^R01",
            Location("MSH", field=9, component=2),
        )

    control_id = msh.value(10).strip()
    if not control_id:
        raise MissingField(
            "MSH-10 (message control ID) is empty: without it the result cannot be"
            " acknowledged or de-duplicated",
            Location("MSH", field=10),
        )
    _check_key_lengths(msh, control_id)

    processing_id = msh.value(11, 1).strip()
    if processing_id and processing_id not in PROCESSING_IDS:
        raise UnsupportedProcessingId(
            f"processing ID {processing_id!r} is not one of P (production), T (training),"
            " D (debugging)",
            Location("MSH", field=11),
        )
    if not processing_id:
        warnings.append("MSH-11 (processing ID) is empty; treated as P (production)")
        processing_id = "P"

    version = msh.value(12, 1).strip()
    if not version:
        raise MissingField("MSH-12 (version ID) is empty", Location("MSH", field=12))
    if version not in reference.SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"HL7 version {version} is not supported; send one of "
            + ", ".join(reference.SUPPORTED_VERSIONS),
            Location("MSH", field=12),
        )

    segments = split_segments(text, delimiters)
    bad = _CONTROL_CHARACTERS.search(text) if _may_hold_controls(decoded) else None
    if bad is not None:
        raise InvalidValue(
            f"control character U+{ord(bad.group()):04X} is not allowed in HL7 text",
            locate_offset(text, bad.start(), delimiters.field),
        )

    allowed = reference.structure_segments(version, structure)
    outside: list[str] = []
    later: list[str] = []
    for segment in segments[1:]:
        name = segment.name
        if reference.is_defined_segment(version, name):
            if (
                allowed
                and name not in allowed
                and not name.startswith("Z")
                and (name not in reference.BACKPORTED_SEGMENTS and name not in outside)
            ):
                outside.append(name)
        elif reference.is_known_segment(name):
            if name not in later:
                later.append(name)
        else:
            raise UnknownSegment(
                f"segment {name!r} (line {segment.line}) is not an HL7 segment: no HL7"
                " version defines it, and it is not a Z-segment",
                Location(name, segment.sequence),
            )
    if outside:
        warnings.append(
            f"segments not part of {structure} in HL7 {version} were ignored: " + ", ".join(outside)
        )
    if later:
        warnings.append(
            f"segments from later HL7 versions than {version} were ignored: "
            + ", ".join(f"{name} (HL7 {reference.first_defined_in(name)})" for name in later)
        )
    if not any(segment.name == "OBR" for segment in segments):
        raise MissingSegment(
            "no OBR segment: an ORU^R01 result needs at least one OBR (the order it answers)",
            Location("OBR"),
        )
    if not any(segment.name == "PID" for segment in segments):
        warnings.append("no PID segment: the result does not identify its patient")

    return Hl7Message(
        index=decoded.index,
        data=decoded.data,
        text=text,
        delimiters=delimiters,
        segments=segments,
        message_type=f"{message_code}^{event}",
        structure=structure,
        version=version,
        control_id=control_id,
        processing_id=processing_id,
        charset=decoded.charset,
        declared_charset=decoded.declared_charset,
        batch=decoded.batch,
        warnings=warnings,
    )
