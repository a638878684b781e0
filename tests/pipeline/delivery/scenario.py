"""A small world for the delivery tests: a directory, a laboratory, results naming people.

Dr Martin (RPPS, mail) orders; Dr Leroy (ADELI, mailbox) gets a copy; Dr Bernard is known
only by the laboratory's local code (https); RPPS 10009999999 is nobody the directory knows.
"""

from __future__ import annotations

import base64
from pathlib import Path

from tests.pipeline.hl7.builders import seg

LAB = "LABO-TEST"
IDNPS = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"
MARTIN = f"810001234567^MARTIN^Sophie^^^DR^^^{IDNPS}^D^^^IDNPS"
LEROY = f"0751234567^LEROY^Paul^^^DR^^^{IDNPS}^D^^^IDNPS"
BERNARD_LOCAL = "DR042^BERNARD^Luc^^^DR^^^LABO-TEST"
STRANGER = f"810009999999^INCONNU^Jean^^^DR^^^{IDNPS}^D^^^IDNPS"
PDF = b"%PDF-1.4\n% labdispatch test document\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"

DIRECTORY_ROWS = [
    ("sophie.martin", "clinician", "MARTIN Sophie", "RPPS:10001234567", "",
     "mail:sophie.martin@martin.mssante.example"),
    ("paul.leroy", "clinician", "LEROY Paul", "ADELI:751234567", "", "mailbox:paul.leroy"),
    ("luc.bernard", "clinician", "BERNARD Luc", "", f"{LAB}=DR042",
     "https:https://results.bernard.example/inbox"),
]  # fmt: skip


def directory_csv(folder: Path, certificates: dict[str, str] | None = None) -> Path:
    """The directory as a CSV file; `certificates` maps a key to a PEM file path."""
    certificates = certificates or {}
    lines = ["key,kind,name,identifiers,local_codes,channels,certificate"]
    for key, kind, name, identifiers, local_codes, channels in DIRECTORY_ROWS:
        lines.append(
            f"{key},{kind},{name},{identifiers},{local_codes},{channels},"
            f"{certificates.get(key, '')}"
        )
    path = folder / "directory.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def oru(
    control_id: str = "LT-0001",
    *,
    ordering: str = MARTIN,
    copy_to: str = LEROY,
    potassium: str = "5.9",
    pdf: bytes | None = None,
    charset: str = "UNICODE UTF-8",
    encoding: str = "utf-8",
) -> bytes:
    """One ORU^R01 v2.5 result, CR-separated, as an LIS sends it."""
    msh = (
        f"MSH|^~\\&|SIL-TEST|{LAB}|LABDISPATCH|LABDISPATCH|20261128093000||ORU^R01^ORU_R01|"
        f"{control_id}|P|2.5|||||FRA|{charset}"
    )
    segments = [
        msh,
        seg("PID", {3: "248125612345678^^^INS-NIR^INS", 5: "DUPONT^Hélène^^^^^L", 8: "F"}),
        seg("ORC", {1: "RE", 2: "CMD-1^CAB", 3: "LT-1^LAB", 12: ordering}),
        seg(
            "OBR",
            {
                1: "1",
                2: "CMD-1^CAB",
                3: "LT-1^LAB",
                4: "24326-1^Ionogramme^LN",
                16: ordering,
                25: "F",
                28: copy_to,
            },
        ),
        seg("OBX", {1: "1", 2: "NM", 3: "2951-2^Sodium^LN", 5: "141", 6: "mmol/L", 11: "F"}),
        seg("OBX", {1: "2", 2: "NM", 3: "2823-3^Potassium^LN", 5: potassium, 6: "mmol/L",
                    8: "H", 11: "F"}),
    ]  # fmt: skip
    if pdf is not None:
        data = base64.b64encode(pdf).decode()
        segments.append(
            seg("OBX", {1: "3", 2: "ED", 3: "11502-2^CR^LN", 5: f"^APPLICATION^PDF^Base64^{data}",
                        11: "F"})
        )  # fmt: skip
    return ("\r".join(segments) + "\r").encode(encoding)
