"""From the bytes a laboratory sent to the text of each message, or a reason we cannot.

What arrives is rarely the textbook message: MLLP framing bytes left in a file, a UTF-8
byte-order mark, CRLF or LF instead of CR, FHS/BHS batch envelopes around many messages,
text in Latin-1 or UTF-8 declared (or not) in MSH-18. We accept all of that, but never
guess silently: a message whose bytes do not match its declared character set is refused
with the segment and field where the first bad byte sits.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.hl7.errors import (
    Location,
    NotHL7,
    UndecodableMessage,
    UnsupportedCharacterSet,
)
from pipeline.hl7.segments import locate_offset

MLLP_START = b"\x0b"
MLLP_END = b"\x1c"
UTF8_BOM = codecs.BOM_UTF8
SEGMENT_NAME_BYTES = re.compile(rb"[A-Z][A-Z0-9]{2}")
BATCH_HEADERS = (b"FHS", b"BHS")
#: Byte-order marks of the wide encodings; UTF-32 LE first, its mark starts like UTF-16 LE's.
WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
#: Byte-order marks of the wide encodings; UTF-32 LE first, its mark starts like UTF-16 LE's.
WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
BATCH_TRAILERS = (b"BTS", b"FTS")

#: HL7 table 0211 (MSH-18) → Python codec. Keys are upper-case with blanks and "_" folded.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISOIR6": "ascii",
    "8859/1": "iso8859-1",
    "ISOIR100": "iso8859-1",
    "8859/2": "iso8859-2",
    "ISOIR101": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "ISOIR144": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "ISOIR126": "iso8859-7",
    "8859/8": "iso8859-8",
    "ISOIR138": "iso8859-8",
    "8859/9": "iso8859-9",
    "ISOIR148": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE": "utf-8",
    "UNICODEUTF-8": "utf-8",
    "UTF-8": "utf-8",
    "ISOIR192": "utf-8",
    "UNICODEUTF-16": "utf-16",
    "UNICODEUTF-32": "utf-32",
    "GB18030-2000": "gb18030",
    "KSX1001": "euc_kr",
    "BIG-5": "big5",
    # Not table 0211, but unambiguous names senders write: explicit, so read as declared.
    **{f"ISO-8859-{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    **{f"ISO8859-{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    "LATIN1": "iso8859-1",
    "LATIN-1": "iso8859-1",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}


def charset_codec(declared: str) -> str:
    """The codec for an MSH-18 value; unknown names are refused, never guessed."""
    key = "".join(declared.replace("_", " ").split()).upper()
    codec = CHARSETS.get(key)
    if codec is None:
        raise UnsupportedCharacterSet(
            f"character set {declared!r} is not supported; use ASCII, 8859/1 or UNICODE UTF-8",
            Location("MSH", field=18),
        )
    return codec


@dataclass(frozen=True)
class RawMessage:
    """The bytes of one message, cut out of a file or stream, with line ends made CR."""

    index: int  # 1-based position in the file or stream
    data: bytes
    had_bom: bool = False
    batch: str = ""  # batch control ID (BHS-11) or file control ID (FHS-11), if any
    decoded_as: str = ""  # set when the whole file was UTF-16/32 with a BOM
    notes: tuple[str, ...] = ()  # what was normalised on the way, for the lab to see


@dataclass(frozen=True)
class DecodedMessage:
    """One message as text: CR-separated segments, ending with CR."""

    index: int
    data: bytes
    text: str
    charset: str  # the Python codec actually used
    declared_charset: str  # MSH-18 as written ("" when absent)
    batch: str = ""
    warnings: tuple[str, ...] = ()


def split_messages(data: bytes) -> Iterator[RawMessage]:
    """Cut a file or stream into messages: one per MSH, batch envelopes removed.

    Lines before the first MSH that are not batch headers come out as their own chunk,
    which `decode_message` refuses as not HL7, so nothing is dropped unseen.
    """
    decoded_as = ""
    for mark, codec in WIDE_BOMS:
        if data.startswith(mark):
            try:
                data = data.decode(codec).encode("utf-8")
            except UnicodeDecodeError:
                break  # left as is: the byte-level checks below will refuse it clearly
            decoded_as = codec
            break
    if MLLP_START in data or MLLP_END in data:
        data = data.replace(MLLP_START, b"").replace(MLLP_END, b"\r")
    data = data.rstrip(b"\x1a\x00")  # DOS end-of-file mark, NUL padding of exports

    index = 0
    current: list[bytes] = []
    notes: list[str] = []
    bom = False
    batch_id = ""

    def flush() -> RawMessage | None:
        nonlocal current, bom, notes
        if not current:
            return None
        chunk = RawMessage(
            index=index,
            data=b"\r".join(current) + b"\r",
            had_bom=bom,
            batch=batch_id,
            decoded_as=decoded_as,
            notes=tuple(notes),
        )
        current, bom, notes = [], False, []
        return chunk

    for line, after_lf in _lines(data):
        if after_lf and current and not _starts_segment(line, current[0]):
            # A bare LF inside a field of a CR-separated message: a line break in the text.
            escape = current[0][6:7] or b"\\"
            current[-1] += escape + b".br" + escape + line
            segment = current[-1][:3].decode("ascii", "replace")
            note = f"a line feed inside {segment} was read as a line break in the text"
            if note not in notes:
                notes.append(note)
            continue
        line_bom = line.startswith(UTF8_BOM)
        if line_bom:
            line = line[len(UTF8_BOM) :]
        if not line.strip():
            continue
        tag = line[:3]
        if tag in BATCH_HEADERS or tag in BATCH_TRAILERS:
            chunk = flush()
            if chunk is not None:
                yield chunk
            batch_id = _batch_control_id(line) if tag in BATCH_HEADERS else ""
            continue
        if tag == b"MSH":
            chunk = flush()
            if chunk is not None:
                yield chunk
            index += 1
        elif not current:
            index += 1  # stray text before any MSH: its own (refused) chunk
        current.append(line)
        bom = bom or line_bom
    chunk = flush()
    if chunk is not None:
        yield chunk


_LINE_END = re.compile(rb"(\r\n|\r|\n)")


def _lines(data: bytes) -> Iterator[tuple[bytes, bool]]:
    """Each line, and whether a bare LF ended the line before it in a CR-separated file.

    Segments end with CR, LF or CRLF, whichever the sender uses. Only when a file ends its
    segments with CR and also holds bare LFs can an LF be a line break inside a field.
    """
    if b"\n" not in data or b"\r" not in data.replace(b"\r\n", b""):
        for line in data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r"):
            yield line, False
        return
    parts = _LINE_END.split(data)
    yield parts[0], False
    for position in range(1, len(parts), 2):
        yield parts[position + 1], parts[position] == b"\n"


def _starts_segment(line: bytes, msh: bytes) -> bool:
    """A segment name followed by this message's field separator (or nothing)."""
    separator = msh[3:4] or b"|"
    return (
        len(line) >= 3
        and SEGMENT_NAME_BYTES.fullmatch(line[:3]) is not None
        and line[3:4] in (separator, b"")
    )


