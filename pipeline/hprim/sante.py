"""HPRIM Santé (H2.0 to H2.4): records H, P, OBR, OBX, C, A, L → one result per patient.

Structure read: H, then per patient P (C*), then OBR (C*) and OBX (C*)... , then L. A line
starting `A|` continues the record before it (the line end and `A|` are dropped and the
rest joined on, as libHprim does). Lines may end in CR, LF or CRLF, mixed. Delimiters are
the ones the H record declares (`H|~^\\&`: component `~`, repetition `^`).

One file may hold several patients. Each patient is a result of its own, so a clinician is
never sent another patient's data: a one-patient file is recorded and delivered exactly as
sent; in a file of several, each patient's result is the file's H line, that patient's
lines and an L line counting them, all bytes as sent except that L line (docs/hprim.md).
"""

from __future__ import annotations

import bisect
import hashlib
import re

from pipeline.hl7.facts import Order, RoutingFacts, status_word, summarise
from pipeline.hl7.participants import ORDERING, ORGANISATION, PERSON
from pipeline.hprim.errors import (
    CountMismatch,
    MalformedHprim,
    MissingEndRecord,
    MissingHprimField,
    NotHprim,
    RecordLocation,
    UnsupportedHprim,
    UnsupportedHprimVersion,
)
from pipeline.hprim.facts import COPY_TO, FORMAT_SANTE, RECEIVER, HprimFile, HprimPart, People
from pipeline.hprim.records import Delimiters, Record
from pipeline.hprim.text import UTF8_BOM, CharsetLookup, Line, decode, split_lines
from pipeline.hprim.text import control_part as part
from pipeline.identifiers import Identifier, normalise_identifier

RECORD_TYPES = frozenset({"H", "P", "OBR", "OBX", "C", "A", "L"})
_RECORD_NAME = re.compile(r"[A-Z][A-Z0-9]{0,2}")
_VERSION = re.compile(r"H?\s*2\.([0-4])", re.IGNORECASE)
PROCESSING_IDS = frozenset({"P", "T", "D"})
#: OBR-26 and OBX-12 codes libHprim and Mediboard list (the HL7 ones, plus M for OBR).
OBR_STATUSES = frozenset("FPMIRCODX")
OBX_STATUSES = frozenset("RPFCIDXU")


def looks_like_sante(data: bytes) -> bool:
    """An H record with a declared field separator and encoding characters."""
    head = data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data
    head = head.lstrip(b"\r\n")
    return (
        len(head) >= 6
        and head[:1] == b"H"
        and not head[1:2].isalnum()
        and head[1:2] not in (b" ", b"\r", b"\n")
        and head[2:3] not in (b"\r", b"\n")
    )


def header_of(data: bytes) -> tuple[str, str]:
    """(sender code H-5.1, file id H-3) read from the raw H line, for a refused file's
    quarantine row; ("", "") when there is no H line."""
    if not looks_like_sante(data):
        return "", ""
    lines = [line for line in split_lines(data) if line.content.strip()]
    raw = lines[0].content
    text = raw.removeprefix(UTF8_BOM).decode("latin-1")
    delimiters = _delimiters(text)
    record = Record("H", 1, [lines[0]], text, delimiters)
    return record.value(5), record.value(3)


def _delimiters(text: str) -> Delimiters:
    sep = text[1]
    chars = text[2:6]
    chars = chars.split(sep, 1)[0]
    return Delimiters(
        field=sep,
        component=chars[0:1] or "~",
        repetition=chars[1:2] or "^",
        escape=chars[2:3],
        subcomponent=chars[3:4],
    )


