"""HPRIM Médecins: the text reports laboratories have sent to practices through Apicrypt.

A report is a 12-line header (1 patient code, 2 last name, 3 first name, 4-5 address,
6 postcode and town, 7 birth date, 8 NIR, 9 report number, 10 date, 11 sender code and
name, 12 recipient code and name), free text, optional machine blocks from `****LAB****`
to `****FIN****` holding `RES|` result lines and `TEX|` text lines, and `****FINFICHIER****`
closing the report. A file may hold several reports one after the other: each is a result
of its own (a clinician is never sent another patient's report), delivered as its bytes
were sent. Lines 11 and 12 hold a code in a 10-character column, then the name (MedShake's
writer); when column 11 is not a blank, the code ends at the first blank instead.
"""

from __future__ import annotations

import hashlib
import re

from pipeline.hl7.facts import Order, RoutingFacts, status_word, summarise
from pipeline.hl7.participants import PERSON
from pipeline.hprim.errors import (
    MalformedHprim,
    MissingEndRecord,
    MissingHprimField,
    NotHprim,
    RecordLocation,
)
from pipeline.hprim.facts import FORMAT_MEDECINS, RECEIVER, HprimFile, HprimPart, People
from pipeline.hprim.text import UTF8_BOM, CharsetLookup, Line, decode, split_lines
from pipeline.hprim.text import control_part as part
from pipeline.identifiers import normalise_identifier

LAB = "****LAB****"
FIN = "****FIN****"
FINFICHIER = "****FINFICHIER****"
MARKERS = (LAB.encode(), FIN.encode(), FINFICHIER.encode())
HEADER_LINES = 12
CODE_WIDTH = 10
_RES_STATUS = re.compile(r"[A-Z]")


def looks_like_medecins(data: bytes) -> bool:
    """One of the three markers on a line of its own (every HL7 message is asked too: the
    cheap look for `****` first)."""
    if b"****" not in data:
        return False
    return any(line.content.strip() in MARKERS for line in split_lines(data[:1_000_000]))


def split_code(line: str) -> tuple[str, str]:
    """(code, name) of header line 11 or 12."""
    if len(line) > CODE_WIDTH and line[CODE_WIDTH] == " ":
        return line[:CODE_WIDTH].strip(), line[CODE_WIDTH:].strip()
    code, _, name = line.strip().partition(" ")
    return code, name.strip()


def _reports(lines: list[Line]) -> list[list[Line]]:
    """Lines of each report, the `****FINFICHIER****` line included; blank lines between
    reports are left out. A last report with no FINFICHIER comes out unterminated."""
    reports: list[list[Line]] = []
    current: list[Line] = []
    for line in lines:
        if not current and not line.content.strip():
            continue
        current.append(line)
        if line.content.strip() == FINFICHIER.encode():
            reports.append(current)
            current = []
    if current:
        reports.append(current)
    return reports


def header_of(data: bytes) -> tuple[str, str]:
    """(sender code, report number) of the first report, for a refused file's quarantine."""
    reports = _reports(split_lines(data))
    if not reports or len(reports[0]) < HEADER_LINES:
        return "", ""
    texts = [line.content.decode("latin-1").strip() for line in reports[0][:HEADER_LINES]]
    if any(text in (LAB, FIN, FINFICHIER) for text in texts):
        return "", ""
    return split_code(reports[0][10].content.decode("latin-1"))[0], texts[8]


def read_medecins(data: bytes, charsets: CharsetLookup | None = None) -> HprimFile:
    """Every report of the file; a file that breaks the rules is refused whole."""
    lines = split_lines(data)
    reports = _reports(lines)
    if not reports:
        raise NotHprim("the file is blank: no HPRIM Médecins report in it")
    for report in reports:
        _check_shape(report)
    sender = split_code(reports[0][10].content.decode("latin-1"))[0]
    configured = charsets(sender) if charsets is not None and sender else None

    def locate(offset: int) -> RecordLocation:
        number = next((line.number for line in reversed(lines) if line.start <= offset), 1)
        return RecordLocation("", line=number)

    decoded = decode(data, configured, locate)
    several = len(reports) > 1
    parts = []
    for report in reports:
        payload = data if not several else b"".join(line.raw for line in report)
        parts.append(
            HprimPart(payload, _facts(report, decoded.codec, payload, list(decoded.warnings)))
        )
    return HprimFile(tuple(parts), decoded.codec)


