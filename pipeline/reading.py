"""What a laboratory sent, whatever its format: HL7 v2, HPRIM Santé or HPRIM Médecins.

The edges (MLLP, folder, HTTP API, `inspect`) and the stages that read a recorded result
again call `read_any`: the format is sniffed from the first bytes (an H record, or the
HPRIM Médecins markers; anything else is read as HL7 v2), and each result comes back with
the same `RoutingFacts`, so record, route, seal, send, trace and stats need not know.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.hl7.intake import IntakeResult, read_results
from pipeline.hprim.intake import HprimResult, read_hprim, sniff
from pipeline.hprim.text import CharsetLookup

HL7V2 = "hl7v2"
#: One result of what a laboratory sent, or the reason it was refused.
ReadResult = IntakeResult | HprimResult


def format_of(data: bytes) -> str:
    return sniff(data) or HL7V2


def read_any(data: bytes, charsets: CharsetLookup | None = None) -> Iterator[ReadResult]:
    """Every result in a file, batch or stream, in order. `charsets` gives a laboratory's
    configured character set, read when the message declares none."""
    fmt = sniff(data)
    if fmt is not None:
        yield from read_hprim(data, charsets, fmt)
    else:
        yield from read_results(data, charsets)


def read_again(data: bytes, fmt: str, charset: str) -> ReadResult:
    """A recorded result read again (route, seal, reconcile) in the format and character
    set it was read in at intake, so it reads the same whatever the directory says now."""

    def recorded(_laboratory: str) -> str | None:
        return charset or None

    if fmt != HL7V2:
        return next(read_hprim(data, recorded, fmt))
    return next(read_results(data, recorded))


def result_charset(result: ReadResult) -> str:
    """The codec the result was read in (stored with it; labels the attachment)."""
    if isinstance(result, HprimResult):
        return result.codec
    return result.message.charset if result.message is not None else ""


def readable(result: ReadResult) -> bool:
    if isinstance(result, HprimResult):
        return result.facts is not None
    return result.message is not None and result.facts is not None


def claimed_identity(result: ReadResult) -> tuple[str, str]:
    """(laboratory, control ID) a refused result says it has, for quarantine and reason
    files; ("", "") when nothing can be read of it."""
    if isinstance(result, HprimResult):
        return result.claimed_sender, result.claimed_control_id
    msh = result.msh
    if msh is None:
        return "", ""
    laboratory = msh.components(4)[0] if msh.components(4) else ""
    return laboratory, msh.field(10)
