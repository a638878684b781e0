"""`labdispatch directory import FILE.csv`, `directory show ID` and `directory laboratory CODE`.

Thin on purpose: parse arguments, open the database, call `pipeline.recipients`, print.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.db import begin_write, open_database, utcnow
from pipeline.delivery.services import StorageKeyIndex
from pipeline.delivery.withdrawn import fail_withdrawn
from pipeline.recipients.directory_csv import import_directory
from pipeline.recipients.laboratories import describe_laboratory, set_laboratory
from pipeline.recipients.national_store import MAX_WITHDRAWN_SHARE, import_national
from pipeline.recipients.views import describe_recipient, render_recipient
from pipeline.settings import Settings
from workers.bench.progress import Progress

EXIT_OK = 0
EXIT_ROWS_REJECTED = 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "directory",
        help="load and look up recipients",
        description="The recipient directory: who results go to, and how to reach them.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    load = actions.add_parser(
        "import",
        help="create or update recipients from a CSV file",
        description="Create or update recipients from a CSV file (see docs/directory-csv.md). "
        "Good rows are kept even when others are rejected; exit status 1 if any was.",
    )
    load.add_argument("file", type=Path, metavar="FILE.csv")
    load.set_defaults(handler=run_import)

    national = actions.add_parser(
        "import-national",
        help="refresh the national part of the directory from the Annuaire Santé extractions",
        description="Bring the national directory in step with the Annuaire Santé public "
        "extractions (see docs/directory-national.md): the MSSanté correspondence file "
        "(required) and PS_LibreAcces_Personne_activite (optional: names, specialties), as "
        ".txt or as the published .zip. New, changed and removed rows are applied in one "
        "transaction; a bad file changes nothing (exit status 1). The laboratory's own "
        "entries are never changed.",
    )
    national.add_argument("files", type=Path, nargs="+", metavar="FILE")
    national.add_argument(
        "--allow-removals",
        action="store_true",
        help=f"accept a file that withdraws more than {MAX_WITHDRAWN_SHARE:.0%} of the "
        "national mailboxes (refused otherwise: a truncated download?)",
    )
    national.set_defaults(handler=run_import_national)

    show = actions.add_parser(
        "show",
        help="show one recipient",
        description="Show one recipient, named by its directory key, an identifier "
        "(TYPE:VALUE, e.g. RPPS:10001234567) or a laboratory's code (LAB=CODE); "
        "lab:CODE shows the laboratory itself and its intake settings.",
    )
    show.add_argument("ref", metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(handler=run_show)

    lab = actions.add_parser(
        "laboratory",
        help="set a laboratory's intake settings (character set)",
        description="Create a laboratory if need be and set its intake settings: --charset "
        "is the character set its messages are read in when they declare none (HL7 with "
        "MSH-18 empty; every HPRIM file), e.g. ISO-8859-1 or windows-1252.",
    )
    lab.add_argument("code", metavar="CODE", help="MSH-4 / HPRIM H-5 / HPRIM Médecins line 11")
    lab.add_argument("--charset", help="character set, e.g. ISO-8859-1, windows-1252, UTF-8")
    lab.add_argument("--clear-charset", action="store_true", help="forget the character set")
    lab.add_argument("--json", action="store_true", help="print JSON instead of text")
    lab.set_defaults(handler=run_laboratory)


def run_import(args: argparse.Namespace) -> int:
    path: Path = args.file
    settings = Settings.from_env()
    sessions = open_database(settings)
    with sessions.begin() as session:
        report = import_directory(session, path, index=StorageKeyIndex(settings))
    print(
        f"imported {report.imported} rows: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged; {report.rejected} rejected"
    )
    for error in report.errors:
        where = f"column {error.column}: " if error.column else ""
        print(f"{path}:{error.line}: {where}{error.message}", file=sys.stderr)
    return EXIT_ROWS_REJECTED if report.errors else EXIT_OK


def run_import_national(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    sessions = open_database(settings)
    progress = Progress()
    started = time.monotonic()

    def show(done: int, total: int, rows: int) -> None:
        elapsed = time.monotonic() - started
        rate = rows / elapsed if elapsed > 0 else 0.0
        left = (total - done) * elapsed / done if done else 0.0
        if done >= total:  # the rest is the database's: one set-based merge
            progress.show(f"read {rows:,} rows; applying them to the directory…")
            return
        progress.show(
            f"read {done / 1e6:.1f}/{total / 1e6:.1f} MB · {rows:,} rows · "
            f"{rate:,.0f} rows/s · ~{left:.0f} s left"
        )

    try:
        with sessions() as session:
            begin_write(session)
            report = import_national(
                session, args.files, progress=show, allow_removals=args.allow_removals
            )
            queued = fail_withdrawn(session, report.withdrawn, utcnow(), settings.notices_path)
            session.commit()
    finally:
        progress.end()
    elapsed = time.monotonic() - started
    print(
        f"national directory: {report.rows:,} mailbox rows in {elapsed:.1f} s; recipients "
        f"{report.recipients_created:,} created, {report.recipients_updated:,} updated, "
        f"{report.recipients_removed:,} removed; mailboxes {report.mailboxes_added:,} added, "
        f"{report.mailboxes_changed:,} changed, {len(report.withdrawn):,} withdrawn"
        + ("" if report.changed else " (no change)")
    )
    if report.kept_local:
        print(f"  {report.kept_local:,} recipient(s) kept as the laboratory entered them")
    if queued.failed or queued.in_flight:
        print(
            f"  deliveries queued for withdrawn mailboxes: {queued.failed} failed (laboratory "
            f"told), {queued.in_flight} in flight"
        )
    if report.skipped.count:
        print(f"  {report.skipped.count:,} row(s) skipped (no one to route to), e.g.:")
        for example in report.skipped.examples:
            print(f"    {example}")
    return EXIT_OK


def run_laboratory(args: argparse.Namespace) -> int:
    sessions = open_database(Settings.from_env())
    with sessions.begin() as session:
        view = set_laboratory(
            session, args.code, charset=args.charset, clear_charset=args.clear_charset
        )
    print(json.dumps(view.as_json(), ensure_ascii=False) if args.json else view.render())
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    sessions = open_database(settings)
    if args.ref.startswith("lab:"):
        with sessions() as session:
            lab = describe_laboratory(session, args.ref.removeprefix("lab:"))
        print(
            json.dumps(lab.as_json(), indent=2, ensure_ascii=False) if args.json else lab.render()
        )
        return EXIT_OK
    with sessions() as session:
        view = describe_recipient(session, args.ref, blind_index=StorageKeyIndex(settings))
    if args.json:
        print(json.dumps(view.as_json(), indent=2, ensure_ascii=False))
    else:
        print(render_recipient(view))
    return EXIT_OK
