"""Routing facts: what a result is and who must get it, read once at intake.

Everything downstream (ledger keys, routing, the ACK, `labdispatch inspect`) works from
these facts rather than re-reading HL7, so the message is tokenized once.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.hl7 import reference
from pipeline.hl7.documents import ED_MIME_TYPES, decode_ed
from pipeline.hl7.errors import IntakeError
from pipeline.hl7.parse import Hl7Message
from pipeline.hl7.participants import Participant, extract_participants
from pipeline.hl7.segments import Segment, component_value
from pipeline.identifiers import Identifier, normalise_identifier

#: OBR-25 (table 0123) and OBX-11 (table 0085) codes, in the words labs and clinicians use.
STATUS_WORDS = {
    "P": "preliminary",
    "F": "final",
    "C": "corrected",
    "D": "deleted",
    "X": "cancelled",
    "I": "pending",
    "R": "unverified",
    "S": "partial",
    "A": "partial",
    "U": "final",
    "W": "wrong",
    "O": "ordered",
    "N": "not asked",
    "Y": "no order",
    "Z": "no patient",
}
#: When orders disagree, the message takes the status that most needs a reader's attention.
STATUS_PRECEDENCE = (
    "deleted",
    "cancelled",
    "corrected",
    "wrong",
    "preliminary",
    "partial",
    "unverified",
    "pending",
    "final",
)
#: ORC-1 order control codes that withdraw what was sent before.
CANCEL_CONTROLS = frozenset({"CA", "OC", "DC", "CR"})


@dataclass(frozen=True)
class Document:
    """An embedded document (OBX-2 = ED): kept for sealing, counted in the summary."""

    set_id: str
    order: int  # which OBR (1-based) it belongs to; 0 when before any OBR
    code: str  # OBX-3.1
    mime_type: str
    encoding: str  # ED-4: Base64, Hex, A
    size: int  # bytes once decoded (0 when it cannot be decoded)
    #: Why the data cannot be decoded ("" when it can): such a document still travels inside
    #: the HL7 message, but is not attached as a file of its own.
    problem: str = ""

    @property
    def readable(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class Order:
    """One OBR group: the order it answers and the status of its results."""

    sequence: int
    placer: str  # OBR-2.1 (or ORC-2.1)
    filler: str  # OBR-3.1 (or ORC-3.1)
    service: str  # OBR-4: code^text
    status: str  # a STATUS_WORDS value, or "" when neither OBR-25 nor OBX-11 says
    observations: int
    observation_statuses: tuple[str, ...]


@dataclass(frozen=True)
class RoutingFacts:
    control_id: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    version: str
    processing_id: str
    sent_at: str  # MSH-7 as written
    patient_ids: tuple[Identifier, ...]
    orders: tuple[Order, ...]
    result_status: str
    documents: tuple[Document, ...]
    participants: tuple[Participant, ...]
    warnings: tuple[str, ...]
    #: The format the laboratory sent: "hl7v2", "hprim-sante" or "hprim-medecins".
    format: str = "hl7v2"

    @property
    def sender(self) -> str:
        """The laboratory, as it names itself: sending facility, else sending application."""
        return self.sending_facility or self.sending_application


def status_word(code: str) -> str:
    """A result status code (OBX-11, OBR-25) as the word the trace and stats show."""
    return STATUS_WORDS.get(code.strip().upper(), code.strip())


def summarise(statuses: list[str]) -> str:
    """One status for several: the one that most needs a reader's attention wins
    (STATUS_PRECEDENCE), so a corrected or partial report never reads as final."""
    present = [status for status in statuses if status]
    if not present:
        return ""
    for word in STATUS_PRECEDENCE:
        if word in present:
            return word
    return present[0]


def _order_status(obr: Segment, orc: Segment | None, obx_codes: list[str]) -> str:
    """OBR-25 says the order's status; a cancel in ORC-1 with deleted OBX withdraws it."""
    control = orc.value(1).strip().upper() if orc is not None else ""
    if obx_codes and (
        all(code == "D" for code in obx_codes) or (control in CANCEL_CONTROLS and "D" in obx_codes)
    ):
        return "deleted"
    declared = obr.value(25).strip()
    if declared:
        return status_word(declared)
    words = [status_word(code) for code in obx_codes]
    if words and all(word == "final" for word in words):
        return "final"
    return summarise(words)


def _patient_ids(message: Hl7Message) -> tuple[Identifier, ...]:
    pid = message.first("PID")
    if pid is None:
        return ()
    found: list[Identifier] = []
    for repetition in range(len(pid.repetitions(3))):
        components = pid.components(3, repetition)
        identifier = normalise_identifier(
            component_value(components, 1, message.delimiters),
            component_value(components, 5, message.delimiters),
            component_value(components, 4, message.delimiters, 1),
            component_value(components, 4, message.delimiters, 2),
        )
        if identifier is not None and identifier not in found:
            found.append(identifier)
    return tuple(found)


