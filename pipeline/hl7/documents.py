"""Embedded documents (OBX-2 = ED) as files a clinician can open, and the charset names a
MIME part must declare for HL7 text.

Labs put the signed report (PDF, CDA XML…) inside the HL7 message as an ED value:
`source^type^subtype^encoding^data` (ED-1 to ED-5). The data is Base64, Hex or plain text
(`A`), and arrives HL7-escaped like any field: line breaks written as `\\.br\\` or
`\\X0D0A\\`, Base64 wrapped at 76 columns or sent in separately padded chunks. Intake
decodes every document (`facts` calls `decode_ed`), so one that does not decode is refused
in the ACK, while the laboratory can still resend it, instead of failing at sealing hours
later; sealing decodes again with the same code, so the two can never disagree.
"""

from __future__ import annotations

import binascii
import codecs
import re
from dataclasses import dataclass

from pipeline.hl7.errors import InvalidValue, Location
from pipeline.hl7.parse import Hl7Message
from pipeline.hl7.segments import Delimiters, Segment, component_value, unescape

#: ED (OBX-5) type and subtype → media type; read by `facts` (the document list in the
#: ACK and the ledger) and here (the attachment), so both name a document alike.
ED_MIME_TYPES = {
    ("APPLICATION", "PDF"): "application/pdf",
    ("AP", "PDF"): "application/pdf",
    ("TEXT", "XML"): "text/xml",
    ("TEXT", "HTML"): "text/html",
    ("TEXT", "RTF"): "text/rtf",
    ("TEXT", ""): "text/plain",
    ("IMAGE", "JPEG"): "image/jpeg",
    ("IMAGE", "PNG"): "image/png",
    ("IMAGE", "TIFF"): "image/tiff",
}

#: File name extensions for the types labs send; anything else ends in `.bin` unless its
#: MIME subtype is itself a plain short word (`audio/ogg` → `.ogg`).
EXTENSIONS = {
    "application/pdf": "pdf",
    "text/xml": "xml",
    "application/xml": "xml",
    "text/html": "html",
    "text/rtf": "rtf",
    "application/rtf": "rtf",
    "text/plain": "txt",
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/tiff": "tif",
}
#: Top-level MIME types (RFC 2046 and IANA): HL7 table 0191 codes such as NS or SI are not
#: MIME types, and a mail client must never be handed one as if it were.
MIME_TOP_LEVEL = frozenset({"application", "audio", "font", "image", "model", "text", "video"})
_TOKEN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_SHORT_WORD = re.compile(r"[a-z0-9]{1,8}")
_UNSAFE_FILENAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
_BASE64_CHUNK = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_WIDE_CODECS = ("utf-16", "utf-32")
_ESCAPE_SEQUENCES: dict[str, re.Pattern[str]] = {}

