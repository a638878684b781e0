"""Annuaire Santé extraction files in the published format, made up: for the tests and
the benchmark (`benchmarks/national_directory.py`). Names and numbers are synthetic."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: The MSSanté file's header as FACTS.md §4 lists its 31 columns.
MSSANTE_HEADER = (
    "Type de BAL|Adresse BAL|Type identifiant PP|Identifiant PP|Identification nationale PP|"
    "Type identifiant structure|Identification Structure|Service de rattachement|"
    "Civilité d'exercice|Nom d'exercice|Prénom d'exercice|Catégorie professionnelle|"
    "Libellé catégorie professionnelle|Code profession|Libellé profession|Code savoir-faire|"
    "Libellé savoir-faire|Dématérialisation|Raison sociale structure BAL|"
    "Enseigne commerciale structure BAL|L2 complément localisation|L3 complément distribution|"
    "L4 numéro voie|L4 complément numéro voie|L4 type voie|L4 libellé voie|L5 lieu-dit mention|"
    "L6 ligne acheminement|Code postal|Département|Pays"
)
PRACTITIONERS_HEADER = (
    "Type d'identifiant PP|Identifiant PP|Identification nationale PP|Code civilité d'exercice|"
    "Libellé civilité d'exercice|Nom d'exercice|Prénom d'exercice|Code profession|"
    "Libellé profession|Code catégorie professionnelle|Libellé catégorie professionnelle|"
    "Code type savoir-faire|Libellé type savoir-faire|Code savoir-faire|Libellé savoir-faire|"
    "Code mode exercice|Libellé mode exercice"
)


@dataclass(frozen=True)
class Person:
    rpps: str
    last: str
    first: str
    address: str
    accepts: str = "true"
    specialty: str = "Médecine Générale"


def person_row(person: Person) -> str:
    return "|".join(
        [
            "PER",
            person.address,
            "8",
            person.rpps,
            "8" + person.rpps,
            "",
            "",
            "",
            "DR",
            person.last,
            person.first,
            "C",
            "Civil",
            "10",
            "Médecin",
            "SM54",
            person.specialty,
            person.accepts,
            "",
            "",
            "",
            "",
            "12",
            "",
            "R",
            "DE LA PAIX",
            "",
            "75001 PARIS",
            "75001",
            "75",
            "FRANCE",
        ]
    )


def organisation_row(finess: str, name: str, address: str, service: str = "") -> str:
    cells = ["ORG", address, "", "", "", "1", "1" + finess, service, "", "", ""]
    cells += ["", "", "", "", "", "", "true", name, ""] + [""] * 8 + ["69003", "69", "FRANCE"]
    return "|".join(cells)


def practitioner_row(person: Person) -> str:
    identity = ["8", person.rpps, "8" + person.rpps, "DR", "Docteur", person.last, person.first]
    activity = ["10", "Médecin", "C", "Civil", "S", "Spécialité", "SM54", person.specialty]
    return "|".join([*identity, *activity, "L", "Libéral"])


def write_mssante(path: Path, rows: Iterable[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(MSSANTE_HEADER + "\r\n")
        for row in rows:
            out.write(row + "\r\n")
    return path


def write_practitioners(path: Path, people: Iterable[Person]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(PRACTITIONERS_HEADER + "\r\n")
        for person in people:
            out.write(practitioner_row(person) + "\r\n")
    return path


def synthetic_person(n: int, *, generation: int = 0) -> Person:
    """The n-th made-up clinician. A later `generation` changes 1 % of them each way: a new
    address (n % 100 == 7), the Dématérialisation flag turned (13), a new name (17)."""
    changed = generation and n % 100
    accepts = n % 50 == 3
    if changed == 13:
        accepts = not accepts
    return Person(
        rpps=f"{10_000_000_000 + n}",
        last=f"NOM{n}" + (f"-G{generation}" if changed == 17 else ""),
        first="Prénom",
        address=f"dr.{n}" + (f".g{generation}" if changed == 7 else "") + "@medecin.mssante.fr",
        accepts="false" if accepts else "true",
    )
