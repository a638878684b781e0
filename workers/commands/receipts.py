"""`labdispatch receipts collect`: read MDNs and DSNs back and record them in the ledger.

Reads the return IMAP inbox when `LABDISPATCH_RECEIPTS_IMAP_HOST` is set, else the return
Maildir (`LABDISPATCH_RECEIPTS_MAILDIR`, default `var/receipts`), or the Maildir given.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.db import open_database
from pipeline.delivery.services import utc_now
from pipeline.receipts.record import collect_receipts
from pipeline.receipts.sources import report_source
from pipeline.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "receipts",
        help="read delivery and read receipts (DSN, MDN) back into the ledger",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    collect = actions.add_parser("collect", help="record every new report", description=__doc__)
    collect.add_argument("--maildir", type=Path, help="read this Maildir instead")
    collect.add_argument("--limit", type=int, default=500, help="at most this many reports")
    collect.set_defaults(handler=run_collect)


def run_collect(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    sessions = open_database(settings)
    with report_source(settings, args.maildir) as source:
        recorded = collect_receipts(
            sessions,
            source,
            now=utc_now(),
            notices_dir=settings.notices_path,
            limit=args.limit,
        )
    counts = Counter(
        "already recorded"
        if r.receipt_id is None
        else f"{r.kind} {r.disposition}".strip() + ("" if r.matched else " (unmatched)")
        for r in recorded
    )
    if not recorded:
        print("no new report")
    for what, count in sorted(counts.items()):
        print(f"{count} {what}")
    return 0
