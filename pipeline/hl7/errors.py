"""Why a message was refused, in words a laboratory can act on, and its HL7 error code.

Each error knows the ACK code it deserves (AR: we cannot process this kind of message at
all; AE: this message's content is wrong) and the HL7 table 0357 code, so the edge (MLLP,
folder, API) maps errors to ACKs without string matching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pipeline.errors import LabdispatchError


@dataclass(frozen=True)
class Location:
    """Where in the message the problem is.

    `OBR[2]-16.1` reads "second OBR, field 16, component 1".
    """

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def __str__(self) -> str:
        text = self.segment if self.sequence == 1 else f"{self.segment}[{self.sequence}]"
        if self.field is not None:
            text += f"-{self.field}"
            if self.component is not None:
                text += f".{self.component}"
        return text


class IntakeError(LabdispatchError):
    """A message we will not accept; `location` names the segment and field when we know it."""

    ack_code: ClassVar[str] = "AE"
    hl7_code: ClassVar[str] = "207"
    hl7_text: ClassVar[str] = "Application internal error"

    def __init__(self, reason: str, location: Location | None = None) -> None:
        self.reason = reason
        self.location = location
        where = str(location) if location else ""
        # Reasons often open with the field they are about ("MSH-10 is empty"): say it once.
        prefix = f"{where}: " if where and not reason.startswith(where) else ""
        super().__init__(prefix + reason)


# --- bytes we cannot turn into text -------------------------------------------------------


class UndecodableMessage(IntakeError):
    """The bytes do not match the declared (or only possible) character set."""

    ack_code = "AR"
    hl7_code = "102"
    hl7_text = "Data type error"


class UnsupportedCharacterSet(UndecodableMessage):
    """MSH-18 names a character set we do not know how to read."""


# --- text that is not a well-formed HL7 message ---------------------------------------------


class MalformedMessage(IntakeError):
    """The message breaks HL7 encoding rules or the structure of its type."""

    hl7_code = "100"
    hl7_text = "Segment sequence error"


class NotHL7(MalformedMessage):
    """No MSH segment where a message must start: not HL7 v2 at all, or truncated."""

    ack_code = "AR"


class BadDelimiters(MalformedMessage):
    """MSH-1 / MSH-2 do not declare usable separators, so no field can be read."""

    ack_code = "AR"
    hl7_code = "102"
    hl7_text = "Data type error"


class BrokenLine(MalformedMessage):
    """A line that does not start with a segment name: a wrapped or corrupted segment."""


class UnknownSegment(MalformedMessage):
    """A segment name the message's HL7 version does not define (and not a Z-segment)."""


class MissingSegment(MalformedMessage):
    """A segment the message type requires is absent."""


class MissingField(MalformedMessage):
    """A field we need (control ID, message type, …) is empty."""

    hl7_code = "101"
    hl7_text = "Required field missing"


class InvalidValue(MalformedMessage):
    """A field holds a value outside what HL7 allows there."""

    hl7_code = "102"
    hl7_text = "Data type error"


class FieldTooLong(InvalidValue):
    """A header field that keys the message is longer than the ledger keeps: refused (AR),
    never cut short, since a shortened key could merge two laboratories' results."""

    ack_code = "AR"


# --- messages we do not handle --------------------------------------------------------------


class UnsupportedMessage(IntakeError):
    """A well-formed message that labdispatch does not take."""

    ack_code = "AR"


class UnsupportedMessageType(UnsupportedMessage):
    hl7_code = "200"
    hl7_text = "Unsupported message type"


class UnsupportedEvent(UnsupportedMessage):
    hl7_code = "201"
    hl7_text = "Unsupported event code"


class UnsupportedProcessingId(UnsupportedMessage):
    hl7_code = "202"
    hl7_text = "Unsupported processing id"


class UnsupportedVersion(UnsupportedMessage):
    hl7_code = "203"
    hl7_text = "Unsupported version id"
