"""One recipient as an operator sees it, found by whatever name they have at hand.

An operator looking into an unroutable result holds a directory key, an identifier copied
from the message (`IDNPS:810001234567` finds the RPPS recipient, as routing would) or a
lab's local code (`LABX=DR9`). `describe_recipient` accepts all three, and returns plain
frozen data so the command line, and later the HTTP API, render it without a session.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from pipeline.db import utcnow
from pipeline.identifiers import PRIVATE_TYPES, parse_identifier_text
from pipeline.jsonable import jsonable
from pipeline.recipients.errors import UnknownRecipient
from pipeline.recipients.identifiers import BlindIndex, blind_forms
from pipeline.recipients.models import (
    Laboratory,
    LocalCode,
    Recipient,
    RecipientIdentifier,
)


@dataclass(frozen=True)
class IdentifierView:
    id_type: str
    value: str
    authority: str


@dataclass(frozen=True, order=True)
class LocalCodeView:
    laboratory: str
    code: str


@dataclass(frozen=True)
class ChannelView:
    kind: str
    address: str
    priority: int
    #: The Annuaire Santé's "Dématérialisation" (None: nobody said; False: never used).
    accepts_results: bool | None = None


@dataclass(frozen=True)
class CertificateView:
    subject: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    expired: bool  # as of the moment the view was made
    not_yet_valid: bool


@dataclass(frozen=True)
class RecipientView:
    key: str
    kind: str
    name: str
    #: `local` (the laboratory's own entry) or `national` (kept by the national import).
    source: str
    specialty: str | None
    created_at: datetime
    updated_at: datetime
    identifiers: tuple[IdentifierView, ...]
    local_codes: tuple[LocalCodeView, ...]
    channels: tuple[ChannelView, ...]  # most preferred first
    certificates: tuple[CertificateView, ...]

    def as_json(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO 8601 UTC."""
        data: dict[str, Any] = jsonable(asdict(self))
        return data


def describe_recipient(
    session: Session,
    ref: str,
    *,
    now: datetime | None = None,
    blind_index: BlindIndex | None = None,
) -> RecipientView:
    """The recipient `ref` names: a directory key, `TYPE:VALUE`, or `LAB=CODE`
    (`blind_index`: a patient's INS is kept as its keyed hash, see `resolve_many`).

    Raises UnknownRecipient, saying what was looked for, when no one matches.
    """
    recipient = _find(session, ref.strip(), blind_index)
    moment = now or utcnow()
    return RecipientView(
        key=recipient.key,
        source=recipient.source,
        kind=recipient.kind,
        name=recipient.name,
        specialty=recipient.specialty,
        created_at=recipient.created_at,
        updated_at=recipient.updated_at,
        identifiers=tuple(
            IdentifierView(i.id_type, i.value, i.authority)
            for i in sorted(recipient.identifiers, key=lambda i: (i.id_type, i.value))
        ),
        local_codes=tuple(
            sorted(LocalCodeView(c.laboratory.code, c.code) for c in recipient.local_codes)
        ),
        channels=tuple(
            ChannelView(c.kind, c.address, c.priority, c.accepts_results)
            for c in recipient.channels
        ),
        certificates=tuple(
            CertificateView(
                subject=c.subject,
                fingerprint_sha256=c.fingerprint_sha256,
                not_before=c.not_before,
                not_after=c.not_after,
                expired=c.not_after < moment,
                not_yet_valid=moment < c.not_before,
            )
            for c in recipient.certificates
        ),
    )


def _find(session: Session, ref: str, blind_index: BlindIndex | None) -> Recipient:
    if not ref:
        raise UnknownRecipient("give a directory key, an identifier TYPE:VALUE or a LAB=CODE")
    loading = (
        selectinload(Recipient.identifiers),
        selectinload(Recipient.local_codes).joinedload(LocalCode.laboratory),
        selectinload(Recipient.channels),
        selectinload(Recipient.certificates),
    )
    # Keys never contain ':' or '=' (the import refuses them), so the order cannot mislead.
    recipient = session.scalars(
        select(Recipient).where(Recipient.key == ref).options(*loading)
    ).one_or_none()
    if recipient is not None:
        return recipient

    lab, is_local, code = ref.partition("=")
    if is_local:
        lab, code = lab.strip(), code.strip()
        recipient = session.scalars(
            select(Recipient)
            .join(LocalCode)
            .join(Laboratory)
            .where(Laboratory.code == lab, LocalCode.code == code)
            .options(*loading)
        ).one_or_none()
        if recipient is None:
            raise UnknownRecipient(f"{lab} has no local code {code} in the directory")
        return recipient

    if ":" in ref:
        identifier = parse_identifier_text(ref)
        if identifier is None:
            raise UnknownRecipient(f"{ref!r} has no value after the ':'")
        if not identifier.is_national:
            raise UnknownRecipient(
                f"{identifier.id_type} {identifier.value} is not a national identifier; "
                "a laboratory's own code is looked up as LAB=CODE"
            )
        forms = [identifier.value]
        if blind_index is not None and identifier.id_type in PRIVATE_TYPES:
            forms += blind_forms(identifier, blind_index)
        recipient = session.scalars(
            select(Recipient)
            .join(RecipientIdentifier)
            .where(
                RecipientIdentifier.id_type == identifier.id_type,
                RecipientIdentifier.value.in_(forms),
            )
            .options(*loading)
        ).one_or_none()
        if recipient is None:
            raise UnknownRecipient(
                f"{identifier.id_type} {identifier.value} is not in the directory"
            )
        return recipient

    raise UnknownRecipient(
        f"no recipient has the key {ref!r} (to look up an identifier, write TYPE:VALUE; "
        "a laboratory's code, LAB=CODE)"
    )


def render_recipient(view: RecipientView) -> str:
    """The block `labdispatch directory show` prints."""
    lines = [
        f"{view.key}  {view.name}",
        f"  kind:        {view.kind} ({view.source})",
        f"  specialty:   {view.specialty or '-'}",
        f"  updated:     {_when(view.updated_at)} (created {_when(view.created_at)})",
        "  identifiers: " + (", ".join(f"{i.id_type}:{i.value}" for i in view.identifiers) or "-"),
        "  local codes: "
        + (", ".join(f"{c.laboratory}={c.code}" for c in view.local_codes) or "-"),
        "  channels:"
        + ("" if view.channels else "    - (results for this recipient cannot go out)"),
    ]
    lines += [
        f"    {n}. {c.kind}:{c.address}"
        + (" (refuses results sent electronically)" if c.accepts_results is False else "")
        for n, c in enumerate(view.channels, start=1)
    ]
    lines.append("  certificates:" + ("" if view.certificates else " -"))
    for cert in view.certificates:
        state = "EXPIRED" if cert.expired else "not yet valid" if cert.not_yet_valid else "valid"
        lines += [
            f"    - {cert.subject}",
            f"      sha256 {cert.fingerprint_sha256}",
            f"      {state}: {_when(cert.not_before)} to {_when(cert.not_after)}",
        ]
    return "\n".join(lines)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
