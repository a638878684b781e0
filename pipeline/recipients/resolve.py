"""Who is this identifier? — the directory's one answer to routing.

A national identifier names the same person for every laboratory, so it is looked up on
its own. Anything else (a LOCAL code, or a sender-specific type such as "EI" or an IDNPS
with an unknown prefix) only means something to the laboratory that sent it, so it is
looked up in that laboratory's local codes, by value. Nothing is guessed: no prefix
stripping beyond `normalise_identifier`, no name matching, no fallback to another lab. An
unresolved identifier comes back with a reason an operator can act on, and the result is
parked until the directory learns the recipient.

`resolve_many` answers a whole batch in a handful of queries, whatever its size, because
routing runs on batches of results.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, selectinload

from pipeline.identifiers import PRIVATE_TYPES, Identifier
from pipeline.recipients.identifiers import BlindIndex, blind_forms
from pipeline.recipients.models import (
    Channel,
    Laboratory,
    LocalCode,
    Recipient,
    RecipientIdentifier,
)

#: Values per IN list: well under every engine's bound-parameter limit.
CHUNK = 500

T = TypeVar("T")


@dataclass(frozen=True)
class Resolution:
    wanted: Identifier | None  # what was looked for (None: the message gave no identifier)
    recipient_key: str | None  # None when unresolved
    name: str | None
    kind: str | None
    channels: tuple[str, ...]  # "kind:address" results may go to, most preferred first
    reason: str  # "" when resolved, else why not, in words an operator can act on
    #: The recipient's channels results may not go to, with why ("kind:address", reason):
    #: a mailbox whose holder refuses electronic results, a kind not deliverable yet.
    unusable: tuple[tuple[str, str], ...] = ()

    @property
    def resolved(self) -> bool:
        return self.recipient_key is not None


def resolve(
    session: Session,
    lab_code: str,
    wanted: Identifier | None,
    *,
    index: BlindIndex | None = None,
) -> Resolution:
    """Find the recipient `lab_code` (MSH-4) means by `wanted`."""
    return resolve_many(session, lab_code, [wanted], index=index)[0]


def resolve_many(
    session: Session,
    lab_code: str,
    wanted: Sequence[Identifier | None],
    *,
    index: BlindIndex | None = None,
) -> list[Resolution]:
    """Resolve a batch from one laboratory; answers come in the order asked. A private
    identifier (INS) is also looked up by its keyed hashes under `index`, the form the
    directory keeps it in (`directory_csv.import_directory`)."""
    national = {(w.id_type, w.value) for w in wanted if w is not None and w.is_national}
    local = {w.value for w in wanted if w is not None and not w.is_national}

    lookup = {pair: pair for pair in national}
    if index is not None:
        for id_type, value in national:
            if id_type in PRIVATE_TYPES:
                for form in blind_forms(Identifier(id_type, value), index):
                    lookup[(id_type, form)] = (id_type, value)
    by_national = {
        lookup[stored]: owner for stored, owner in _national_owners(session, set(lookup)).items()
    }
    lab_known, by_local = _local_owners(session, lab_code, local)
    recipients = _recipients(session, set(by_national.values()) | set(by_local.values()))

    answers = []
    for item in wanted:
        if item is None:
            answers.append(_unresolved(None, "no identifier in the message"))
            continue
        if item.is_national:
            recipient_id = by_national.get((item.id_type, item.value))
            reason = f"{item.id_type} {item.value} is not in the directory"
        else:
            recipient_id = by_local.get(item.value)
            reason = (
                f"{lab_code} has no local code {item.value}"
                if lab_known
                else f"laboratory {lab_code} is not in the directory, "
                f"so its local code {item.value} names no one"
            )
        if recipient_id is None:
            answers.append(_unresolved(item, reason))
            continue
        recipient = recipients[recipient_id]
        usable, unusable = usable_channels(recipient.channels)
        answers.append(
            Resolution(
                wanted=item,
                recipient_key=recipient.key,
                name=recipient.name,
                kind=recipient.kind,
                channels=usable,
                reason="",
                unusable=unusable,
            )
        )
    return answers


#: Channel kinds the directory keeps but nothing delivers to yet, and what to tell the
#: laboratory instead (docs/directory-national.md "Channel kind").
NOT_DELIVERABLE_YET = {
    "mssante": "results cannot be sent to MSSanté mailboxes yet (the MSSanté channel is not "
    "built); send this result another way, or give the recipient another channel",
}
#: Why a mailbox whose holder refuses electronic results is never used.
REFUSES_ELECTRONIC = (
    "refuses results sent electronically (Annuaire Santé: Dématérialisation = false); "
    "send this result on paper"
)


def usable_channels(
    channels: Iterable[Channel],
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The channels results may go to (in preference order), and the others with why."""
    usable: list[str] = []
    unusable: list[tuple[str, str]] = []
    for channel in channels:
        if channel.accepts_results is False:
            unusable.append((str(channel), REFUSES_ELECTRONIC))
        elif channel.kind in NOT_DELIVERABLE_YET:
            unusable.append((str(channel), NOT_DELIVERABLE_YET[channel.kind]))
        else:
            usable.append(str(channel))
    return tuple(usable), tuple(unusable)


def _unresolved(wanted: Identifier | None, reason: str) -> Resolution:
    return Resolution(wanted, None, None, None, (), reason)


def _chunks(items: Iterable[T]) -> Iterator[list[T]]:
    ordered = list(items)
    for start in range(0, len(ordered), CHUNK):
        yield ordered[start : start + CHUNK]


def _national_owners(session: Session, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    owners: dict[tuple[str, str], int] = {}
    for chunk in _chunks(wanted):
        by_type: dict[str, list[str]] = {}
        for id_type, value in chunk:
            by_type.setdefault(id_type, []).append(value)
        rows = session.execute(
            select(
                RecipientIdentifier.id_type,
                RecipientIdentifier.value,
                RecipientIdentifier.recipient_id,
            ).where(
                or_(
                    *(
                        and_(
                            RecipientIdentifier.id_type == id_type,
                            RecipientIdentifier.value.in_(values),
                        )
                        for id_type, values in by_type.items()
                    )
                )
            )
        )
        owners.update({(id_type, value): owner for id_type, value, owner in rows})
    return owners


def _local_owners(session: Session, lab_code: str, codes: set[str]) -> tuple[bool, dict[str, int]]:
    """Whether the laboratory is known, and its local codes among `codes`."""
    if not codes:
        return True, {}
    lab_id = session.scalar(select(Laboratory.id).where(Laboratory.code == lab_code))
    if lab_id is None:
        return False, {}
    owners: dict[str, int] = {}
    for chunk in _chunks(codes):
        rows = session.execute(
            select(LocalCode.code, LocalCode.recipient_id).where(
                LocalCode.laboratory_id == lab_id, LocalCode.code.in_(chunk)
            )
        )
        owners.update({code: owner for code, owner in rows})
    return True, owners


def _recipients(session: Session, ids: set[int]) -> dict[int, Recipient]:
    found: dict[int, Recipient] = {}
    for chunk in _chunks(ids):
        found.update(
            (recipient.id, recipient)
            for recipient in session.scalars(
                select(Recipient)
                .where(Recipient.id.in_(chunk))
                .options(selectinload(Recipient.channels))
            )
        )
    return found