def _check_shape(report: list[Line]) -> None:
    first = report[0].number
    texts = [line.content.strip() for line in report]
    for position, text in enumerate(texts[:HEADER_LINES]):
        if text in MARKERS:
            raise MalformedHprim(
                f"the report starting on line {first} has {position} header line(s) before "
                f"{text.decode()}: an HPRIM Médecins report starts with 12 header lines "
                "(patient, dates, report number, sender, recipient); without them no sender "
                "or recipient is known",
                RecordLocation("", line=report[position].number),
            )
    if len(report) < HEADER_LINES or texts[-1] != FINFICHIER.encode():
        raise MissingEndRecord(
            f"the report starting on line {first} does not end with {FINFICHIER}: the file "
            "is incomplete (cut short in transfer?); send it whole",
            RecordLocation("", line=report[-1].number + 1),
        )
    in_lab: Line | None = None
    for line, text in zip(report, texts, strict=True):
        if text == LAB.encode():
            if in_lab is not None:
                raise MalformedHprim(
                    f"{LAB} again before the {FIN} closing the one on line {in_lab.number}",
                    RecordLocation("", line=line.number),
                )
            in_lab = line
        elif text == FIN.encode():
            in_lab = None
        elif text == FINFICHIER.encode() and in_lab is not None:
            raise MalformedHprim(
                f"the {LAB} block opened on line {in_lab.number} is not closed by {FIN}",
                RecordLocation("", line=line.number),
            )


def _facts(report: list[Line], codec: str, payload: bytes, warnings: list[str]) -> RoutingFacts:
    def text_of(line: Line) -> str:
        raw = line.content
        if raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
        return raw.decode(codec)

    header = [text_of(line) for line in report[:HEADER_LINES]]
    sender_code, sender_name = split_code(header[10])
    receiver_code, receiver_name = split_code(header[11])
    if not sender_code:
        raise MissingHprimField(
            "header line 11 (sender code and name) has no code: the laboratory must name itself",
            RecordLocation("", line=report[10].number),
        )
    number = header[8].strip()
    digest = hashlib.sha256(payload).hexdigest()[:16]
    control_id = f"{part(number)}-{digest}" if part(number) else digest

    statuses: list[str] = []
    results = 0
    in_lab = False
    for line in report[HEADER_LINES:]:
        text = text_of(line).strip()
        if text == LAB:
            in_lab = True
        elif text == FIN:
            in_lab = False
        elif in_lab and text.startswith("RES|"):
            results += 1
            fields = text.split("|")
            status = fields[9].strip().upper() if len(fields) > 9 else ""
            if status and _RES_STATUS.fullmatch(status):
                statuses.append(status_word(status))
        elif in_lab and text and not text.startswith("TEX") and text not in (FINFICHIER,):
            warnings.append(
                f"line {line.number} in a {LAB} block is neither RES| nor TEX|: kept, not read"
            )
    people = People()
    people.add(receiver_code, receiver_name, PERSON, RECEIVER, "line 12")
    if not people.drafts:
        warnings.append("header line 12 names no recipient")
    patient = normalise_identifier(header[0], "", sender_code)
    status = summarise(statuses)
    return RoutingFacts(
        control_id=control_id,
        sending_application=sender_name,
        sending_facility=sender_code,
        receiving_application=receiver_name,
        receiving_facility=receiver_code,
        message_type="ORU",
        version="",
        processing_id="P",
        sent_at=header[9].strip(),
        patient_ids=(patient,) if patient is not None else (),
        orders=(Order(1, number, "", "", status, results, tuple(dict.fromkeys(statuses))),)
        if results
        else (),
        result_status=status,
        documents=(),
        participants=people.freeze(),
        warnings=tuple(warnings),
        format=FORMAT_MEDECINS,
    )
