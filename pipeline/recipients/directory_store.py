"""Write checked directory rows into the recipient tables.

`directory_csv` turns each row of the operator's file into a `RowPlan` once it has passed
every check; this module makes the directory match those plans. A batch of rows is read in
a few queries up front and written in one SAVEPOINT with one flush. Should the database
refuse anything in it, that SAVEPOINT is rolled back and the batch is written again one row
per SAVEPOINT, so the row the database refuses is rolled back alone and the others are
kept. An identifier, local code or certificate that another recipient holds is reported
against the row, never moved silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, selectinload

from pipeline.db import first_line, utcnow
from pipeline.identifiers import Identifier
from pipeline.recipients.models import (
    LOCAL,
    Certificate,
    Channel,
    Laboratory,
    LocalCode,
    Recipient,
    RecipientIdentifier,
)

K = TypeVar("K")

#: Rows read and written together: few queries per batch, bounded memory.
BATCH = 200


# The plans this module is given and the report it fills live here so that directory_csv,
# which calls write_plans, can import them without a cycle; it re-exports RowError and
# ImportReport, their public home.


@dataclass(frozen=True)
class RowError:
    """One problem in the file: `line` is the physical line (header = 1), `column` is
    empty when the problem is the row as a whole."""

    line: int
    column: str
    message: str


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.created + self.updated + self.unchanged

    @property
    def rejected(self) -> int:
        """Rows rejected (a row may have several errors); a bad header counts as one."""
        return len({error.line for error in self.errors})


@dataclass(frozen=True)
class CertificateData:
    pem: str
    subject: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class RowPlan:
    """A row that passed every check; `None` for a part means its column is absent."""

    line: int
    key: str
    kind: str
    name: str
    specialty: str | None
    has_specialty: bool
    identifiers: tuple[Identifier, ...] | None
    local_codes: tuple[tuple[str, str], ...] | None
    channels: tuple[tuple[str, str], ...] | None
    certificates: tuple[CertificateData, ...] | None


def write_plans(session: Session, plans: Sequence[RowPlan], report: ImportReport) -> None:
    """Create or update the recipient of every plan, counting each in `report`; the caller
    commits."""
    for start in range(0, len(plans), BATCH):
        _write_batch(session, plans[start : start + BATCH], report)


def _write_batch(session: Session, plans: Sequence[RowPlan], report: ImportReport) -> None:
    """Write a batch of checked rows, reading what they touch in a few queries up front
    (one query per row would make a directory of 70,000 clinicians take minutes).

    The whole batch is tried in one SAVEPOINT first, flushed once so that each table's
    rows go together (a SAVEPOINT and a flush per row cost several round trips a row).
    If the database refuses anything, that attempt is rolled back and counts nothing, and
    the batch is written again one row per SAVEPOINT, keeping every row it accepts."""
    keys = [plan.key for plan in plans]
    stored = _stored_recipients(session, keys)
    owners = _Owners.load(session, plans)
    written = ImportReport()
    try:
        with session.begin_nested(), session.no_autoflush:
            _write_rows(session, plans, stored, owners, written)
            session.flush()
    except (IntegrityError, DataError):
        # The rollback dropped the recipients the attempt added and expired those it
        # changed: read the batch again from the database, as if for the first time.
        _forget(session, stored)
        stored = _stored_recipients(session, keys, reload=True)
        owners = _Owners.load(session, plans)
        written = ImportReport()
        _write_rows(session, plans, stored, owners, written, row_savepoints=True)
    report.created += written.created
    report.updated += written.updated
    report.unchanged += written.unchanged
    report.errors.extend(written.errors)
    # Keep memory flat on large files: nothing here is needed once the batch is written.
    _forget(session, stored)


def _forget(session: Session, stored: dict[str, Recipient]) -> None:
    for recipient in stored.values():
        if recipient in session:
            session.expunge(recipient)


def _write_rows(
    session: Session,
    plans: Sequence[RowPlan],
    stored: dict[str, Recipient],
    owners: _Owners,
    report: ImportReport,
    *,
    row_savepoints: bool = False,
) -> None:
    """Apply every plan of a batch, counting each in `report` and adding the recipients
    it creates to `stored`. With `row_savepoints`, each row is flushed in its own
    SAVEPOINT and a row the database refuses is reported and rolled back alone; without,
    the caller flushes, and a refusal is its to handle."""
    labs: dict[str, Laboratory] = {}
    # What earlier rows gave up and the next flush will delete: a row taking any of it
    # must flush first, since a flush inserts a table's new rows before deleting any.
    released: set[_Item] = set()
    for plan in plans:
        recipient = stored.get(plan.key)
        conflicts = owners.conflicts(plan)
        if conflicts:
            report.errors.extend(conflicts)
            continue
        if recipient is not None and _unchanged(recipient, plan):
            report.unchanged += 1
            continue
        created = recipient is None
        if not row_savepoints:
            if released and not released.isdisjoint(_items(plan)):
                session.flush()
                released.clear()
            recipient = _write_row(session, recipient, plan, labs)
        else:
            try:
                with session.begin_nested():
                    recipient = _write_row(session, recipient, plan, labs)
                    session.flush()
            except (IntegrityError, DataError) as error:
                labs.clear()  # a laboratory created in the rolled-back row is gone too
                reason = first_line(error.orig or error)
                report.errors.append(
                    RowError(plan.line, "", f"the database refused the row: {reason}")
                )
                continue
        if created:
            report.created += 1
        else:
            report.updated += 1
        released |= owners.claim(plan)
        stored[plan.key] = recipient


def _write_row(
    session: Session, recipient: Recipient | None, plan: RowPlan, labs: dict[str, Laboratory]
) -> Recipient:
    if recipient is None:
        now = utcnow()
        recipient = Recipient(key=plan.key, created_at=now, updated_at=now)
        session.add(recipient)
    else:
        recipient.updated_at = utcnow()
    # A row the laboratory writes makes the recipient its own: a national import leaves it
    # alone from then on (docs/directory-national.md).
    recipient.source = LOCAL
    _apply(session, recipient, plan, labs)
    return recipient


def _stored_recipients(
    session: Session, keys: list[str], *, reload: bool = False
) -> dict[str, Recipient]:
    """The recipients named by `keys` with everything `_unchanged` and `_apply` read;
    `reload` replaces whatever the session still holds of them with the stored rows."""
    found = session.scalars(
        select(Recipient)
        .where(Recipient.key.in_(keys))
        .options(
            selectinload(Recipient.identifiers),
            selectinload(Recipient.local_codes).joinedload(LocalCode.laboratory),
            selectinload(Recipient.channels),
            selectinload(Recipient.certificates),
        )
        .execution_options(populate_existing=reload)
    )
    return {recipient.key: recipient for recipient in found}


@dataclass
class _Owners:
    """Who owns each identifier, local code and certificate a batch mentions, kept up to
    date as its rows are written, so a row can't take what an earlier row holds."""

    identifiers: dict[tuple[str, str], str]
    local_codes: dict[tuple[str, str], str]
    certificates: dict[str, str]

    @classmethod
    def load(cls, session: Session, plans: Sequence[RowPlan]) -> _Owners:
        values_by_type: dict[str, set[str]] = {}
        codes_by_lab: dict[str, set[str]] = {}
        fingerprints: set[str] = set()
        for plan in plans:
            for identifier in plan.identifiers or ():
                values_by_type.setdefault(identifier.id_type, set()).add(identifier.value)
            for lab, code in plan.local_codes or ():
                codes_by_lab.setdefault(lab, set()).add(code)
            fingerprints.update(c.fingerprint_sha256 for c in plan.certificates or ())

        owners = cls({}, {}, {})
        if values_by_type:
            rows = session.execute(
                select(RecipientIdentifier.id_type, RecipientIdentifier.value, Recipient.key)
                .join(Recipient)
                .where(
                    or_(
                        *(
                            and_(
                                RecipientIdentifier.id_type == id_type,
                                RecipientIdentifier.value.in_(values),
                            )
                            for id_type, values in values_by_type.items()
                        )
                    )
                )
            )
            owners.identifiers = {(id_type, value): key for id_type, value, key in rows}
        if codes_by_lab:
            code_rows = session.execute(
                select(Laboratory.code, LocalCode.code, Recipient.key)
                .select_from(LocalCode)
                .join(Laboratory)
                .join(Recipient)
                .where(
                    or_(
                        *(
                            and_(Laboratory.code == lab, LocalCode.code.in_(codes))
                            for lab, codes in codes_by_lab.items()
                        )
                    )
                )
            )
            owners.local_codes = {(lab, code): key for lab, code, key in code_rows}
        if fingerprints:
            cert_rows = session.execute(
                select(Certificate.fingerprint_sha256, Recipient.key)
                .join(Recipient)
                .where(Certificate.fingerprint_sha256.in_(fingerprints))
            )
            owners.certificates = {fingerprint: key for fingerprint, key in cert_rows}
        return owners

    def conflicts(self, plan: RowPlan) -> list[RowError]:
        errors = []
        for identifier in plan.identifiers or ():
            owner = self.identifiers.get((identifier.id_type, identifier.value), plan.key)
            if owner != plan.key:
                errors.append(
                    RowError(
                        plan.line,
                        "identifiers",
                        f"{identifier.id_type} {identifier.value} already belongs to {owner!r}; "
                        "remove it there first (identifiers are never moved silently)",
                    )
                )
        for lab, code in plan.local_codes or ():
            owner = self.local_codes.get((lab, code), plan.key)
            if owner != plan.key:
                errors.append(
                    RowError(
                        plan.line,
                        "local_codes",
                        f"{lab}={code} already belongs to {owner!r}; remove it there first",
                    )
                )
        for certificate in plan.certificates or ():
            owner = self.certificates.get(certificate.fingerprint_sha256, plan.key)
            if owner != plan.key:
                errors.append(
                    RowError(
                        plan.line,
                        "certificate",
                        f"certificate sha256:{certificate.fingerprint_sha256} "
                        f"already belongs to {owner!r}",
                    )
                )
        return errors

    def claim(self, plan: RowPlan) -> set[_Item]:
        """Record that `plan.key` now holds exactly what its row lists; return what it
        gave up among what the batch mentions."""
        given_up: set[_Item] = set()
        if plan.identifiers is not None:
            held_ids = {(i.id_type, i.value) for i in plan.identifiers}
            for id_type, value in _replace_owned(self.identifiers, plan.key, held_ids):
                given_up.add(("identifier", id_type, value))
        if plan.local_codes is not None:
            for lab, code in _replace_owned(self.local_codes, plan.key, set(plan.local_codes)):
                given_up.add(("local_code", lab, code))
        if plan.certificates is not None:
            held_certs = {c.fingerprint_sha256 for c in plan.certificates}
            for fingerprint in _replace_owned(self.certificates, plan.key, held_certs):
                given_up.add(("certificate", fingerprint, ""))
        return given_up


