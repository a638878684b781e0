"""What a laboratory's token may submit: its own results, and nothing sent in another's name.

A `lab` token is bound to one laboratory (MSH-4, as the ledger records it). A message
naming another laboratory is refused before anything is recorded, with AR and a reason
naming MSH-4, and it is not quarantined either: keeping it would file, under another
laboratory's name, whatever a token holder chose to send. The laboratory is read exactly
as intake reads it (`RoutingFacts.sender`: MSH-4, else MSH-3), from the same decoded
header, so the check and the record can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.hl7.decode import UTF8_BOM, RawMessage, decode_message, split_messages
from pipeline.hl7.errors import IntakeError, Location
from pipeline.hl7.intake import IntakeResult
from pipeline.hl7.parse import read_msh
from pipeline.hprim.intake import HprimResult, read_hprim, sniff


class NotThisLaboratory(IntakeError):
    """The message names a laboratory the submitting token does not belong to."""

    ack_code = "AR"
    hl7_code = "207"
    hl7_text = "Sending facility not allowed for this token"


@dataclass(frozen=True)
class Submission:
    """A body split for intake: the bytes to record, and the messages refused up front.

    `items` are handed to intake as they are; `refused` come back to the sender with
    their AR and are recorded nowhere. `order` gives, for each message of the body in
    turn, ("item", i) or ("refused", j), so answers are returned in the order sent."""

    items: tuple[bytes, ...]
    refused: tuple[IntakeResult | HprimResult, ...]
    order: tuple[tuple[str, int], ...]


def sender_of(raw: RawMessage) -> str | None:
    """The laboratory a message names, as the ledger would record it; None when its header
    cannot be read at all (intake then refuses the message on its own, under no name).

    A message that cannot be decoded (a byte its MSH-18 character set does not have, a
    character set that does not exist) is refused by intake and quarantined under the
    MSH-4 its header shows read byte for byte (`pipeline.delivery.intake.quarantine`): that
    is the laboratory it names, so a token cannot file a rejection under another's name."""
    try:
        msh = read_msh(decode_message(raw).text)
    except IntakeError:
        return _undecoded_sender(raw)
    return msh.value(4).strip() or msh.value(3).strip()


def _undecoded_sender(raw: RawMessage) -> str | None:
    """MSH-4 as a quarantine row would record it for a message that cannot be decoded."""
    msh = IntakeResult(raw.index, raw.data).msh
    if msh is None:
        return None
    components = msh.components(4)
    return (components[0] if components else "").strip() or None


def split_for(data: bytes, laboratory: str | None) -> Submission:
    """Split what a caller sent into what intake may record and what is refused.

    With no `laboratory` (a token of every laboratory) the body goes to intake whole, as
    MLLP and folder intake hand it over. A laboratory's body goes whole too when every
    message is its own; otherwise each of its own messages goes as an item of its own."""
    if laboratory is None:
        return Submission((data,), (), (("item", 0),))
    fmt = sniff(data)
    if fmt is not None:
        return _split_hprim(data, fmt, laboratory)
    raws = list(split_messages(data))
    senders = [sender_of(raw) for raw in raws]
    if all(sender is None or sender == laboratory for sender in senders):
        return Submission((data,), (), (("item", 0),))
    items: list[bytes] = []
    refused: list[IntakeResult] = []
    order: list[tuple[str, int]] = []
    for raw, sender in zip(raws, senders, strict=True):
        if sender is None or sender == laboratory:
            items.append(_as_sent(raw))
            order.append(("item", len(items) - 1))
        else:
            refused.append(_refusal(raw, sender, laboratory))
            order.append(("refused", len(refused) - 1))
    return Submission(tuple(items), tuple(refused), tuple(order))


def _refusal(raw: RawMessage, sender: str, laboratory: str) -> IntakeResult:
    return IntakeResult(
        raw.index,
        raw.data,
        error=NotThisLaboratory(
            f"MSH-4 names laboratory {sender!r}, but this token submits for {laboratory!r} "
            "only: not recorded",
            Location("MSH", field=4),
        ),
    )


def _split_hprim(data: bytes, fmt: str, laboratory: str) -> Submission:
    """An HPRIM file goes to intake whole when every result in it (or, refused, its header)
    names the token's laboratory; otherwise it is refused whole: a file has one sender."""
    for result in read_hprim(data, fmt=fmt):
        sender = result.facts.sender if result.facts else result.claimed_sender
        if sender and sender != laboratory:
            field = "H-5" if fmt == "hprim-sante" else "header line 11"
            refusal = HprimResult(
                1,
                data,
                fmt,
                error=NotThisLaboratory(
                    f"{field} names laboratory {sender!r}, but this token submits for "
                    f"{laboratory!r} only: not recorded"
                ),
            )
            return Submission((), (refusal,), (("refused", 0),))
    return Submission((data,), (), (("item", 0),))


def _as_sent(raw: RawMessage) -> bytes:
    """One message's bytes as they would have read inside the whole body: the byte-order
    mark or wide encoding that applied to it is put back, so intake decodes it alike."""
    if raw.decoded_as:
        return raw.data.decode("utf-8").encode(raw.decoded_as)
    return UTF8_BOM + raw.data if raw.had_bom else raw.data
