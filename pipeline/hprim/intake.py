"""The one call that reads an HPRIM file: each result accepted, or the file refused.

`HprimResult` answers the questions the edges ask of `pipeline.hl7.intake.IntakeResult`
(index, data, facts, error, ok, accept_ack, msh), so the folder, the API, quarantine and
`inspect` take either. HPRIM has no acknowledgement the sender's system reads back in this
version of labdispatch: `accept_ack` is None (docs/hprim.md); the folder's reason file and
the API's answer say what was refused and why.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.hl7.documents import mime_charset
from pipeline.hl7.errors import IntakeError
from pipeline.hl7.facts import RoutingFacts
from pipeline.hl7.segments import Segment
from pipeline.hprim import medecins, sante
from pipeline.hprim.errors import HprimError, NotHprim
from pipeline.hprim.facts import FORMAT_MEDECINS, FORMAT_SANTE, HprimFile, HprimPart
from pipeline.hprim.text import CharsetLookup


def sniff(data: bytes) -> str | None:
    """The HPRIM format of `data` ("hprim-sante", "hprim-medecins"), or None: HL7 v2, or
    nothing we know. What starts as HL7 does (MSH, FHS, BHS, MLLP framing) stays HL7
    whatever lines it holds."""
    head = data[:16].lstrip(b"\xef\xbb\xbf\x0b\r\n")
    if head.startswith((b"MSH", b"FHS", b"BHS")):
        return None
    if sante.looks_like_sante(data):
        return FORMAT_SANTE
    if medecins.looks_like_medecins(data):
        return FORMAT_MEDECINS
    return None


@dataclass(frozen=True)
class HprimResult:
    """One result of an HPRIM file (one patient's, or one report), or the file refused."""

    index: int
    data: bytes
    format: str
    facts: RoutingFacts | None = None
    error: IntakeError | None = None
    codec: str = ""  # the Python codec the file was read in
    #: What a refused file says of itself (H-5 or line 11, H-3 or line 9), for quarantine.
    claimed_sender: str = ""
    claimed_control_id: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def msh(self) -> Segment | None:
        return None  # not HL7: nothing to quote from an MSH

    @property
    def charset(self) -> str:
        return self.codec

    @property
    def mime_charset(self) -> str:
        """The IANA name, for the attachment's `charset=`."""
        return mime_charset(self.codec) if self.codec else ""

    def accept_ack(self) -> bytes | None:
        return None  # HPRIM defines no acknowledgement we produce (docs/hprim.md)


def read_hprim(
    data: bytes, charsets: CharsetLookup | None = None, fmt: str | None = None
) -> Iterator[HprimResult]:
    """Every result of an HPRIM file, in order; a refused file is one refused result."""
    fmt = fmt or sniff(data) or FORMAT_SANTE
    try:
        if fmt == FORMAT_SANTE:
            read: HprimFile = sante.read_sante(data, charsets)
        else:
            read = medecins.read_medecins(data, charsets)
    except HprimError as error:
        header = sante.header_of if fmt == FORMAT_SANTE else medecins.header_of
        try:
            sender, control = header(data)
        except Exception:  # a refusal must stand whatever the header holds
            sender, control = "", ""
        yield HprimResult(
            1, data, fmt, error=error, claimed_sender=sender, claimed_control_id=control
        )
        return
    if not read.parts:  # pragma: no cover - the readers refuse a file with none
        yield HprimResult(1, data, fmt, error=NotHprim("no result in the file"))
        return
    parts: tuple[HprimPart, ...] = read.parts
    for index, part in enumerate(parts, start=1):
        yield HprimResult(index, part.data, fmt, part.facts, codec=read.codec)
