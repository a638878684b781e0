"""The laboratories the directory knows, and their intake settings.

A laboratory's character set is read when its messages declare none: HL7 v2 with MSH-18
empty (many LIS cannot fill it and send Latin-1 or Windows-1252 bytes) and every HPRIM
file (HPRIM has no field for it). Without one, such bytes are read as ASCII, else as
UTF-8 when valid, else refused: never guessed.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.hl7.decode import charset_codec
from pipeline.hl7.errors import UnsupportedCharacterSet
from pipeline.recipients.errors import DirectoryError
from pipeline.recipients.models import Laboratory, LocalCode


class UnknownCharset(DirectoryError):
    """A character set name we cannot read messages in."""


class UnknownLaboratory(DirectoryError):
    """No laboratory of that code in the directory."""


@dataclass(frozen=True)
class LaboratoryView:
    code: str
    name: str | None
    charset: str | None
    local_codes: int

    def as_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "name": self.name,
            "charset": self.charset,
            "local_codes": self.local_codes,
        }

    def render(self) -> str:
        return "\n".join(
            [
                f"laboratory {self.code}" + (f" ({self.name})" if self.name else ""),
                "  charset:     "
                + (self.charset or "not set (undeclared text read as ASCII, else UTF-8)"),
                f"  local codes: {self.local_codes}",
            ]
        )


def check_charset(name: str) -> str:
    """The name as given when messages can be read in it (HL7 table 0211 or IANA)."""
    try:
        charset_codec(name)
        return name
    except UnsupportedCharacterSet:
        pass
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise UnknownCharset(
            f"character set {name!r} is unknown; use e.g. ISO-8859-1, windows-1252 or UTF-8"
        ) from None
    if codec.startswith(("utf-16", "utf-32")):
        raise UnknownCharset(f"{name}: wide character sets are read from their byte-order mark")
    return name


def set_laboratory(
    session: Session, code: str, *, charset: str | None = None, clear_charset: bool = False
) -> LaboratoryView:
    """Create the laboratory if need be, and set (or clear) its character set."""
    code = code.strip()
    if not code:
        raise UnknownLaboratory("a laboratory code is needed (MSH-4, HPRIM H-5 / line 11)")
    laboratory = session.scalars(select(Laboratory).where(Laboratory.code == code)).first()
    if laboratory is None:
        laboratory = Laboratory(code=code)
        session.add(laboratory)
    if charset is not None:
        laboratory.charset = check_charset(charset.strip())
    if clear_charset:
        laboratory.charset = None
    session.flush()
    return describe_laboratory(session, code)


def describe_laboratory(session: Session, code: str) -> LaboratoryView:
    laboratory = session.scalars(select(Laboratory).where(Laboratory.code == code)).first()
    if laboratory is None:
        raise UnknownLaboratory(f"laboratory {code} is not in the directory")
    count = session.scalar(
        select(func.count()).select_from(LocalCode).where(LocalCode.laboratory_id == laboratory.id)
    )
    return LaboratoryView(laboratory.code, laboratory.name, laboratory.charset, count or 0)


def laboratory_charsets(session: Session) -> Callable[[str], str | None]:
    """A lookup for intake: each laboratory asked once per call of the lookup's owner."""
    known: dict[str, str | None] = {}

    def lookup(code: str) -> str | None:
        if code not in known:
            known[code] = session.scalar(select(Laboratory.charset).where(Laboratory.code == code))
        return known[code]

    return lookup
