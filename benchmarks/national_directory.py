"""National directory import, measured: an MSSanté correspondence file of N rows in the
published format (generated), imported into an empty directory, re-imported unchanged,
then re-imported with ~3 % of the rows changed (1 % each: a new address, the
Dématérialisation flag turned, a new name) and 0.5 % removed.

    python benchmarks/national_directory.py [--rows 1000000] [--postgres URL] [--sqlite]

PostgreSQL runs in a throw-away database created on the server named by --postgres
(default: LABDISPATCH_TEST_POSTGRES_URL, else postgres@127.0.0.1). Peak RSS is the
process's high-water mark after each step: flat across steps means the file is streamed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.db import open_database
from pipeline.recipients.national_store import NationalReport, import_national
from pipeline.settings import Settings
from workers.bench.national_files import person_row, synthetic_person, write_mssante
from workers.bench.scratch import postgres_database


def rows(count: int, generation: int) -> Iterator[str]:
    """Generation 1 changes 3 % of the rows (`synthetic_person`) and drops 0.5 %."""
    for n in range(count):
        if generation and n % 200 == 11:
            continue
        yield person_row(synthetic_person(n, generation=generation))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(url: str, files: list[Path], folder: Path) -> None:
    sessions = open_database(Settings(var_dir=folder / "var", database_url=url))
    for label, path in zip(
        ("first import", "unchanged re-import", "3 % changed"), files, strict=True
    ):
        start = time.perf_counter()
        with sessions() as session:
            report = import_national(session, [path], allow_removals=False)
            session.commit()
        seconds = time.perf_counter() - start
        print(f"  {label:<20} {seconds:7.1f} s  {report.rows / seconds:10,.0f} rows/s  "
              f"peak RSS {peak_rss_mb():6.0f} MB  {summary(report)}")  # fmt: skip


def summary(report: NationalReport) -> str:
    return (
        f"recipients +{report.recipients_created} ~{report.recipients_updated} "
        f"-{report.recipients_removed}; mailboxes +{report.mailboxes_added} "
        f"~{report.mailboxes_changed} -{len(report.withdrawn)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "LABDISPATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--sqlite", action="store_true", help="measure SQLite too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        start = time.perf_counter()
        first = write_mssante(
            folder / "Extraction_Correspondance_MSSante_1.txt", rows(args.rows, 0)
        )
        changed = write_mssante(
            folder / "Extraction_Correspondance_MSSante_2.txt", rows(args.rows, 1)
        )
        print(
            f"MSSanté file of {args.rows:,} rows ({first.stat().st_size / 1e6:.0f} MB), "
            f"generated in {time.perf_counter() - start:.0f} s; {os.cpu_count()} cores"
        )
        files = [first, first, changed]
        with contextlib.ExitStack() as stack:
            targets = []
            if args.postgres:
                targets.append(
                    ("PostgreSQL", stack.enter_context(postgres_database(args.postgres)))
                )
            if args.sqlite:
                targets.append(("SQLite", f"sqlite:///{folder / 'bench.db'}"))
            for label, url in targets:
                print(label)
                measure(url, files, folder)


if __name__ == "__main__":
    main()
