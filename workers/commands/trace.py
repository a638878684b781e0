"""`labdispatch trace CONTROL_ID [--lab LAB] [--json]`: one result's whole timeline."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.db import open_database
from pipeline.delivery.trace import render_trace, trace_result
from pipeline.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "trace",
        help="show every step of one result, per recipient",
        description="Every step of one result (received, parsed, routed, sealed, sent, "
        "accepted, delivered, read, retried, failed), per recipient, with each attempt's "
        "evidence.",
    )
    parser.add_argument("control_id", metavar="CONTROL_ID", help="the message's MSH-10")
    parser.add_argument("--lab", help="the sending laboratory (MSH-4), when IDs collide")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    sessions = open_database(Settings.from_env())
    with sessions() as session:
        traces = trace_result(session, args.control_id, laboratory=args.lab)
    if args.json:
        print(json.dumps([t.as_json() for t in traces], indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(render_trace(t) for t in traces))
    return 0