def read_sante(data: bytes, charsets: CharsetLookup | None = None) -> HprimFile:
    """Every patient's result in the file; a file that breaks the rules is refused whole
    (HprimError naming line, record, field and reason)."""
    lines = split_lines(data)
    content = [line for line in lines if line.content.strip()]
    if not content or not looks_like_sante(data):
        raise NotHprim("no H record at the start: this is not an HPRIM Santé file")
    first = content[0].content
    if first.startswith(UTF8_BOM):
        first = first[len(UTF8_BOM) :]
    delimiters = _delimiters(first.decode("latin-1"))
    sep = delimiters.field
    if len(set(first[1:6].decode("latin-1"))) < 5 and first[5:6] != first[1:2]:
        raise MalformedHprim(
            "the H record must declare 5 distinct delimiters after H (as in H|~^\\&)",
            RecordLocation("H", field=2, line=content[0].number),
        )
    header = Record("H", 1, [content[0]], first.decode("latin-1"), delimiters)
    laboratory = header.value(5)
    configured = charsets(laboratory) if charsets is not None and laboratory else None
    starts = [line.start for line in lines]

    def locate(offset: int) -> RecordLocation:
        at = max(bisect.bisect_right(starts, offset) - 1, 0)
        line = lines[at]
        before = line.content[: max(offset - line.start, 0)]
        kind = line.content.split(sep.encode("latin-1"), 1)[0].decode("latin-1")
        field = before.count(sep.encode("latin-1")) + 1
        return RecordLocation(kind if _RECORD_NAME.fullmatch(kind) else "", 1, field, line=at + 1)

    decoded = decode(data, configured, locate)
    codec = decoded.codec
    records = _records(lines, codec, delimiters)
    warnings = list(decoded.warnings)
    return HprimFile(_patients(data, lines, records, delimiters, warnings), codec)


def _records(lines: list[Line], codec: str, delimiters: Delimiters) -> list[Record]:
    sep = delimiters.field
    records: list[Record] = []
    counts: dict[str, int] = {}
    for line in lines:
        raw = line.content
        if line.number == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
        text = raw.decode(codec)
        if not text.strip():
            continue
        kind = text.split(sep, 1)[0]
        if kind == "A" and text[1:2] == sep:
            if not records:
                raise MalformedHprim(
                    "an A (continuation) record with no record before it",
                    RecordLocation("A", line=line.number),
                )
            previous = records[-1]
            previous.text += text[2:]
            previous.lines.append(line)
            previous._fields = None
            continue
        if not _RECORD_NAME.fullmatch(kind) or not (text == kind or text[len(kind)] == sep):
            raise MalformedHprim(
                f"line {line.number} does not start with a record type (H, P, OBR, OBX, C, "
                f"A, L) followed by {sep!r}: a wrapped or corrupted line (a long record "
                "goes on in an A record)",
                RecordLocation("", line=line.number),
            )
        counts[kind] = counts.get(kind, 0) + 1
        records.append(Record(kind, counts[kind], [line], text, delimiters))
    return records


def _patients(
    data: bytes,
    lines: list[Line],
    records: list[Record],
    delimiters: Delimiters,
    warnings: list[str],
) -> tuple[HprimPart, ...]:
    header = records[0]
    end = next((record for record in records if record.kind == "L"), None)
    if end is None:
        last = records[-1]
        raise MissingEndRecord(
            f"no L (end) record: the file stops after line {last.lines[-1].number}, it is "
            "incomplete (cut short in transfer?); send it whole, ending with an L record",
            RecordLocation("L", line=last.lines[-1].number + 1),
        )
    if end is not records[-1]:
        after = records[records.index(end) + 1]
        raise MalformedHprim(
            "a record after the L (end) record: one file, one H … L; send each as its own file",
            after.at(),
        )
    _check_header(header, warnings)

    groups: list[list[Record]] = []
    ignored: dict[str, int] = {}
    for record in records[1:-1]:
        kind = record.kind
        if kind == "H":
            raise MalformedHprim("a second H record: one file, one header", record.at())
        if kind == "L":
            raise MalformedHprim("a second L record", record.at())  # pragma: no cover
        if kind == "P":
            groups.append([record])
            continue
        if kind not in RECORD_TYPES:
            ignored[kind] = ignored.get(kind, 0) + 1
            if groups:
                groups[-1].append(record)
            continue
        if not groups:
            raise MalformedHprim(
                f"an {kind} record before any P (patient) record: results belong to a patient",
                record.at(),
            )
        group = groups[-1]
        if kind == "OBX" and not any(r.kind == "OBR" for r in group):
            raise MalformedHprim(
                "an OBX (result) record before any OBR (request) record of its patient",
                record.at(),
            )
        group.append(record)
    for kind, number in ignored.items():
        warnings.append(f"{number} {kind} record(s) are not read by labdispatch (kept, not read)")
    if not groups:
        raise MalformedHprim(
            "no P (patient) record: the file holds no result", RecordLocation("P", line=0)
        )
    _check_counts(end, lines, records, len(groups))

    sequences: dict[str, Record] = {}
    several = len(groups) > 1
    for group in groups:
        patient = group[0]
        sequence = patient.value(2)
        if several and not sequence:
            raise MissingHprimField(
                "P-2 (sequence number) is empty in a file of several patients: each patient's "
                "result is named by it",
                patient.at(2),
            )
        if sequence in sequences:
            raise MalformedHprim(
                f"P-2 sequence number {sequence!r} is used by the P record on line "
                f"{sequences[sequence].line} too: number each patient of the file",
                patient.at(2),
            )
        sequences[sequence] = patient

    parts = []
    for group in groups:
        payload = data if not several else _excerpt(header, group, end)
        parts.append(HprimPart(payload, _facts(header, group, payload, warnings)))
    return tuple(parts)