def _batch_control_id(line: bytes) -> str:
    sep = line[3:4] or b"|"
    parts = line.split(sep)
    return parts[10].decode("ascii", "replace") if len(parts) > 10 else ""


def declared_charset(msh: bytes) -> str:
    """MSH-18 (first repetition) read straight from the bytes of the MSH line."""
    if len(msh) < 8:
        return ""
    sep = msh[3:4]
    repetition = msh[5:6]
    parts = msh.split(sep)
    # parts[0] = "MSH", parts[1] = MSH-2, so MSH-18 is parts[17].
    if len(parts) <= 17:
        return ""
    value = parts[17].split(repetition)[0] if repetition else parts[17]
    return value.decode("ascii", "replace").strip()


def decode_message(raw: RawMessage, fallback: str = "") -> DecodedMessage:
    """Turn one message's bytes into text, refusing any byte its character set forbids.

    `fallback` is the character set configured for the laboratory (directory), read when
    MSH-18 is empty instead of ASCII-then-UTF-8."""
    if not raw.data.startswith(b"MSH"):
        raise NotHL7(_not_hl7_reason(raw.data))
    first_line = raw.data.split(b"\r", 1)[0]
    declared = declared_charset(first_line)
    warnings = list(raw.notes)

    if raw.decoded_as:
        codec = raw.decoded_as
        if declared and charset_codec(declared) not in ("utf-8", codec):
            raise UndecodableMessage(
                f"the file is {codec.upper()} (byte-order mark) but MSH-18 declares {declared!r}",
                Location("MSH", field=18),
            )
        return DecodedMessage(
            raw.index, raw.data, raw.data.decode("utf-8"), codec, declared, raw.batch
        )

    if declared:
        codec = charset_codec(declared)
        if codec in ("utf-16", "utf-32"):
            raise UndecodableMessage(
                f"MSH-18 declares {declared!r} but the message bytes are not {codec.upper()}"
                " (no byte-order mark, MSH readable as ASCII)",
                Location("MSH", field=18),
            )
    elif fallback:
        codec = charset_codec(fallback)
    else:
        codec = "ascii"

    if raw.had_bom and codec != "utf-8":
        if raw.data.isascii():
            warnings.append(
                "UTF-8 byte-order mark on a message declared"
                f" {declared or 'ASCII (MSH-18 empty)'}; the text is plain ASCII so both agree"
            )
        elif not declared:
            codec = "utf-8"  # the BOM is the declaration
        else:
            raise UndecodableMessage(
                f"the message starts with a UTF-8 byte-order mark but MSH-18 declares {declared!r};"
                " send one or the other",
                Location("MSH", field=18),
            )

    try:
        text = raw.data.decode(codec)
    except UnicodeDecodeError as error:
        if not declared and codec == "ascii":
            try:
                text = raw.data.decode("utf-8")
            except UnicodeDecodeError:
                raise _undecodable(raw.data, error.start, "MSH-18 is empty (ASCII)") from None
            codec = "utf-8"
            warnings.append(
                "MSH-18 is empty (ASCII by default) but the text holds non-ASCII characters;"
                " they are valid UTF-8 and were read as such: declare UNICODE UTF-8 in MSH-18"
            )
        elif not declared:
            raise _undecodable(
                raw.data,
                error.start,
                f"MSH-18 is empty; {fallback} as configured for the laboratory",
            ) from None
        else:
            raise _undecodable(raw.data, error.start, f"MSH-18 declares {declared!r}") from None
    return DecodedMessage(raw.index, raw.data, text, codec, declared, raw.batch, tuple(warnings))


