"""Bytes → lines of text for both HPRIM formats: line ends, byte-order mark, charset.

HPRIM declares no character set. A file is read in the one its laboratory is configured
with in the directory (`Laboratory.charset`), else as ASCII, else as UTF-8 when every byte
is valid UTF-8 (a warning says so); anything else is refused with the line and field of
the first bad byte. Nothing is guessed (docs/hprim.md).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.hl7.decode import charset_codec
from pipeline.hl7.errors import UnsupportedCharacterSet
from pipeline.hprim.errors import RecordLocation, UndecodableHprim

UTF8_BOM = codecs.BOM_UTF8
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n|$)")
#: A laboratory's code → the codec its files are read in ("" or None: none configured).
CharsetLookup = Callable[[str], str | None]


@dataclass(frozen=True)
class Line:
    """One physical line: where it starts in the file, its bytes without and with its end."""

    number: int  # 1-based
    start: int
    content: bytes
    raw: bytes  # content + the line end as sent ("" for a last line without one)


def split_lines(data: bytes) -> list[Line]:
    """Every line, whatever the line ends (CR, LF, CRLF, mixed); offsets into `data`."""
    lines: list[Line] = []
    position = 0
    size = len(data)
    while position < size:
        match = _LINE.match(data, position)
        assert match is not None
        raw = match.group(0)
        if not raw:
            break
        lines.append(Line(len(lines) + 1, position, raw.rstrip(b"\r\n"), raw))
        position += len(raw)
    return lines


def known_codec(name: str) -> str:
    """A configured charset name (IANA or HL7 table 0211) → Python codec; unknown: refused."""
    try:
        return charset_codec(name)
    except UnsupportedCharacterSet:
        pass
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise UndecodableHprim(
            f"the character set {name!r} configured for this laboratory is unknown"
        ) from None


@dataclass(frozen=True)
class Decoded:
    text: str
    codec: str
    warnings: tuple[str, ...]


def decode(
    data: bytes,
    configured: str | None,
    locate: Callable[[int], RecordLocation],
) -> Decoded:
    """The file's text in the charset chosen as the module docstring says. `locate` turns
    a byte offset into the line and field named in a refusal."""
    if data.startswith(UTF8_BOM):
        codec, how = "utf-8", "a UTF-8 byte-order mark"
        body = data[len(UTF8_BOM) :]
    elif configured:
        codec, how = known_codec(configured), f"{configured} (configured for this laboratory)"
        body = data
    else:
        codec, how, body = "ascii", "", data
    offset = len(data) - len(body)
    try:
        return Decoded(body.decode(codec), codec, ())
    except UnicodeDecodeError as error:
        if codec != "ascii" or how:
            raise _undecodable(data, offset + error.start, how, locate) from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _undecodable(data, offset + error.start, "", locate) from None
    return Decoded(
        text,
        "utf-8",
        (
            "the file holds non-ASCII characters and declares no character set; they are "
            "valid UTF-8 and were read as such (configure the laboratory's charset in the "
            "directory to say so)",
        ),
    )


def _undecodable(
    data: bytes,
    offset: int,
    how: str,
    locate: Callable[[int], RecordLocation] | None = None,
) -> UndecodableHprim:
    location = locate(offset) if locate is not None else None
    if how:
        reason = f"byte 0x{data[offset]:02X} is not valid in {how}"
    else:
        reason = (
            f"byte 0x{data[offset]:02X} is neither ASCII nor UTF-8, and HPRIM files declare "
            "no character set: have the laboratory's charset set in the directory "
            "(`labdispatch directory laboratory CODE --charset ISO-8859-1`, or "
            "windows-1252), or send UTF-8"
        )
    return UndecodableHprim(reason, location)


def configured_charset(charsets: CharsetLookup | None, laboratory: str) -> str | None:
    """The charset configured for `laboratory`, if any."""
    if charsets is None or not laboratory:
        return None
    return charsets(laboratory) or None


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def control_part(value: str) -> str:
    """A value fit for a control ID: no blanks or separators (readable in `trace`)."""
    return _SAFE.sub("_", value.strip()).strip("_")[:60]
