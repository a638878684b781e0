"""What both HPRIM readers share on the way to `RoutingFacts`: statuses, people, merging."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.hl7.facts import RoutingFacts
from pipeline.hl7.participants import NO_IDENTIFIER, Participant
from pipeline.identifiers import Identifier, normalise_identifier

#: The role of whoever the file's header names as its receiver (HPRIM Santé H-10,
#: HPRIM Médecins line 12), beside the HL7 roles (ordering, copy_to, referring, patient).
RECEIVER = "receiver"
COPY_TO = "copy_to"
#: Identifier types a CNA's third component may name; anything else is the lab's own code.
_TYPED = frozenset({"RPPS", "ADELI", "IDNPS", "FINESS", "FINEG", "FINEJ"})

FORMAT_SANTE = "hprim-sante"
FORMAT_MEDECINS = "hprim-medecins"


@dataclass(frozen=True)
class HprimPart:
    """One result of an HPRIM file (a patient in HPRIM Santé, a report in HPRIM Médecins):
    the bytes to record and deliver, and its facts."""

    data: bytes
    facts: RoutingFacts


@dataclass(frozen=True)
class HprimFile:
    """What either reader makes of a file: its results, and the codec it was read in."""

    parts: tuple[HprimPart, ...]
    codec: str


@dataclass
class People:
    """Recipients in the order the file names them; the same identifier (or, without one,
    the same name) is one person with several roles."""

    drafts: list[dict[str, object]] = field(default_factory=list)

    def add(
        self,
        code: str,
        name: str,
        kind: str,
        role: str,
        source: str,
        id_type: str = "",
        authority: str = "",
    ) -> None:
        kind_code = id_type.strip().upper()
        identifier = normalise_identifier(code, kind_code if kind_code in _TYPED else "", authority)
        name = " ".join(name.split())
        if identifier is None and not name:
            return
        for draft in self.drafts:
            same = (
                draft["identifier"] == identifier
                if identifier is not None
                else draft["identifier"] is None and draft["name"] == name
            )
            if same:
                for key, value in (("roles", role), ("sources", source)):
                    items = draft[key]
                    assert isinstance(items, list)
                    if value not in items:
                        items.append(value)
                if not draft["name"]:
                    draft["name"] = name
                return
        self.drafts.append(
            {
                "identifier": identifier,
                "name": name,
                "kind": kind,
                "roles": [role],
                "sources": [source],
            }
        )

    def freeze(self) -> tuple[Participant, ...]:
        out = []
        for draft in self.drafts:
            identifier = draft["identifier"]
            assert identifier is None or isinstance(identifier, Identifier)
            roles, sources = draft["roles"], draft["sources"]
            assert isinstance(roles, list) and isinstance(sources, list)
            out.append(
                Participant(
                    identifier=identifier,
                    name=str(draft["name"]),
                    kind=str(draft["kind"]),
                    roles=tuple(roles),
                    sources=tuple(sources),
                    problems=(NO_IDENTIFIER,) if identifier is None else (),
                )
            )
        return tuple(out)
