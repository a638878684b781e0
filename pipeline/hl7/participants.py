"""Who a result names as its recipients, and in what role.

Sources, as laboratories fill them: ordering provider (ORC-12, OBR-16), result copies to
(OBR-28), referring doctor (PV1-8), and PRT participations (v2.7, back-ported into 2.5 by
the French ANS profile): RCT names a recipient in PRT-5 (or an organisation in PRT-8) with
its messaging address in PRT-15, and may name the patient. The same person named in
several places is one recipient with several roles. A person named without an identifier
is reported as such: we never make an identifier up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.hl7.parse import Hl7Message
from pipeline.hl7.segments import Delimiters, Segment, component_value
from pipeline.identifiers import INS, LOCAL, Identifier, normalise_identifier

ORDERING = "ordering"
COPY_TO = "copy_to"
REFERRING = "referring"
PATIENT = "patient"

PERSON = "person"
ORGANISATION = "organisation"
PATIENT_KIND = "patient"

#: PRT-4 participation codes (HL7 table 0912) that make someone a recipient of the result.
PRT_ROLES = {"RCT": COPY_TO, "OP": ORDERING, "RP": REFERRING}

NO_IDENTIFIER = "no identifier: named only, cannot be routed until the lab sends an ID"


@dataclass(frozen=True)
class Participant:
    """One recipient the message names; `identifier` is None when it gives only a name."""

    identifier: Identifier | None
    name: str
    kind: str
    roles: tuple[str, ...]
    sources: tuple[str, ...]
    address: str = ""
    problems: tuple[str, ...] = ()

    @property
    def id_type(self) -> str | None:
        return self.identifier.id_type if self.identifier else None

    @property
    def id(self) -> str | None:
        return self.identifier.value if self.identifier else None


@dataclass
class _Draft:
    identifier: Identifier | None
    name: str
    kind: str
    roles: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    address: str = ""
    problems: list[str] = field(default_factory=list)
    raw_id: str = ""  # the identifier as written, before normalisation

    def absorb(self, other: _Draft) -> None:
        self.identifier = self.identifier or other.identifier
        self.name = self.name or other.name
        self.address = self.address or other.address
        if other.kind == PATIENT_KIND:
            self.kind = PATIENT_KIND
        for target, items in (
            (self.roles, other.roles),
            (self.sources, other.sources),
            (self.problems, other.problems),
        ):
            target.extend(item for item in items if item not in target)

    def freeze(self) -> Participant:
        problems = list(self.problems)
        if self.identifier is None and NO_IDENTIFIER not in problems:
            problems.append(NO_IDENTIFIER)
        if self.identifier is not None and NO_IDENTIFIER in problems:
            problems.remove(NO_IDENTIFIER)
        return Participant(
            identifier=self.identifier,
            name=self.name,
            kind=self.kind,
            roles=tuple(self.roles),
            sources=tuple(self.sources),
            address=self.address,
            problems=tuple(problems),
        )


def _source(segment: Segment, number: int) -> str:
    label = segment.name if segment.sequence == 1 else f"{segment.name}[{segment.sequence}]"
    return f"{label}-{number}"


def _looks_like_identifier(value: str) -> bool:
    """XCN-1 sometimes carries a free-text name ("Harrison , Kyle"): that is no identifier."""
    return not any(char.isspace() or char == "," for char in value)


def read_person(
    components: list[str], delimiters: Delimiters
) -> tuple[Identifier | None, str, list[str]]:
    """An XCN (extended composite ID and name for persons) → identifier, name, problems."""

    def get(number: int, sub: int = 1) -> str:
        return component_value(components, number, delimiters, sub).strip()

    raw_id = get(1)
    family = get(2)
    given = get(3)
    problems: list[str] = []
    if raw_id and not _looks_like_identifier(raw_id):
        problems.append("the ID number component holds text, not an identifier; read as a name")
        if not family:
            family = raw_id
        raw_id = ""
    identifier = normalise_identifier(raw_id, get(13), get(9, 1), get(9, 2))
    name = " ".join(part for part in (family, given) if part)
    return identifier, name, problems


def read_organisation(
    components: list[str], delimiters: Delimiters
) -> tuple[Identifier | None, str]:
    """An XON (organisation name and identifier) → identifier, name."""

    def get(number: int, sub: int = 1) -> str:
        return component_value(components, number, delimiters, sub).strip()

    raw_id = get(10) or get(3)
    return normalise_identifier(raw_id, get(7), get(6, 1), get(6, 2)), get(1)


def read_address(segment: Segment, number: int) -> str:
    """The first messaging address in a repeating XTN field: XTN-4 (e-mail / X.400), or
    XTN-1 when an older sender put it there. Telephone numbers are not addresses."""
    for repetition in range(len(segment.repetitions(number))):
        components = segment.components(number, repetition)
        address = component_value(components, 4, segment.delimiters).strip()
        if not address:
            legacy = component_value(components, 1, segment.delimiters).strip()
            address = legacy if "@" in legacy else ""
        if address:
            return address
    return ""


def extract_participants(
    message: Hl7Message, patient_ids: frozenset[Identifier] = frozenset()
) -> tuple[Participant, ...]:
    """Every recipient the message names, merged so each person appears once."""
    drafts: list[_Draft] = []
    delimiters = message.delimiters

    def add_person(segment: Segment, number: int, role: str) -> None:
        for repetition in range(len(segment.repetitions(number))):
            components = segment.components(number, repetition)
            identifier, name, problems = read_person(components, delimiters)
            if identifier is None and not name:
                continue
            drafts.append(
                _Draft(
                    identifier=identifier,
                    name=name,
                    kind=PERSON,
                    roles=[role],
                    sources=[_source(segment, number)],
                    problems=problems,
                    raw_id=component_value(components, 1, delimiters).strip(),
                )
            )

    for segment in message.segments:
        if segment.name == "ORC":
            add_person(segment, 12, ORDERING)
        elif segment.name == "OBR":
            add_person(segment, 16, ORDERING)
            add_person(segment, 28, COPY_TO)
        elif segment.name == "PV1":
            add_person(segment, 8, REFERRING)
        elif segment.name == "PRT":
            draft = _read_prt(segment, delimiters)
            if draft is not None:
                drafts.append(draft)

    for draft in drafts:
        if draft.identifier is not None and (
            _is_patient_id(draft.identifier, patient_ids)
            or (draft.identifier.id_type == INS and draft.sources[0].startswith("PRT"))
        ):
            draft.kind = PATIENT_KIND
            draft.roles = [PATIENT]
    return tuple(draft.freeze() for draft in _merge(drafts))


def _is_patient_id(identifier: Identifier, patient_ids: frozenset[Identifier]) -> bool:
    """National identifiers match by type and value; a local code only with the same
    assigning authority, since a lab's patient numbers and doctor codes may collide."""
    for patient_id in patient_ids:
        if identifier != patient_id:
            continue
        if identifier.is_national or (
            identifier.authority and identifier.authority == patient_id.authority
        ):
            return True
    return False


