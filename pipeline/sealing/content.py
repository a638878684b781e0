"""What the clinician receives inside the envelope: a MIME entity holding a short summary,
the HL7 message exactly as the laboratory sent it, and each embedded document as a file.

The summary is deliberately thin: sender, control ID, status and how many documents. It
carries no patient identity and no result value, so a notification preview, a mail index or
a misdirected print never shows health data; the HL7 attachment is the result. That
attachment is base64-encoded so no mail hop or line-ending conversion can change a byte of
it: practice software imports it as the laboratory wrote it (CR segment ends, its MSH-18
charset).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.hl7.documents import EmbeddedDocument, mime_charset, safe_filename_stem
from pipeline.hl7.facts import RoutingFacts

CRLF = b"\r\n"

#: HL7 v2 in its ER7 ("pipe and hat") encoding. No IANA registration exists for ER7;
#: `application/hl7-v2` is the name HL7's own "HL7 over HTTP" specification, HAPI and
#: Smile CDR use and the one HL7's media-type proposal put forward (beside the registered
#: `application/hl7v2+xml` for the XML encoding); `application/edi-hl7` is not registered
#: either. An `application/` type also keeps mail clients from rendering or re-encoding
#: the message as text.
HL7_TYPE = "application/hl7-v2"
#: HPRIM (Santé or Médecins) has no registered media type. `application/octet-stream`
#: with a `.hpr` name, as practice software files it: a `text/` type would let a mail
#: client convert its CR or LF line ends, and the bytes must reach it unchanged.
HPRIM_TYPE = "application/octet-stream"
HPRIM_EXTENSION = "hpr"
FORMAT_WORDS = {"hprim-sante": "HPRIM Santé", "hprim-medecins": "HPRIM Médecins"}
_HL7_TIMESTAMP = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,39}")
_UNSAFE = re.compile(r"[^A-Za-z0-9]+")


@dataclass(frozen=True)
class ResultSummary:
    """The facts a summary may show: about the message, never about the patient."""

    sending_facility: str
    sending_application: str
    control_id: str
    message_type: str
    version: str
    sent_at: str  # MSH-7 as written
    result_status: str  # a facts.STATUS_WORDS value, or ""
    document_count: int
    format: str = "hl7v2"

    @classmethod
    def from_facts(cls, facts: RoutingFacts) -> ResultSummary:
        return cls(
            sending_facility=facts.sending_facility,
            sending_application=facts.sending_application,
            control_id=facts.control_id,
            message_type=facts.message_type,
            version=facts.version,
            sent_at=facts.sent_at,
            result_status=facts.result_status,
            document_count=sum(1 for document in facts.documents if document.readable),
            format=facts.format,
        )


def summary_text(summary: ResultSummary) -> str:
    """The plain-text part: enough to know what arrived and where the result is."""
    sender = one_line(summary.sending_facility) or one_line(summary.sending_application) or "?"
    application = one_line(summary.sending_application)
    if application and application != sender:
        sender += f" ({application})"
    control_id = one_line(summary.control_id)
    documents = summary.document_count
    kind = FORMAT_WORDS.get(summary.format)
    if kind is not None:
        message = f"{kind} {one_line(summary.message_type)} {one_line(summary.version)}".strip()
        attached = f"HPRIM file {safe_filename_stem(control_id)}.{HPRIM_EXTENSION}"
    else:
        message = f"HL7 {one_line(summary.message_type)} version {one_line(summary.version)}"
        attached = f"HL7 file {safe_filename_stem(control_id)}.hl7"
    lines = [
        f"Laboratory result from {sender}",
        "",
        f"Control ID:  {control_id}",
        f"Status:      {one_line(summary.result_status) or 'not stated'}",
        f"Sent:        {_timestamp(summary.sent_at)}",
        f"Message:     {message}",
        f"Documents:   {documents} attached" if documents else "Documents:   none",
        "",
        f"The full result is in the attached {attached}: open it in your practice software.",
        "This summary deliberately shows no patient details and no result values.",
    ]
    return "\r\n".join(lines) + "\r\n"


def build_content(
    hl7: bytes,
    charset: str,
    control_id: str,
    summary: ResultSummary,
    documents: Sequence[EmbeddedDocument],
    *,
    media_type: str = HL7_TYPE,
    extension: str = "hl7",
) -> bytes:
    """The MIME entity to sign: multipart/mixed with the summary, `<control_id>.hl7` and
    each document, CRLF line ends throughout, 7-bit only.

    `charset` names the character set of `hl7` (a Python codec or IANA name; for bytes
    from intake, `pipeline.hl7.documents.message_charset(message)`); it is declared, not
    applied: the bytes are attached unchanged.

    Written by hand rather than with the `email` package, which costs ~0.8 ms for a 2 KB
    result and ~12 ms for one with a 150 KB PDF (its header parsing and line-by-line
    generator); every value placed in a header here is first reduced to a safe token.
    """
    stem = safe_filename_stem(control_id)
    parts = [
        _part(
            [("Content-Type", "text/plain", [("charset", "utf-8")])],
            "quoted-printable",
            binascii.b2a_qp(summary_text(summary).encode("utf-8"), istext=True),
        ),
        _attachment(media_type, f"{stem}.{extension}", mime_charset(charset), hl7),
    ]
    for document in documents:
        mime_type = document.mime_type.lower()
        if not _MIME_TYPE.fullmatch(mime_type):
            mime_type = "application/octet-stream"
        document_charset = document.charset if _TOKEN.fullmatch(document.charset) else ""
        parts.append(_attachment(mime_type, document.filename, document_charset, document.data))
    boundary = _boundary(parts)
    delimiter = b"--" + boundary + CRLF
    return b"".join(
        [
            _header("Content-Type", "multipart/mixed", [("boundary", boundary.decode())]),
            CRLF,
            *(delimiter + part for part in parts),
            b"--" + boundary + b"--" + CRLF,
        ]
    )


def _attachment(mime_type: str, filename: str, charset: str, data: bytes) -> bytes:
    name = _safe_filename(filename)
    params = [("charset", charset)] if charset else []
    return _part(
        [
            ("Content-Type", mime_type, [*params, ("name", name)]),
            ("Content-Disposition", "attachment", [("filename", name)]),
        ],
        "base64",
        base64_lines(data),
    )


def base64_lines(data: bytes) -> bytes:
    """Base64 in 76-column lines, each ending CRLF, as MIME wants it (one encoding pass and
    one join: `base64.encodebytes` loops in Python over 57-byte chunks, then LF must become
    CRLF in a second pass)."""
    encoded = base64.b64encode(data)
    if not encoded:
        return b""
    return CRLF.join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + CRLF


def _part(
    headers: list[tuple[str, str, list[tuple[str, str]]]], encoding: str, body: bytes
) -> bytes:
    """One body part: headers, blank line, body ending in CRLF (the CRLF before the next
    boundary belongs to the boundary, RFC 2046 5.1.1)."""
    head = b"".join(_header(name, value, params) for name, value, params in headers)
    return b"".join(
        [head, b"Content-Transfer-Encoding: ", encoding.encode("ascii"), CRLF, CRLF, body or CRLF]
    )


def _header(name: str, value: str, params: list[tuple[str, str]]) -> bytes:
    """`Name: value; key="param"`, each parameter on its own folded line when the header
    would pass 78 columns. Values and parameters are safe ASCII tokens by construction."""
    pieces = [f"{name}: {value}"] + [f'{key}="{param}"' for key, param in params]
    line = "; ".join(pieces)
    if len(line) > 78:
        line = ";\r\n ".join(pieces)
    return line.encode("ascii") + CRLF


def _safe_filename(filename: str) -> str:
    """A document's name as given, reduced to the characters `safe_filename_stem` allows."""
    stem, dot, extension = filename.rpartition(".")
    if not dot:
        stem, extension = filename, "bin"
    extension = _UNSAFE.sub("", extension)[:10].lower() or "bin"
    return f"{safe_filename_stem(stem)}.{extension}"


def _boundary(parts: list[bytes]) -> bytes:
    """A random boundary; "=_" cannot occur in base64 or quoted-printable, and we check."""
    while True:
        boundary = b"=_labdispatch_" + secrets.token_hex(12).encode("ascii")
        if not any(boundary in part for part in parts):
            return boundary


def one_line(value: str) -> str:
    """One line of display text: HL7 values may hold escaped line breaks or controls."""
    return " ".join(_CONTROL.sub(" ", value).split())


def _timestamp(value: str) -> str:
    """HL7 TS (YYYYMMDDHHMMSS[+ZZZZ]) as 2026-11-28 09:30:00 +0100; kept as written when
    it is not one."""
    value = value.strip()
    match = _HL7_TIMESTAMP.fullmatch(value)
    if match is None:
        return one_line(value) or "not stated"
    year, month, day, hour, minute, second, zone = match.groups()
    text = "-".join(part for part in (year, month, day) if part)
    if hour:
        text += " " + ":".join(part for part in (hour, minute or "00", second) if part)
    if zone:
        text += f" {zone}"
    return text