#: An identifier, local code or certificate, one namespace for all three.
_Item = tuple[str, str, str]


def _items(plan: RowPlan) -> set[_Item]:
    """The identifiers, local codes and certificates a row lists, as `claim` names them."""
    items = {("identifier", i.id_type, i.value) for i in plan.identifiers or ()}
    items.update(("local_code", lab, code) for lab, code in plan.local_codes or ())
    items.update(("certificate", c.fingerprint_sha256, "") for c in plan.certificates or ())
    return items


def _replace_owned(owners: dict[K, str], key: str, held: set[K]) -> list[K]:
    """Make `key` the owner of exactly `held` in `owners`; return what it gave up."""
    given_up = [item for item, owner in owners.items() if owner == key and item not in held]
    for item in given_up:
        del owners[item]
    owners.update(dict.fromkeys(held, key))
    return given_up


def _unchanged(recipient: Recipient, plan: RowPlan) -> bool:
    """Whether the stored recipient already matches the row in every part the file manages."""
    return (
        recipient.source == LOCAL
        and recipient.kind == plan.kind
        and recipient.name == plan.name
        and (not plan.has_specialty or recipient.specialty == plan.specialty)
        and (
            plan.identifiers is None
            or {(i.id_type, i.value, i.authority) for i in recipient.identifiers}
            == {(i.id_type, i.value, i.authority) for i in plan.identifiers}
        )
        and (
            plan.local_codes is None
            or {(c.laboratory.code, c.code) for c in recipient.local_codes} == set(plan.local_codes)
        )
        and (
            plan.channels is None
            or tuple((c.kind, c.address) for c in sorted(recipient.channels, key=_by_priority))
            == plan.channels
        )
        and (
            plan.certificates is None
            or {c.fingerprint_sha256 for c in recipient.certificates}
            == {c.fingerprint_sha256 for c in plan.certificates}
        )
    )