def _read_prt(segment: Segment, delimiters: Delimiters) -> _Draft | None:
    code = segment.value(4, 1).strip().upper()
    role = PRT_ROLES.get(code)
    if role is None:
        return None
    address = read_address(segment, 15)
    identifier, name, problems = read_person(segment.components(5), delimiters)
    kind = PERSON
    source = _source(segment, 5)
    if identifier is None and not name:
        identifier, name = read_organisation(segment.components(8), delimiters)
        kind = ORGANISATION
        source = _source(segment, 8)
        problems = []
    if identifier is None and not name and not address:
        return None
    return _Draft(
        identifier=identifier,
        name=name,
        kind=kind,
        roles=[role],
        sources=[source],
        address=address,
        problems=problems,
        raw_id=component_value(segment.components(5), 1, delimiters).strip(),
    )


def _name_key(name: str) -> str:
    return " ".join(name.replace(",", " ").split()).casefold()


def _merge(drafts: list[_Draft]) -> list[_Draft]:
    """One entry per person, in the order the message first names them.

    Same identifier: one person. An untyped (LOCAL) code equal to a typed identifier, as
    written or normalised, with the same name: the same person. A name given without any
    identifier joins the identified person of that name, else the others of that name.
    """
    typed: dict[tuple[str, str], Identifier] = {}
    for draft in drafts:
        if draft.identifier is not None and draft.identifier.id_type != LOCAL:
            for value in (draft.identifier.value, draft.raw_id):
                typed.setdefault((value, _name_key(draft.name)), draft.identifier)

    kept: dict[object, _Draft] = {}  # by identifier, or by name key for name-only mentions
    for draft in drafts:
        identifier = draft.identifier
        if identifier is not None and identifier.id_type == LOCAL:
            identifier = typed.get((identifier.value, _name_key(draft.name)), identifier)
            draft.identifier = identifier
        if identifier is not None:
            _keep(kept, identifier, draft)
    by_name = {_name_key(d.name): d for d in kept.values() if _name_key(d.name)}
    for draft in drafts:
        if draft.identifier is not None:
            continue
        key = _name_key(draft.name)
        twin = by_name.get(key) if key else None
        if twin is not None:
            twin.absorb(draft)
        else:
            _keep(kept, ("name", key or id(draft)), draft)
            if key:
                by_name[key] = draft
    order = {id(draft): position for position, draft in enumerate(drafts)}
    return sorted(kept.values(), key=lambda draft: order[id(draft)])


def _keep(kept: dict[object, _Draft], key: object, draft: _Draft) -> None:
    existing = kept.get(key)
    if existing is None:
        kept[key] = draft
    else:
        existing.absorb(draft)
