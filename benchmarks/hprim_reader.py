"""HPRIM reader cost: median (and p95) per result, beside the HL7 v2 reader's.

    .venv/bin/python benchmarks/hprim_reader.py [--rounds N]

Each case is read whole (`read_any`, the call intake makes: sniff, decode, records, checks,
facts) and the time divided by the results it holds. The HL7 lines read results of the
same kind (one patient, one request, ten results) with the HL7 reader, for comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.intake_cost import fifteen_segment_oru  # noqa: E402
from benchmarks.timing import measure  # noqa: E402
from pipeline.reading import read_any  # noqa: E402
from tests.pipeline.hprim.builders import (  # noqa: E402
    end,
    header,
    medecins,
    medecins_report,
    order,
    patient,
    result,
    sante,
)


def sante_file(patients: int, results: int = 10) -> bytes:
    records = [header()]
    for number in range(1, patients + 1):
        records += [patient(str(number), doctors="MEDT~DR TRAITANT~L"), order()]
        records += [result(str(n)) for n in range(1, results + 1)]
    return sante(*records, end(str(patients)), end_with="\r\n")


def medecins_file(reports: int, results: int = 10) -> bytes:
    lines = ["Compte rendu", "****LAB****"]
    lines += [f"RES|Analyse {n}|A{n}|N|{n}.0|g/l|1|9||F|" for n in range(results)]
    lines.append("****FIN****")
    return medecins(*(medecins_report(f"D{n}", body=lines) for n in range(reports)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    args = parser.parse_args()
    cases = [
        ("HL7 v2 ORU^R01, 15 segments (10 OBX)", fifteen_segment_oru()),
        ("HPRIM Santé, 1 patient, 10 OBX", sante_file(1)),
        ("HPRIM Santé, 20 patients x 10 OBX (split)", sante_file(20)),
        ("HPRIM Médecins, 1 report, 10 RES", medecins_file(1)),
        ("HPRIM Médecins, 20 reports x 10 RES", medecins_file(20)),
    ]
    for path in sorted(args.corpus.glob("*sante*.hpr")):
        cases.append((f"corpus {path.name}", path.read_bytes()))
    print(f"{'file':<52} {'bytes':>7} {'results':>7} {'median/result':>14} {'p95/result':>11}")
    for label, data in cases:
        results = list(read_any(data))
        assert all(r.ok for r in results), [str(r.error) for r in results]
        median, p95 = measure(lambda data=data: list(read_any(data)), args.rounds)
        count = len(results)
        print(
            f"{label:<52} {len(data):>7} {count:>7} {median / count:>11.3f} ms"
            f" {p95 / count:>8.3f} ms"
        )


if __name__ == "__main__":
    main()