def _check_header(header: Record, warnings: list[str]) -> None:
    if not header.value(5):
        raise MissingHprimField(
            "H-5 (sender) is empty: the laboratory must name itself (code~name)", header.at(5)
        )
    context = header.value(7).upper()
    if context and context != "ORU":
        raise UnsupportedHprim(
            f"H-7 context {context!r}: labdispatch takes results (ORU) only", header.at(7)
        )
    if not context:
        warnings.append("H-7 (context) is empty; read as results (ORU)")
    version = header.value(13)
    if not version:
        warnings.append("H-13 (version) is empty; read as HPRIM Santé 2.x")
    elif _VERSION.fullmatch(version) is None:
        raise UnsupportedHprimVersion(
            f"H-13 version {version!r}: labdispatch reads HPRIM Santé H2.0 to H2.4",
            header.at(13),
        )
    processing = header.value(12).upper()
    if processing and processing not in PROCESSING_IDS:
        error = UnsupportedHprim(
            f"H-12 processing mode {processing!r}: P (production), T (test) or D", header.at(12)
        )
        raise error
    if not processing:
        warnings.append("H-12 (processing mode) is empty; read as P (production)")


def _number(record: Record, number: int, what: str) -> int | None:
    raw = record.value(number)
    if not raw:
        return None
    if not raw.isdigit():
        raise CountMismatch(f"L-{number} ({what}) {raw!r} is not a number", record.at(number))
    return int(raw)


def _check_counts(end: Record, lines: list[Line], records: list[Record], patients: int) -> None:
    declared = _number(end, 4, "number of P records")
    if declared is not None and declared != patients:
        raise CountMismatch(
            f"L-4 says {declared} P (patient) record(s), the file holds {patients}: a patient "
            "is missing or extra (file cut short or joined?)",
            end.at(4),
        )
    declared_lines = _number(end, 5, "number of lines")
    if declared_lines is None:
        return
    physical = sum(1 for line in lines if line.content.strip())
    logical = len(records)
    if declared_lines not in (physical, logical):
        raise CountMismatch(
            f"L-5 says {declared_lines} line(s), the file holds {physical} lines "
            f"({logical} records once A continuations are joined), H and L included",
            end.at(5),
        )


def _excerpt(header: Record, group: list[Record], end: Record) -> bytes:
    """H line(s) + the patient's lines as sent + an L line counting them."""
    first_end = header.lines[0].raw[len(header.lines[0].content) :] or b"\r"
    body = b"".join(line.raw for record in [header, *group] for line in record.lines)
    if not body.endswith((b"\r", b"\n")):
        body += first_end
    sep = header.delimiters.field
    count = sum(len(record.lines) for record in group) + len(header.lines) + 1
    closing = f"L{sep}1{sep}{sep}1{sep}{count}".encode("ascii") + first_end
    return body + closing