def _document(obx: Segment, order: int, message: Hl7Message) -> Document:
    components = obx.components(5)
    delimiters = message.delimiters
    kind = component_value(components, 2, delimiters).strip().upper()
    subtype = component_value(components, 3, delimiters).strip().upper()
    encoding = component_value(components, 4, delimiters).strip()
    # Decoded now so that a document which cannot be read is reported in the ACK (a
    # warning naming OBX[n]-5), not discovered at sealing. It is not refused: the result's
    # values still matter to the clinician, and the lab's bytes travel whole inside the HL7
    # file (the national ANS samples carry such truncated mail bodies).
    problem = ""
    try:
        size = len(decode_ed(obx, message.charset))
    except IntakeError as error:
        size, problem = 0, error.reason
    mime = ED_MIME_TYPES.get((kind, subtype)) or (
        f"{kind.lower()}/{subtype.lower()}" if kind and subtype else "application/octet-stream"
    )
    return Document(
        set_id=obx.value(1).strip(),
        order=order,
        code=obx.value(3, 1).strip(),
        mime_type=mime,
        encoding=encoding,
        size=size,
        problem=problem,
    )


def extract_facts(message: Hl7Message) -> RoutingFacts:
    """Read the routing facts of a message that passed `parse`."""
    msh = message.msh
    warnings = list(message.warnings)
    orders: list[Order] = []
    documents: list[Document] = []
    order_status_codes = reference.table_codes(message.version, reference.TABLE_ORDER_RESULT_STATUS)
    obx_status_codes = reference.table_codes(
        message.version, reference.TABLE_OBSERVATION_RESULT_STATUS
    )

    current_orc: Segment | None = None
    current_obr: Segment | None = None
    obx_codes: list[str] = []

    def close_order() -> None:
        if current_obr is None:
            return
        orc = current_orc
        placer = current_obr.value(2).strip() or (orc.value(2).strip() if orc else "")
        filler = current_obr.value(3).strip() or (orc.value(3).strip() if orc else "")
        code = current_obr.value(4, 1).strip()
        text = current_obr.value(4, 2).strip()
        obr_status = current_obr.value(25).strip().upper()
        if obr_status and order_status_codes and obr_status not in order_status_codes:
            warnings.append(
                f"OBR[{current_obr.sequence}]-25 result status {obr_status!r} is not in HL7"
                " table 0123"
            )
        orders.append(
            Order(
                sequence=len(orders) + 1,
                placer=placer,
                filler=filler,
                service=f"{code}^{text}" if text else code,
                status=_order_status(current_obr, orc, obx_codes),
                observations=len(obx_codes),
                observation_statuses=tuple(
                    dict.fromkeys(status_word(code) for code in obx_codes if code)
                ),
            )
        )

    for segment in message.segments:
        if segment.name == "ORC":
            close_order()
            current_orc, current_obr, obx_codes = segment, None, []
        elif segment.name == "OBR":
            if current_obr is not None:
                close_order()
                current_orc = None  # an ORC belongs to the OBR that follows it
            current_obr, obx_codes = segment, []
        elif segment.name == "OBX":
            status = segment.value(11).strip().upper()
            if status and obx_status_codes and status not in obx_status_codes:
                warnings.append(
                    f"OBX[{segment.sequence}]-11 status {status!r} is not in HL7 table 0085"
                )
            obx_codes.append(status)
            if segment.value(2).strip().upper() == "ED":
                document = _document(segment, len(orders) + (current_obr is not None), message)
                documents.append(document)
                if not document.readable:
                    warnings.append(
                        f"OBX[{segment.sequence}]-5: the embedded document cannot be decoded "
                        f"({document.problem}); it is delivered inside the HL7 message only, "
                        "not as a file of its own"
                    )
    close_order()

    patient_ids = _patient_ids(message)
    return RoutingFacts(
        control_id=message.control_id,
        sending_application=msh.value(3).strip(),
        sending_facility=msh.value(4).strip(),
        receiving_application=msh.value(5).strip(),
        receiving_facility=msh.value(6).strip(),
        message_type=message.message_type,
        version=message.version,
        processing_id=message.processing_id,
        sent_at=msh.value(7).strip(),
        patient_ids=patient_ids,
        orders=tuple(orders),
        result_status=summarise([order.status for order in orders]),
        documents=tuple(documents),
        participants=extract_participants(message, frozenset(patient_ids)),
        warnings=tuple(warnings),
    )
