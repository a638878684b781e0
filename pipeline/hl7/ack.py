"""The answer a laboratory gets: AA, AE or AR, with the reason it can act on.

A sender that values MSH-15 or MSH-16 asks for HL7's enhanced acknowledgment mode: the
answer on the connection is then an accept (commit) ACK, CA / CE / CR, sent or not as
MSH-15 asks (`accept_ack_code`).

An ACK speaks the sender's language: its HL7 version (ERR-1 before 2.5, ERR-2/3/4/8 from
2.5), its encoding characters, its MSH-18 character set, and the swapped sender/receiver
fields copied as written. Even a message we could not parse gets an ACK built from
whatever of its MSH was readable.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.hl7.decode import charset_codec, declared_charset
from pipeline.hl7.errors import IntakeError, Location
from pipeline.hl7.parse import Hl7Message, read_msh
from pipeline.hl7.segments import DEFAULT_DELIMITERS, Delimiters, Segment, escape

ACCEPT = "AA"
ERROR = "AE"
REJECT = "AR"

_VERSION = re.compile(r"2\.[0-9]{1,2}(\.[0-9]{1,2})?")

#: Enhanced mode: the accept (commit) acknowledgment codes, HL7 table 0008.
COMMIT_ACCEPT = "CA"  # committed to the ledger: the sender may forget the message
COMMIT_ERROR = "CE"  # not accepted: an error in this message, or on our side (ledger down)
COMMIT_REJECT = "CR"  # not accepted: a message type, version or processing ID we refuse
_COMMIT_CODES = {ACCEPT: COMMIT_ACCEPT, ERROR: COMMIT_ERROR, REJECT: COMMIT_REJECT}

#: MSH-15 / MSH-16, HL7 table 0155: when the sender wants an acknowledgment.
ALWAYS = "AL"
NEVER = "NE"
ERROR_ONLY = "ER"  # only on an error or a rejection
SUCCESS_ONLY = "SU"  # only on success

SEVERITY_ERROR = "E"
SEVERITY_WARNING = "W"
DEFAULT_VERSION = "2.5"


@dataclass(frozen=True)
class AckIssue:
    """One ERR segment: what went wrong (or what to fix), where, and its table 0357 code."""

    reason: str
    hl7_code: str = "207"
    hl7_text: str = "Application internal error"
    severity: str = SEVERITY_ERROR
    location: Location | None = None

    @classmethod
    def from_error(cls, error: IntakeError) -> AckIssue:
        return cls(error.reason, error.hl7_code, error.hl7_text, SEVERITY_ERROR, error.location)

    @classmethod
    def warning(cls, text: str) -> AckIssue:
        return cls(text, "0", "Message accepted", SEVERITY_WARNING)


@dataclass(frozen=True)
class AckContext:
    """What of the original MSH an ACK repeats: separators, parties, IDs, version, charset.

    Party and ID fields hold the sender's raw (still escaped) field text, copied verbatim.
    """

    delimiters: Delimiters = DEFAULT_DELIMITERS
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = DEFAULT_VERSION
    charset: str = ""  # MSH-18 as the sender declared it
    accept_ack_type: str = ""  # MSH-15, upper-cased ("" when empty)
    application_ack_type: str = ""  # MSH-16, upper-cased ("" when empty)

    @classmethod
    def from_message(cls, message: Hl7Message) -> AckContext:
        return cls._from_msh(message.msh, message.declared_charset)

    @classmethod
    def from_raw(cls, data: bytes | str) -> AckContext:
        """Best effort on a message that failed: whatever MSH fields can be read."""
        text = data.decode("latin-1") if isinstance(data, bytes) else data
        text = text.removeprefix("\x0b").removeprefix("\xef\xbb\xbf")  # MLLP start, UTF-8 BOM
        text = text.replace("\r\n", "\r").replace("\n", "\r")
        try:
            msh = read_msh(text)
        except IntakeError:
            return cls()
        charset = declared_charset(msh.text.encode("latin-1", "replace"))
        try:
            charset_codec(charset) if charset else None
        except IntakeError:
            charset = ""
        return cls._from_msh(msh, charset)

    @classmethod
    def _from_msh(cls, msh: Segment, charset: str) -> AckContext:
        version = msh.components(12)[0].strip() if msh.components(12) else ""
        processing = msh.components(11)[0].strip() if msh.components(11) else ""
        return cls(
            delimiters=msh.delimiters,
            sending_application=msh.field(3),
            sending_facility=msh.field(4),
            receiving_application=msh.field(5),
            receiving_facility=msh.field(6),
            control_id=msh.field(10),
            processing_id=processing if processing in ("P", "T", "D") else "P",
            version=version if _is_version(version) else DEFAULT_VERSION,
            charset=charset,
            accept_ack_type=_ack_type(msh, 15),
            application_ack_type=_ack_type(msh, 16),
        )

    @property
    def enhanced(self) -> bool:
        """Enhanced acknowledgment mode: the sender valued MSH-15 or MSH-16."""
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def codec(self) -> str:
        """How to encode the ACK: the sender's character set, or ASCII-compatible UTF-8."""
        if not self.charset:
            return "utf-8"
        try:
            return charset_codec(self.charset)
        except IntakeError:
            return "utf-8"


