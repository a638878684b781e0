"""Directory cost, measured: importing a CSV of N recipients, re-importing it unchanged,
and resolving the recipients of a batch of results, on SQLite and on PostgreSQL.

    python benchmarks/directory_cost.py [--recipients 2000] [--postgres URL]

PostgreSQL runs in a throw-away database created on the server named by --postgres
(default: LABDISPATCH_TEST_POSTGRES_URL, else postgres@127.0.0.1); pass --postgres ""
to measure SQLite only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

from pipeline.db import open_database
from pipeline.identifiers import RPPS, Identifier
from pipeline.recipients.directory_csv import import_directory
from pipeline.recipients.resolve import resolve_many
from pipeline.settings import Settings
from workers.bench.scratch import postgres_database

HEADER = "key,kind,name,specialty,identifiers,local_codes,channels,certificate\n"


def write_csv(path: Path, count: int) -> None:
    rows = [
        f"dr-{n},clinician,DOCTOR {n},general practice,RPPS:{10_000_000_000 + n},"
        f"LAB-BENCH=D{n},mail:dr{n}@mssante.example;mailbox:dr{n},\n"
        for n in range(count)
    ]
    path.write_text(HEADER + "".join(rows), encoding="utf-8")


def measure(url: str, csv_path: Path, count: int) -> dict[str, float]:
    sessions = open_database(Settings(var_dir=csv_path.parent / "var", database_url=url))
    figures = {}
    for label in ("first import", "unchanged re-import"):
        start = time.perf_counter()
        with sessions() as session:
            report = import_directory(session, csv_path)
            session.commit()
        figures[label] = time.perf_counter() - start
        assert not report.errors, report.errors[:3]
    wanted: list[Identifier | None] = []
    for n in range(0, count, max(1, count // 1000)):
        wanted.append(Identifier(RPPS, str(10_000_000_000 + n)))
        wanted.append(Identifier("LOCAL", f"D{n}"))
    start = time.perf_counter()
    with sessions() as session:
        answers = resolve_many(session, "LAB-BENCH", wanted)
    figures[f"resolve {len(wanted)} identifiers"] = time.perf_counter() - start
    assert all(answer.resolved for answer in answers)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=2000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "LABDISPATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        csv_path = Path(folder) / "directory.csv"
        write_csv(csv_path, args.recipients)
        targets = [("SQLite", f"sqlite:///{Path(folder) / 'bench.db'}")]
        print(f"directory of {args.recipients} recipients (2 channels, 1 RPPS, 1 local code each)")
        with contextlib.ExitStack() as stack:
            if args.postgres:
                targets.append(
                    ("PostgreSQL", stack.enter_context(postgres_database(args.postgres)))
                )
            for label, url in targets:
                for what, seconds in measure(url, csv_path, args.recipients).items():
                    print(f"  {label:<11} {what:<28} {seconds:7.2f} s")


if __name__ == "__main__":
    main()
