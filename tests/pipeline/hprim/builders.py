"""HPRIM files written from the specification's record layouts, for the tests.

Field numbers as the specification counts them (the record type is field 1); anything not
given is empty. `sante()` joins records with CR (pass `end=` for CRLF or LF).
"""

from __future__ import annotations

from tests.support import CORPUS

__all__ = ["CORPUS"]


def record(kind: str, fields: dict[int, str], sep: str = "|") -> str:
    last = max(fields) if fields else 1
    values = [kind] + [fields.get(number, "") for number in range(2, last + 1)]
    return sep.join(values)


def header(**overrides: str) -> str:
    fields = {
        3: "RES0042.HPR",
        5: "LAB01~Laboratoire des Lilas",
        7: "ORU",
        10: "CLIN~Clinique du Parc",
        12: "P",
        13: "H2.2~C",
        14: "202611281015",
    }
    for key, value in overrides.items():
        fields[int(key.removeprefix("f"))] = value
    last = max(fields)
    return "H|~^\\&|" + "|".join(fields.get(number, "") for number in range(3, last + 1))


def patient(seq: str = "1", name: str = "MARTIN~Jeanne", doctors: str = "") -> str:
    return record(
        "P", {2: seq, 3: f"IPP{seq}", 4: f"LAB{seq}", 6: name, 8: "19700101", 9: "F", 14: doctors}
    )


def order(seq: str = "1", prescriber: str = "DUPONT~DR DUPONT JEAN~L", status: str = "F") -> str:
    return record(
        "OBR", {2: seq, 4: f"DEM{seq}~EXE{seq}", 5: "GLY~Glycemie~L", 17: prescriber, 26: status}
    )


def result(seq: str = "1", status: str = "F", value: str = "5.2") -> str:
    return record(
        "OBX",
        {
            2: seq,
            3: "NM",
            4: "GLY~Glycemie~L",
            6: value,
            7: "mmol/l",
            8: "4.1 - 5.9",
            9: "N",
            12: status,
            15: "202611280930",
        },
    )


def end(patients: str = "", lines: str = "") -> str:
    return record("L", {2: "1", 4: patients, 5: lines})


def sante(*records: str, end_with: str = "\r") -> bytes:
    return "".join(r + end_with for r in records).encode("latin-1")


def simple(**overrides: str) -> list[str]:
    return [header(**overrides), patient(), order(), result(), end()]


MEDECINS_HEADER = [
    "IPP0042",
    "MARTIN",
    "JEANNE",
    "3 rue des Lilas",
    "",
    "75020 PARIS",
    "01/01/1970",
    "2700175020001",
    "D26-0042",
    "28/11/2026",
    "LAB01      Laboratoire des Lilas",
    "DRDUPONT   Dr Jean Dupont",
]


def medecins_report(
    number: str = "D26-0042",
    recipient: str = "DRDUPONT   Dr Jean Dupont",
    body: list[str] | None = None,
) -> list[str]:
    head = list(MEDECINS_HEADER)
    head[8] = number
    head[11] = recipient
    body = (
        body
        if body is not None
        else [
            "Compte rendu de biologie",
            "****LAB****",
            "RES|Glycemie|GLY|N|5.2|mmol/l|4.1|5.9||F|",
            "TEX|Dosage enzymatique",
            "RES|Sodium|NA|N|140|mmol/l|136|145||F|",
            "****FIN****",
        ]
    )
    return head + body + ["****FINFICHIER****"]


def medecins(*reports: list[str], end_with: str = "\r\n") -> bytes:
    return "".join(line + end_with for report in reports for line in report).encode("latin-1")
