"""`labdispatch pki init DIR`: test certificates for demos and tests, never for production.

Writes a test CA, a laboratory signing certificate and key, and one certificate and key per
recipient (`ca.crt`, `lab.crt`, `lab.key`, `<recipient>.crt`, `<recipient>.key`), plus
`directory.csv`, which attaches those certificates to the recipients when imported with
`labdispatch directory import DIR/directory.csv`. Recipients come from `--directory CSV`,
else from the directory already in the ledger. Running it again keeps the CA and adds what
is missing.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from pipeline.db import open_database
from pipeline.errors import LabdispatchError
from pipeline.ledger.storage import is_sealed
from pipeline.recipients.models import Recipient
from pipeline.sealing.demo_pki import create_demo_pki
from pipeline.settings import Settings

#: (key, kind, name, mail address or None) per recipient.
Row = tuple[str, str, str, str | None]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "pki", help="test certificates for demos", description="Test PKI for demos and tests."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init", help="write a test CA, lab and recipient certificates", description=__doc__
    )
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument(
        "--directory",
        dest="csv",
        type=Path,
        metavar="CSV",
        help="issue certificates for the recipients of this directory CSV file",
    )
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    rows = _rows_from_csv(args.csv) if args.csv else _rows_from_ledger()
    if not rows:
        raise LabdispatchError(
            "no recipient to issue certificates for: import a directory first "
            "(labdispatch directory import FILE.csv) or name one with --directory FILE.csv"
        )
    folder: Path = args.directory
    pki = create_demo_pki(folder, {key: mail for key, _, _, mail in rows})
    listing = folder / "directory.csv"
    with listing.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["key", "kind", "name", "certificate"])
        for key, kind, name, _ in rows:
            writer.writerow([key, kind, name, f"{key}.crt"])
    print(f"test PKI in {folder} (TEST MATERIAL, NOT FOR PRODUCTION):")
    print(f"  CA {pki.ca_certificate}, laboratory signer {pki.lab_certificate}")
    print(f"  {len(rows)} recipient certificate(s), {len(pki.created)} file(s) written")
    print(f"attach them with: labdispatch directory import {listing}")
    print(
        f"sign with them:   LABDISPATCH_SIGNING_CERT={pki.lab_certificate} "
        f"LABDISPATCH_SIGNING_KEY={pki.lab_key}"
    )
    return 0


def _rows_from_csv(path: Path) -> list[Row]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LabdispatchError(f"cannot read {path}: {error}") from error
    found: list[Row] = []
    for row in rows:
        key = (row.get("key") or "").strip()
        if not key:
            continue
        channels = [c.strip() for c in (row.get("channels") or "").split(";")]
        mail = next((c[5:] for c in channels if c.startswith("mail:")), None)
        found.append((key, (row.get("kind") or "").strip(), (row.get("name") or "").strip(), mail))
    return found


def _rows_from_ledger() -> list[Row]:
    sessions = open_database(Settings.from_env())
    with sessions() as session:
        recipients = session.scalars(
            select(Recipient).options(selectinload(Recipient.channels)).order_by(Recipient.key)
        ).all()
        return [
            (
                r.key,
                r.kind,
                r.name,
                # A patient's sealed address is not one a certificate can name.
                next(
                    (
                        c.address
                        for c in r.channels
                        if c.kind == "mail" and not is_sealed(c.address)
                    ),
                    None,
                ),
            )
            for r in recipients
        ]