#: Python codec (as `decode` names it) → IANA charset name for MIME `charset=` parameters.
MIME_CHARSETS = {
    "ascii": "US-ASCII",
    "utf-8": "UTF-8",
    "utf-16": "UTF-16",
    "utf-32": "UTF-32",
    "cp1252": "windows-1252",
    "gb18030": "GB18030",
    "euc_kr": "EUC-KR",
    "big5": "Big5",
    **{f"iso8859-{n}": f"ISO-8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}


@dataclass(frozen=True)
class EmbeddedDocument:
    """One embedded document, decoded, under a file name safe on any system."""

    filename: str
    mime_type: str
    data: bytes
    #: IANA charset of a text document sent as HL7 text (ED-4 = A); "" when the bytes came
    #: Base64- or Hex-encoded and only the document itself knows (an XML declaration...).
    charset: str = ""


def extract_documents(message: Hl7Message) -> list[EmbeddedDocument]:
    """Every readable ED observation of the message, in message order, named
    `<control_id>-<n>.<ext>` (n counts every ED, so the same message always yields the same
    file names). One whose data cannot be decoded is left out: intake has already warned
    the laboratory, and it still travels inside the HL7 message."""
    stem = safe_filename_stem(message.control_id)
    documents: list[EmbeddedDocument] = []
    number = 0
    for obx in message.segments:
        if obx.name != "OBX" or obx.value(2).strip().upper() != "ED":
            continue
        components = obx.components(5)
        delimiters = obx.delimiters
        mime_type = ed_mime_type(
            component_value(components, 2, delimiters), component_value(components, 3, delimiters)
        )
        number += 1
        try:
            data, text_codec = _decode(obx, message.charset)
        except InvalidValue:
            continue
        documents.append(
            EmbeddedDocument(
                filename=f"{stem}-{number}.{extension(mime_type)}",
                mime_type=mime_type,
                data=data,
                charset=mime_charset(text_codec) if text_codec else "",
            )
        )
    return documents


def decode_ed(obx: Segment, charset: str) -> bytes:
    """The bytes of the ED value in OBX-5, or `InvalidValue` naming OBX[n]-5 and why.

    `charset` is the codec the message was read with: text documents (ED-4 = A) are given
    back in the bytes the laboratory wrote, so an XML declaration inside still holds.
    """
    return _decode(obx, charset)[0]


def _decode(obx: Segment, charset: str) -> tuple[bytes, str]:
    """The document's bytes, and the codec they are in when it was sent as text (A)."""
    delimiters = obx.delimiters
    components = obx.components(5)
    encoding = component_value(components, 4, delimiters).strip()
    raw = components[4] if len(components) > 4 else ""
    text = _unescape(raw, delimiters)
    kind = encoding.upper()
    if kind == "BASE64":
        return _base64(text, obx), ""
    if kind == "HEX":
        return _hex(text, obx), ""
    if not text:
        return b"", ""
    if kind == "A":
        codec = data_codec(charset)
        try:
            return text.encode(codec), codec
        except UnicodeEncodeError:
            # An \\Xhh\\ escape can spell a character the message charset lacks.
            return text.encode("utf-8"), "utf-8"
    raise InvalidValue(
        f"the embedded document's encoding (ED-4) is {encoding or 'empty'}; HL7 allows"
        " Base64, Hex or A (text), so the document cannot be read",
        Location("OBX", obx.sequence, 5, 4),
    )


def _unescape(raw: str, delimiters: Delimiters) -> str:
    """`segments.unescape`, sequence by sequence: it walks the text a character at a time
    (~15 ms for a 200 KB report wrapped with \\.br\\ every 76 columns), this hands it only
    the escape sequences. Same pairing of escape characters, same result."""
    escape = delimiters.escape
    if not escape or escape not in raw:
        return raw
    pattern = _ESCAPE_SEQUENCES.get(escape)
    if pattern is None:
        quoted = re.escape(escape)
        pattern = _ESCAPE_SEQUENCES[escape] = re.compile(f"{quoted}[^{quoted}]*{quoted}")
    # A wrapped report repeats one sequence (\\.br\\) thousands of times: resolve it once.
    resolved: dict[str, str] = {}

    def resolve(match: re.Match[str]) -> str:
        sequence = match.group()
        text = resolved.get(sequence)
        if text is None:
            text = resolved[sequence] = unescape(sequence, delimiters)
        return text

    return pattern.sub(resolve, raw)


def _base64(text: str, obx: Segment) -> bytes:
    try:
        return _base64_quanta(text)  # the common case, at C speed: one unbroken run
    except ValueError:  # binascii.Error, or non-ASCII text
        pass
    compact = "".join(text.split())
    try:
        return _base64_quanta(compact)
    except ValueError:
        pass
    # Some senders encode in chunks and concatenate them, padding included ("...==QUJD").
    chunks = _BASE64_CHUNK.findall(compact)
    if "".join(chunks) == compact and len(chunks) > 1:
        try:
            return b"".join(_base64_quanta(chunk) for chunk in chunks)
        except ValueError:
            pass
    stray = re.search(r"[^A-Za-z0-9+/=]", compact)
    if stray is not None:
        reason = f"character {stray.group()!r} is not Base64"
    elif "=" in compact.rstrip("="):
        reason = "'=' padding appears in the middle of the data"
    else:
        reason = (
            f"{len(compact)} Base64 characters cannot be a whole number of bytes: the data"
            " looks truncated"
        )
    raise InvalidValue(
        f"the embedded document (ED-5, Base64) does not decode: {reason}; resend the"
        " result with the complete document",
        Location("OBX", obx.sequence, 5, 5),
    )


def _base64_quanta(chunk: str) -> bytes:
    """Strict Base64, except that '=' padding a sender dropped is restored (unambiguous,
    so no reason to refuse); `binascii` alone would accept stray '=' after a full quantum."""
    missing = -len(chunk) % 4
    if missing in (1, 2):
        chunk += "=" * missing
    if len(chunk) % 4:
        raise binascii.Error("not a whole number of Base64 quanta")
    return binascii.a2b_base64(chunk, strict_mode=True)


def _hex(text: str, obx: Segment) -> bytes:
    compact = "".join(text.split())
    try:
        return bytes.fromhex(compact)
    except ValueError:
        stray = re.search(r"[^0-9A-Fa-f]", compact)
        reason = (
            f"character {stray.group()!r} is not hexadecimal"
            if stray is not None
            else f"{len(compact)} hex digits is an odd number: the data looks truncated"
        )
        raise InvalidValue(
            f"the embedded document (ED-5, Hex) does not decode: {reason}; resend the result"
            " with the complete document",
            Location("OBX", obx.sequence, 5, 5),
        ) from None


# --- names -----------------------------------------------------------------------------------


def ed_mime_type(kind: str, subtype: str) -> str:
    """A real MIME type for ED-2 / ED-3, `application/octet-stream` when they are not one."""
    kind, subtype = kind.strip().upper(), subtype.strip().upper()
    known = ED_MIME_TYPES.get((kind, subtype))
    if known is not None:
        return known
    maintype, minor = kind.lower(), subtype.lower()
    if maintype in MIME_TOP_LEVEL and _TOKEN.fullmatch(minor):
        return f"{maintype}/{minor}"
    return "application/octet-stream"


def extension(mime_type: str) -> str:
    known = EXTENSIONS.get(mime_type)
    if known is not None:
        return known
    subtype = mime_type.partition("/")[2]
    return subtype if _SHORT_WORD.fullmatch(subtype) else "bin"


def safe_filename_stem(control_id: str) -> str:
    """MSH-10 as a file name: ASCII letters, digits, '.', '_' and '-' only, never hidden or
    empty, at most 64 characters, so no mail client or file system can misread it."""
    stem = _UNSAFE_FILENAME_CHARACTERS.sub("_", control_id.strip()).strip("._-")
    return stem[:64] or "result"


def data_codec(charset: str) -> str:
    """The codec of a message's bytes as intake holds them: UTF-16/32 files are re-encoded
    to UTF-8 when they are split into messages (`decode.split_messages`)."""
    name = codecs.lookup(charset).name
    return "utf-8" if name.startswith(_WIDE_CODECS) else name


def mime_charset(codec: str) -> str:
    """The IANA name (for `charset=`) of a Python codec or charset name."""
    name = codecs.lookup(codec).name
    return MIME_CHARSETS.get(name, name.upper())


def message_charset(message: Hl7Message) -> str:
    """The IANA charset of `message.data` (and of `IntakeResult.data`)."""
    return mime_charset(data_codec(message.charset))