def _facts(
    header: Record, group: list[Record], payload: bytes, file_warnings: list[str]
) -> RoutingFacts:
    warnings = list(file_warnings)
    patient = group[0]
    laboratory = header.value(5)
    receiver = header.value(10)
    sequence = patient.value(2) or "1"
    file_id, sent_at = header.value(3), header.value(14)
    if file_id or sent_at:
        control_id = "-".join(p for p in (part(file_id), part(sent_at), part(sequence)) if p)
    else:
        digest = hashlib.sha256(payload).hexdigest()[:16]
        control_id = f"{digest}-{part(sequence)}"

    patient_ids: list[Identifier] = []
    for number, authority in ((3, receiver), (4, laboratory), (5, laboratory)):
        identifier = normalise_identifier(patient.value(number), "", authority)
        if identifier is not None and identifier not in patient_ids:
            patient_ids.append(identifier)

    people = People()
    orders: list[Order] = []
    current: Record | None = None
    obx_codes: list[str] = []
    ranks: dict[str, int] = {}

    def label(record: Record, number: int) -> str:
        """`OBR[2]-17`, counted within the patient (an excerpt re-reads the same)."""
        rank = ranks.get(record.kind, 1)
        return f"{record.kind}-{number}" if rank == 1 else f"{record.kind}[{rank}]-{number}"

    def close() -> None:
        if current is None:
            return
        declared = current.value(26).upper()
        words = [status_word(code) for code in obx_codes if code]
        if declared:
            status = status_word(declared)
        elif words and all(word == "final" for word in words):
            status = "final"
        else:
            status = summarise(words)
        code, text = current.value(5, 1), current.value(5, 2)
        orders.append(
            Order(
                sequence=len(orders) + 1,
                placer=current.value(4, 1),
                filler=current.value(4, 2),
                service=f"{code}^{text}" if text else code,
                status=status,
                observations=len(obx_codes),
                observation_statuses=tuple(dict.fromkeys(words)),
            )
        )

    for record in group:
        ranks[record.kind] = ranks.get(record.kind, 0) + 1
        if record.kind == "OBR":
            close()
            current, obx_codes = record, []
            status = record.value(26).upper()
            if status and status not in OBR_STATUSES:
                warnings.append(f"{label(record, 26)} result status {status!r} is not an HPRIM one")
            for repetition in range(len(record.repetitions(17))):
                people.add(
                    record.value(17, 1, repetition),
                    record.value(17, 2, repetition),
                    PERSON,
                    ORDERING,
                    label(record, 17),
                    record.value(17, 3, repetition),
                )
        elif record.kind == "OBX":
            status = record.value(12).upper()
            if status and status not in OBX_STATUSES:
                warnings.append(f"{label(record, 12)} status {status!r} is not an HPRIM one")
            obx_codes.append(status)
            if record.value(3).upper() == "FIC":
                warnings.append(
                    f"{label(record, 6)} names a file ({record.value(6, 2) or '?'}) that is not "
                    "inside the HPRIM file: it is not delivered"
                )
    close()
    for repetition in range(len(patient.repetitions(14))):
        people.add(
            patient.value(14, 1, repetition),
            patient.value(14, 2, repetition),
            PERSON,
            COPY_TO,
            label(patient, 14),
            patient.value(14, 3, repetition),
        )
    people.add(receiver, header.value(10, 2), ORGANISATION, RECEIVER, "H-10")
    if not orders:
        warnings.append(f"the P record on line {patient.line} has no OBR (request) record")
    version = header.value(13)
    match = _VERSION.fullmatch(version)
    return RoutingFacts(
        control_id=control_id,
        sending_application=header.value(5, 2),
        sending_facility=laboratory,
        receiving_application=header.value(10, 2),
        receiving_facility=receiver,
        message_type="ORU",
        version=f"H2.{match.group(1)}" if match else version,
        processing_id=header.value(12).upper() or "P",
        sent_at=sent_at,
        patient_ids=tuple(patient_ids),
        orders=tuple(orders),
        result_status=summarise([order.status for order in orders]),
        documents=(),
        participants=people.freeze(),
        warnings=tuple(warnings),
        format=FORMAT_SANTE,
    )