def _by_priority(channel: Channel) -> tuple[int, int]:
    return (channel.priority, channel.id or 0)


def _apply(
    session: Session, recipient: Recipient, plan: RowPlan, labs: dict[str, Laboratory]
) -> None:
    """Make the stored recipient match the row, keeping rows that stay (same natural key)
    so unique constraints never see a delete and re-insert of the same value."""
    recipient.kind = plan.kind
    recipient.name = plan.name
    if plan.has_specialty:
        recipient.specialty = plan.specialty

    if plan.identifiers is not None:
        wanted_ids = {(i.id_type, i.value): i for i in plan.identifiers}
        for stored in list(recipient.identifiers):
            identifier = wanted_ids.pop((stored.id_type, stored.value), None)
            if identifier is None:
                recipient.identifiers.remove(stored)
            else:
                stored.authority = identifier.authority
        recipient.identifiers.extend(
            RecipientIdentifier(id_type=i.id_type, value=i.value, authority=i.authority)
            for i in wanted_ids.values()
        )

    if plan.local_codes is not None:
        wanted_codes = set(plan.local_codes)
        for stored_code in list(recipient.local_codes):
            pair = (stored_code.laboratory.code, stored_code.code)
            if pair in wanted_codes:
                wanted_codes.discard(pair)
            else:
                recipient.local_codes.remove(stored_code)
        _laboratories(session, {lab for lab, _ in wanted_codes}, labs)
        recipient.local_codes.extend(
            LocalCode(laboratory=labs[lab], code=code)
            for lab, code in plan.local_codes
            if (lab, code) in wanted_codes
        )

    if plan.channels is not None:
        stored_channels = {(c.kind, c.address): c for c in recipient.channels}
        for priority, (kind, address) in enumerate(plan.channels):
            stored_channel = stored_channels.pop((kind, address), None)
            if stored_channel is None:
                recipient.channels.append(Channel(kind=kind, address=address, priority=priority))
            else:
                stored_channel.priority = priority
        for stale in stored_channels.values():
            recipient.channels.remove(stale)

    if plan.certificates is not None:
        wanted_certs = {c.fingerprint_sha256: c for c in plan.certificates}
        for stored_cert in list(recipient.certificates):
            if wanted_certs.pop(stored_cert.fingerprint_sha256, None) is None:
                recipient.certificates.remove(stored_cert)
        recipient.certificates.extend(
            Certificate(
                pem=c.pem,
                subject=c.subject,
                fingerprint_sha256=c.fingerprint_sha256,
                not_before=c.not_before,
                not_after=c.not_after,
            )
            for c in wanted_certs.values()
        )


def _laboratories(session: Session, codes: set[str], labs: dict[str, Laboratory]) -> None:
    """Add the named laboratories to `labs`, creating those never seen before."""
    missing = codes - labs.keys()
    if not missing:
        return
    labs.update(
        (lab.code, lab)
        for lab in session.scalars(select(Laboratory).where(Laboratory.code.in_(missing)))
    )
    for code in missing - labs.keys():
        labs[code] = Laboratory(code=code)
        session.add(labs[code])
