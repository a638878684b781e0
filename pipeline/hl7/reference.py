"""hl7apy's model of each HL7 version, used where it buys something: knowing the language.

We ask hl7apy which segments a version defines, which segments a message structure may
hold, and which codes a table allows. These are dictionary look-ups on hl7apy's reference
modules, loaded once per version: they cost microseconds, where parsing a whole message
into hl7apy objects costs ~16 ms and rejects the PRT segments French labs back-port into
v2.5 messages. The tokenizer in `segments` does the reading; hl7apy says what is valid.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from hl7apy import load_library

#: Versions we accept results in. hl7apy knows 2.1 onwards; from 2.2 on, ORU^R01 carries
#: its providers in the same component positions (CN, then XCN), so we read them alike.
SUPPORTED_VERSIONS = (
    "2.2",
    "2.3",
    "2.3.1",
    "2.4",
    "2.5",
    "2.5.1",
    "2.6",
    "2.7",
    "2.8",
    "2.8.1",
    "2.8.2",
)

#: Segments profiles back-port into earlier versions, with the version that defines them.
#: PRT (participation, v2.7) carries result recipients in the French ANS CI-SIS profile on
#: 2.5; we read it in any version, since its meaning does not depend on the message's.
BACKPORTED_SEGMENTS = {"PRT": "2.7"}

#: Table numbers we check values against.
TABLE_ORDER_RESULT_STATUS = "HL70123"  # OBR-25
TABLE_OBSERVATION_RESULT_STATUS = "HL70085"  # OBX-11


def _library(version: str) -> Any:
    return load_library(version)


@cache
def native_segments(version: str) -> frozenset[str]:
    """Segment names the version itself defines."""
    return frozenset(name for name in _library(version).SEGMENTS if len(name) == 3)


@cache
def defined_segments(version: str) -> frozenset[str]:
    """Segment names the version defines, plus those profiles back-port into it."""
    return native_segments(version) | frozenset(BACKPORTED_SEGMENTS)


@cache
def first_defined_in(name: str) -> str | None:
    """The earliest supported version defining segment `name`, None if no version does."""
    for version in SUPPORTED_VERSIONS:
        if name in native_segments(version):
            return version
    return None


@cache
def structure_segments(version: str, structure: str) -> frozenset[str]:
    """Every segment name a message structure (e.g. ORU_R01) may contain, at any depth."""
    messages = _library(version).MESSAGES
    if structure not in messages:
        return frozenset()
    names: set[str] = set()

    def walk(children: Any) -> None:
        for child in children:
            name, spec, _cardinality, kind = child
            if kind == "SEG":
                names.add(name)
            else:
                walk(spec[1])

    walk(messages[structure][1])
    return frozenset(names)


@cache
def table_codes(version: str, table: str) -> frozenset[str]:
    """The codes an HL7 table allows in this version (empty when hl7apy has no such table)."""
    tables = getattr(_library(version), "TABLES", None) or {}  # hl7apy has none for 2.3
    entry = tables.get(table)
    if not entry:
        return frozenset()
    return frozenset(entry[1])


def is_defined_segment(version: str, name: str) -> bool:
    return name.startswith("Z") or name in defined_segments(version)


def is_known_segment(name: str) -> bool:
    """Defined by some HL7 version (or a Z-segment): a real segment, if perhaps misplaced."""
    return name.startswith("Z") or first_defined_in(name) is not None
