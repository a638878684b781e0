"""The directory's tables: who may receive results, how labs name them, how to reach them.

Identifiers are stored normalised (see `identifiers.py`), so a lookup is an exact match on
an index, never a fuzzy search. National identifiers belong to one recipient across all
laboratories; a local code only means something together with the laboratory that uses it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from pipeline.db import Base, UTCDateTime, utcnow

RECIPIENT_KINDS = ("clinician", "organisation", "patient")
#: `mssante`: an MSSanté mailbox from the national directory (docs/directory-national.md);
#: kept so routing can say why it is not used while the MSSanté channel is not built.
CHANNEL_KINDS = ("mail", "mailbox", "https", "mssante")
#: Who keeps a recipient: `local`, the laboratory's own entries (`directory import` CSV, by
#: hand), never touched by a national import; `national`, made and kept in step with the
#: Annuaire Santé extraction by `directory import-national`.
LOCAL = "local"
NATIONAL = "national"
RECIPIENT_SOURCES = (LOCAL, NATIONAL)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Laboratory(Base):
    """A sending laboratory, known by its MSH-4 namespace (the code its LIS puts there)."""

    __tablename__ = "laboratories"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    #: The character set its messages are read in when they declare none (HL7 with MSH-18
    #: empty, every HPRIM file): e.g. ISO-8859-1 or windows-1252. None: not configured.
    charset: Mapped[str | None] = mapped_column(String(32))

    local_codes: Mapped[list[LocalCode]] = relationship(back_populates="laboratory")


class Recipient(Base):
    """Someone results can be delivered to; `key` is the directory's own stable name."""

    __tablename__ = "recipients"
    __table_args__ = (
        CheckConstraint(_one_of("kind", RECIPIENT_KINDS), name="kind"),
        CheckConstraint(_one_of("source", RECIPIENT_SOURCES), name="source"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    specialty: Mapped[str | None] = mapped_column(String(200))
    #: `local` or `national` (see `RECIPIENT_SOURCES`).
    source: Mapped[str] = mapped_column(String(16), default=LOCAL, server_default=LOCAL)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    identifiers: Mapped[list[RecipientIdentifier]] = relationship(
        back_populates="recipient", cascade="all, delete-orphan", passive_deletes=True
    )
    local_codes: Mapped[list[LocalCode]] = relationship(
        back_populates="recipient", cascade="all, delete-orphan", passive_deletes=True
    )
    channels: Mapped[list[Channel]] = relationship(
        back_populates="recipient",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="(Channel.priority, Channel.id)",
    )
    certificates: Mapped[list[Certificate]] = relationship(
        back_populates="recipient",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Certificate.not_after",
    )


class RecipientIdentifier(Base):
    """A national identifier (RPPS, ADELI, FINESS, INS…): names one recipient everywhere."""

    __tablename__ = "recipient_identifiers"
    # The unique constraint is also the lookup index for resolution.
    __table_args__ = (UniqueConstraint("id_type", "value"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    recipient_id: Mapped[int] = mapped_column(
        ForeignKey("recipients.id", ondelete="CASCADE"), index=True
    )
    id_type: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(64))
    authority: Mapped[str] = mapped_column(String(64), default="")

    recipient: Mapped[Recipient] = relationship(back_populates="identifiers")


class LocalCode(Base):
    """A laboratory's own code for a recipient, meaningful only with that laboratory."""

    __tablename__ = "local_codes"
    # (laboratory_id, code) is what resolution looks up.
    __table_args__ = (UniqueConstraint("laboratory_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    laboratory_id: Mapped[int] = mapped_column(ForeignKey("laboratories.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(64))
    recipient_id: Mapped[int] = mapped_column(
        ForeignKey("recipients.id", ondelete="CASCADE"), index=True
    )

    laboratory: Mapped[Laboratory] = relationship(back_populates="local_codes")
    recipient: Mapped[Recipient] = relationship(back_populates="local_codes")


class Channel(Base):
    """One way to reach a recipient; lower `priority` is tried first (0 = preferred)."""

    __tablename__ = "recipient_channels"
    __table_args__ = (
        UniqueConstraint("recipient_id", "kind", "address"),
        CheckConstraint(_one_of("kind", CHANNEL_KINDS), name="kind"),
        # Resolution reads a recipient's channels in preference order.
        Index(None, "recipient_id", "priority"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipients.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(500))
    priority: Mapped[int] = mapped_column(default=0)
    #: The Annuaire Santé's "Dématérialisation" for this mailbox: False, its holder refuses
    #: results sent electronically (routing never uses it, and the laboratory is told);
    #: None where nobody said (every local channel).
    accepts_results: Mapped[bool | None] = mapped_column(default=None)

    recipient: Mapped[Recipient] = relationship(back_populates="channels")

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}"


class Certificate(Base):
    """A recipient's encryption certificate; results are sealed for it while it is valid."""

    __tablename__ = "recipient_certificates"

    id: Mapped[int] = mapped_column(primary_key=True)
    recipient_id: Mapped[int] = mapped_column(
        ForeignKey("recipients.id", ondelete="CASCADE"), index=True
    )
    pem: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    #: Lowercase hex SHA-256 of the DER certificate.
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())

    recipient: Mapped[Recipient] = relationship(back_populates="certificates")

    def is_valid_at(self, moment: datetime) -> bool:
        return self.not_before <= moment <= self.not_after
