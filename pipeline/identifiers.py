"""One spelling per identifier, whoever wrote it.

Below every reader of results and the directory alike (`pipeline.hl7`, `pipeline.hprim` and
`pipeline.recipients` import it; it imports nothing of ours): intake normalises what a
message names with the very function the directory uses, without intake depending on the
directory.

Laboratories name the same clinician in many ways: an IDNPS (`8` + RPPS, `0` + ADELI), the
same IDNPS typed as RPPS, an assigning authority with a stray space ("ASIP-SANTE- PS"), or a
local code only their LIS knows. Routing and the directory compare identifiers only after
`normalise_identifier`, so both sides agree on what "the same person" means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Identifier types that name a person or organisation nationally; looked up without a lab.
RPPS = "RPPS"
ADELI = "ADELI"
FINESS = "FINESS"
SIREN = "SIREN"
SIRET = "SIRET"
INS = "INS"
IDNPS = "IDNPS"
#: A code that only the sending laboratory understands; looked up in that lab's table.
LOCAL = "LOCAL"

NATIONAL_TYPES = frozenset({RPPS, ADELI, FINESS, SIREN, SIRET, INS})
#: Identifiers of patients: kept in the directory as a keyed hash, never in clear
#: (`BlindIndex`; docs/directory-csv.md "Patients").
PRIVATE_TYPES = frozenset({INS})

#: ANS assigning authority for professionals' national identifiers (IDNPS).
IDNPS_OID = "1.2.250.1.71.4.2.1"
IDNPS_NAMESPACES = frozenset({"ASIP-SANTE-PS", "ANS-PS"})
#: ANS OIDs of the national health identifier (INS-NIR, INS-NIA and their test ranges).
INS_OIDS = frozenset(
    {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
)
INS_TYPE_CODES = frozenset({"INS", "INS-NIR", "INS-NIA", "INS-C"})

#: FINESS typed as geographic (FINEG) or legal-entity (FINEJ) establishment number.
FINESS_TYPE_CODES = frozenset({"FINESS", "FINEG", "FINEJ"})

#: First character of an IDNPS → the national identifier it wraps (ANS "structure" prefix).
IDNPS_PREFIXES = {"8": RPPS, "0": ADELI, "3": FINESS, "4": SIREN, "5": SIRET}


@dataclass(frozen=True, order=True)
class Identifier:
    """A normalised identifier: compare these, never raw HL7 strings.

    Two identifiers are the same when type and value agree; the assigning authority is
    kept for display, since senders spell it in many ways (namespace, OID, both).
    """

    id_type: str
    value: str
    authority: str = field(default="", compare=False)

    @property
    def is_national(self) -> bool:
        return self.id_type in NATIONAL_TYPES

    def __str__(self) -> str:
        return f"{self.id_type}:{self.value}"


def clean_authority(text: str) -> str:
    """Authorities are codes, never prose: drop every blank a sender slipped in."""
    return "".join(text.split())


def normalise_identifier(
    value: str,
    id_type: str = "",
    authority: str = "",
    authority_oid: str = "",
) -> Identifier | None:
    """Return the canonical identifier, or None when there is no value to identify anyone.

    `id_type` is the HL7 identifier type code (XCN-13/CX-5), `authority` and
    `authority_oid` the assigning authority's namespace and universal ID (XCN-9/CX-4).
    """
    value = value.strip()
    if not value:
        return None
    kind = " ".join(id_type.split()).upper()
    oid = clean_authority(authority_oid)
    namespace = clean_authority(authority) or oid

    is_idnps = kind == IDNPS or (
        not kind and (oid == IDNPS_OID or namespace.upper() in IDNPS_NAMESPACES)
    )
    if is_idnps:
        wrapped = IDNPS_PREFIXES.get(value[0])
        if wrapped is not None and len(value) > 1:
            return Identifier(wrapped, value[1:], namespace)
        return Identifier(IDNPS, value, namespace)
    if kind == RPPS and len(value) == 12 and value.startswith("8"):
        return Identifier(RPPS, value[1:], namespace)  # an IDNPS typed as RPPS
    if kind == ADELI and len(value) == 10 and value.startswith("0"):
        return Identifier(ADELI, value[1:], namespace)  # an IDNPS typed as ADELI
    if kind in FINESS_TYPE_CODES:
        if len(value) == 10 and value.startswith("1"):
            value = value[1:]  # an IDNST: "1" + FINESS
        return Identifier(FINESS, value, namespace)
    if kind in INS_TYPE_CODES or (not kind and oid in INS_OIDS):
        return Identifier(INS, value, namespace)
    if kind in NATIONAL_TYPES:
        return Identifier(kind, value, namespace)
    return Identifier(kind or LOCAL, value, namespace)


def parse_identifier_text(text: str) -> Identifier | None:
    """Read `TYPE:VALUE` (as typed by an operator or in a CSV cell) into an identifier."""
    text = text.strip()
    if not text:
        return None
    kind, sep, value = text.partition(":")
    if not sep:
        return None
    return normalise_identifier(value, kind)