def _ack_type(msh: Segment, number: int) -> str:
    components = msh.components(number)
    return components[0].strip().upper() if components else ""


def accept_ack_code(context: AckContext, code: str) -> str | None:
    """What to answer on the connection for an outcome (AA / AE / AR), or None for silence.

    Original mode (MSH-15 and MSH-16 empty): the outcome itself. Enhanced mode: the accept
    ACK, CA / CE / CR, unless MSH-15 asks for none in this case: NE never, ER only on CE /
    CR, SU only on CA; AL, an empty MSH-15 (only MSH-16 valued) and a value outside table
    0155 always get one, since a sender waiting for an answer that never comes is worse
    than one receiving an answer it did not ask for.

    Application acknowledgments (MSH-16) are not sent: we hand results on to clinicians,
    not to an application that answers for them, and a delivery's fate is reported in the
    ledger and to the laboratory (notices), not as a later HL7 ACK on this connection.
    """
    if not context.enhanced:
        return code
    commit = _COMMIT_CODES.get(code, COMMIT_ERROR)
    wanted = context.accept_ack_type
    if wanted == NEVER:
        return None
    if wanted == ERROR_ONLY and commit == COMMIT_ACCEPT:
        return None
    if wanted == SUCCESS_ONLY and commit != COMMIT_ACCEPT:
        return None
    return commit


def encode_accept_ack(
    context: AckContext, code: str, issues: Sequence[AckIssue] = ()
) -> bytes | None:
    """The accept ACK for an outcome, encoded in the sender's character set, or None when
    the sender asked for none (see `accept_ack_code`)."""
    answer = accept_ack_code(context, code)
    if answer is None:
        return None
    return build_ack(context, answer, issues).encode(context.codec, "replace")


def _is_version(text: str) -> bool:
    return _VERSION.fullmatch(text) is not None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def build_ack(
    context: AckContext,
    code: str,
    issues: Sequence[AckIssue] = (),
    *,
    control_id: str | None = None,
    timestamp: datetime | None = None,
) -> str:
    """The ACK message as text (CR-separated segments, trailing CR)."""
    d = context.delimiters
    version = _version_tuple(context.version)
    f = d.field
    moment = (timestamp or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    message_type = "ACK^R01" if version < (2, 3, 1) else "ACK^R01^ACK"
    message_type = message_type.replace("^", d.component)
    ack_id = control_id or uuid.uuid4().hex[:20]
    msh = [
        "MSH",
        d.encoding_characters,
        context.receiving_application,
        context.receiving_facility,
        context.sending_application,
        context.sending_facility,
        moment,
        "",
        message_type,
        escape(ack_id, d),
        context.processing_id,
        context.version,
    ]
    if context.charset:
        msh += ["", "", "", "", "", escape(context.charset, d)]
    errors = [issue for issue in issues if issue.severity == SEVERITY_ERROR]
    summary = "; ".join(issue.reason for issue in errors)[:200] if errors else ""
    msa = ["MSA", code, context.control_id]
    if summary and version < (2, 7):
        msa.append(escape(summary, d))
    segments = [f.join(msh), f.join(msa)]
    for issue in issues:
        segments.append(_err_segment(issue, d, version))
    return "\r".join(segments) + "\r"


def _err_segment(issue: AckIssue, d: Delimiters, version: tuple[int, ...]) -> str:
    c, s, f = d.component, d.subcomponent, d.field
    location = issue.location
    where = [
        location.segment if location else "",
        str(location.sequence) if location else "",
        str(location.field) if location and location.field is not None else "",
    ]
    code = [issue.hl7_code, escape(issue.hl7_text, d), "HL70357"]
    if version < (2, 5):
        # ERR-1 (ELD): segment ^ sequence ^ field ^ code & text & table
        return f.join(["ERR", c.join([*where, s.join(code)])])
    erl = [*where]
    if location and location.component is not None:
        erl += ["", str(location.component)]
    return f.join(
        [
            "ERR",
            "",
            c.join(erl).rstrip(c),
            c.join(code),
            issue.severity,
            "",
            "",
            "",
            escape(issue.reason, d),
        ]
    )