def _undecodable(data: bytes, offset: int, declaration: str) -> UndecodableMessage:
    return UndecodableMessage(
        f"byte 0x{data[offset]:02X} is not valid in the declared character set ({declaration})",
        locate_offset(data.decode("latin-1"), offset, chr(data[3]) if len(data) > 3 else "|"),
    )


def _not_hl7_reason(data: bytes) -> str:
    """Name what the bytes are when we can tell: HPRIM is what French labs often send."""
    if data[:1] == b"H" and data[2:6] in (b"~^\\&", b"~^\\"):
        return (
            "this is an HPRIM Santé message (H record), not HL7 v2: labdispatch takes"
            " results as HL7 v2 ORU^R01"
        )
    if b"****LAB****" in data[:200] or data.startswith(b"****"):
        return (
            "this is an HPRIM Médecins text report, not HL7 v2: labdispatch takes results"
            " as HL7 v2 ORU^R01"
        )
    # Only what names a segment is quoted: the bytes after it may be a patient's data, and
    # this reason goes back in the ACK and into the quarantine's readable columns.
    head = data[:3].decode("latin-1")
    shown = f" (starts with {head!r})" if head.isalnum() and head.isupper() else ""
    return f"no MSH segment at the start: this is not an HL7 v2 message{shown}"
