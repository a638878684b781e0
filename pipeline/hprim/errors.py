"""Why an HPRIM file was refused: line (record), field and reason, in a lab's words.

The errors are `IntakeError`s, so the edges (folder, API, quarantine, inspect) treat them
exactly as HL7 refusals; `hl7_code` keeps the HL7 table 0357 meaning for the API answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.hl7.errors import IntakeError, Location


@dataclass(frozen=True)
class RecordLocation(Location):
    """`line 5 (OBR record 2), field 17`: the physical line a record starts on, its type
    and rank among records of that type, and the field (numbered as the HPRIM
    specification does: the record type is field 1)."""

    line: int = 0

    def __str__(self) -> str:
        parts = []
        if self.line:
            parts.append(f"line {self.line}")
        if self.segment:
            record = f"{self.segment} record"
            if self.sequence != 1:
                record += f" {self.sequence}"
            parts.append(f"({record})" if parts else record)
        text = " ".join(parts)
        if self.field is not None:
            text += f", field {self.field}"
            if self.component is not None:
                text += f" component {self.component}"
        return text


class HprimError(IntakeError):
    """An HPRIM file (or one result of it) we will not accept."""


class NotHprim(HprimError):
    """Neither an H record nor an HPRIM Médecins report where one must start."""

    ack_code = "AR"
    hl7_code = "100"
    hl7_text = "Segment sequence error"


class UndecodableHprim(HprimError):
    """Bytes that are not valid in the character set the file is read in."""

    ack_code = "AR"
    hl7_code = "102"
    hl7_text = "Data type error"


class MalformedHprim(HprimError):
    """The file breaks HPRIM's structure: record order, delimiters, a wrapped line."""

    hl7_code = "100"
    hl7_text = "Segment sequence error"


class MissingEndRecord(MalformedHprim):
    """No L record (HPRIM Santé) or no `****FINFICHIER****` (Médecins): truncated."""


class CountMismatch(MalformedHprim):
    """The L record's counts disagree with what the file holds."""


class MissingHprimField(MalformedHprim):
    """A field we need (the sender, above all) is empty."""

    hl7_code = "101"
    hl7_text = "Required field missing"


class UnsupportedHprim(HprimError):
    """A well-formed HPRIM file that is not a result (context) or of a version we do not read."""

    ack_code = "AR"
    hl7_code = "200"
    hl7_text = "Unsupported message type"


class UnsupportedHprimVersion(UnsupportedHprim):
    hl7_code = "203"
    hl7_text = "Unsupported version id"
