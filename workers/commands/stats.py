"""`labdispatch stats deliveries|adoption`: the billing and adoption figures, from the same
queries as the HTTP API (`pipeline.stats`)."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.db import open_database, utcnow
from pipeline.settings import Settings
from pipeline.stats.adoption import AdoptionStats, adoption_stats
from pipeline.stats.deliveries import GROUPINGS, DeliveryStats, delivery_stats
from pipeline.stats.period import parse_period
from pipeline.stats.render import as_csv, as_rows_json, as_table

FORMATS = ("table", "csv", "json")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "stats",
        help="delivery and adoption figures per laboratory and period",
        description="Figures per laboratory over a period: what was received and what became "
        "of it (billing), and how many equipped recipients open what they get (adoption).",
    )
    actions = parser.add_subparsers(dest="action", metavar="REPORT", required=True)

    deliveries = actions.add_parser(
        "deliveries",
        help="received, duplicates, rejected, unroutable, delivered, read, failed, retries, "
        "time to delivery",
        description="Per laboratory and group: everything counts in the period its message "
        "was received in.",
    )
    _common(deliveries)
    deliveries.add_argument("--group-by", choices=GROUPINGS, default="month", help="default: month")
    deliveries.set_defaults(handler=run_deliveries)

    adoption = actions.add_parser(
        "adoption",
        help="recipients equipped versus recipients active",
        description="Equipped recipients (a channel and a valid certificate) versus those who "
        "opened or acknowledged a result in the period, per laboratory and specialty.",
    )
    _common(adoption)
    adoption.set_defaults(handler=run_adoption)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", help="one laboratory (MSH-4); default: all")
    parser.add_argument(
        "--from",
        dest="first",
        metavar="DATE",
        help="first day, YYYY-MM-DD in UTC (default: the 1st of this month)",
    )
    parser.add_argument(
        "--to", dest="last", metavar="DATE", help="last day, included (default: today)"
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="default: table")


def run_deliveries(args: argparse.Namespace) -> int:
    period = parse_period(args.first, args.last, today=utcnow().date())
    settings = Settings.from_env()
    sessions = open_database(settings)
    timeout = settings.service.stats_timeout
    with sessions() as session:
        rows = delivery_stats(
            session, period, group_by=args.group_by, laboratory=args.lab, timeout=timeout
        )
    _print(rows, DeliveryStats, args.format)
    return 0


def run_adoption(args: argparse.Namespace) -> int:
    period = parse_period(args.first, args.last, today=utcnow().date())
    settings = Settings.from_env()
    sessions = open_database(settings)
    timeout = settings.service.stats_timeout
    with sessions() as session:
        rows = adoption_stats(session, period, laboratory=args.lab, timeout=timeout)
    _print(rows, AdoptionStats, args.format)
    return 0


def _print(rows: list[DeliveryStats] | list[AdoptionStats], row_type: type, form: str) -> None:
    if form == "json":
        print(json.dumps(as_rows_json(rows), indent=2, ensure_ascii=False))
    elif form == "csv":
        sys.stdout.write(as_csv(rows, row_type))
    else:
        print(as_table(rows, row_type))
