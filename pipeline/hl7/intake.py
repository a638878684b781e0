"""The one call that reads what a laboratory sent: each message accepted or refused.

Decoding, structure checks and fact extraction run here in order; a message that fails a
step comes back with the `IntakeError` that says why, and the others in the same file or
batch are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeline.hl7.ack import ACCEPT, ERROR, AckContext, AckIssue, build_ack, encode_accept_ack
from pipeline.hl7.decode import RawMessage, declared_charset, decode_message, split_messages
from pipeline.hl7.errors import IntakeError
from pipeline.hl7.facts import RoutingFacts, extract_facts
from pipeline.hl7.parse import Hl7Message, parse, read_msh
from pipeline.hl7.segments import Segment


@dataclass(frozen=True)
class IntakeResult:
    """One message of a file or stream: its facts, or the reason it was refused."""

    index: int
    data: bytes
    message: Hl7Message | None = None
    facts: RoutingFacts | None = None
    error: IntakeError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def msh(self) -> Segment | None:
        """The header, even of a refused message when its separators are readable, so the
        laboratory can be told which message (control ID, type) was refused."""
        if self.message is not None:
            return self.message.msh
        try:
            return read_msh(self.data.decode("latin-1"))
        except IntakeError:
            return None

    def ack(self) -> str:
        """AA (with warnings as ERR severity W), or AE / AR naming the reason."""
        if self.message is not None and self.facts is not None:
            issues = [AckIssue.warning(text) for text in self.facts.warnings]
            return build_ack(AckContext.from_message(self.message), ACCEPT, issues)
        assert self.error is not None
        return build_ack(
            AckContext.from_raw(self.data), self.error.ack_code, [AckIssue.from_error(self.error)]
        )

    def accept_ack(self) -> bytes | None:
        """The encoded ACK to send back on the connection once the message is committed.

        Original mode: AA / AE / AR, as `ack()`. Enhanced mode (MSH-15/16 valued): the
        accept ACK CA / CE / CR, or None when MSH-15 says to send none for this outcome.
        Application ACKs (MSH-16) are never sent: see `accept_ack_code`."""
        if self.message is not None and self.facts is not None:
            context = AckContext.from_message(self.message)
            issues = [AckIssue.warning(text) for text in self.facts.warnings]
            return encode_accept_ack(context, ACCEPT, issues)
        assert self.error is not None
        return encode_accept_ack(
            AckContext.from_raw(self.data), self.error.ack_code, [AckIssue.from_error(self.error)]
        )


def unavailable_ack(data: bytes, reason: str) -> bytes | None:
    """The ACK for a message we could not store (ledger down): an error that tells the LIS to
    send again, never AA (enhanced mode: CE, or None when MSH-15 is NE or SU)."""
    return encode_accept_ack(AckContext.from_raw(data), ERROR, [AckIssue(reason)])


#: A laboratory's code (MSH-4, else MSH-3) → the character set configured for it, if any.
CharsetLookup = Callable[[str], "str | None"]


def configured_charset(raw: RawMessage, charsets: CharsetLookup | None) -> str:
    """The laboratory's configured character set, for a message whose MSH-18 is empty."""
    if charsets is None or not raw.data.startswith(b"MSH") or len(raw.data) < 8:
        return ""
    first = raw.data.split(b"\r", 1)[0]
    if declared_charset(first):
        return ""
    fields = first.decode("latin-1").split(first[3:4].decode("latin-1"))
    component = first[4:5].decode("latin-1")

    def value(number: int) -> str:  # MSH-n is fields[n - 1] (MSH-1 is the separator)
        raw_value = fields[number - 1] if len(fields) >= number else ""
        return raw_value.split(component, 1)[0].strip() if component else raw_value.strip()

    laboratory = value(4) or value(3)
    return (charsets(laboratory) or "") if laboratory else ""


def read_raw(raw: RawMessage, charsets: CharsetLookup | None = None) -> IntakeResult:
    """Decode, check and read one message's bytes (as cut by `split_messages`)."""
    try:
        decoded = decode_message(raw, configured_charset(raw, charsets))
        message = parse(decoded)
        facts = extract_facts(message)
    except IntakeError as error:
        return IntakeResult(raw.index, raw.data, error=error)
    return IntakeResult(raw.index, raw.data, message, facts)


def read_results(data: bytes, charsets: CharsetLookup | None = None) -> Iterator[IntakeResult]:
    """Every message in a file, batch or stream, in order; `charsets` names the character
    set a laboratory is configured with, read when MSH-18 is empty."""
    for raw in split_messages(data):
        yield read_raw(raw, charsets)
