"""`labdispatch deliver FILE...` and `labdispatch dispatch`: the pipeline in one process.

`deliver` records each message of the files in the ledger (committed before anything is
said about it), routes it, then seals and sends what is due, and prints where each result
went. `dispatch` runs one pass over what is due (retries whose time has come). Both run
without workers or a broker: the same pipeline services the Celery tasks call.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pipeline.db import open_database
from pipeline.delivery.deliver import DispatchReport, dispatch_due
from pipeline.delivery.intake import Answer, accept_bytes
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery
from pipeline.ledger.states import FAILED, UNROUTABLE
from pipeline.settings import Settings
from workers.commands.hl7_files import EXIT_UNREADABLE, add_files_argument, read_file

EXIT_OK = 0
EXIT_PROBLEM = 1  # a message refused, or a delivery failed or unroutable


def register(commands: Any) -> None:
    deliver = commands.add_parser(
        "deliver",
        help="record HL7 files in the ledger, then seal and send their results now",
        description=__doc__,
    )
    add_files_argument(deliver)
    deliver.add_argument(
        "--no-send", action="store_true", help="record and route only; send later with dispatch"
    )
    deliver.set_defaults(handler=run_deliver)

    dispatch = commands.add_parser(
        "dispatch",
        help="seal and send every delivery that is due (first tries and retries)",
        description="One pass over the deliveries that are due now.",
    )
    dispatch.add_argument("--limit", type=int, default=500, help="at most this many deliveries")
    dispatch.set_defaults(handler=run_dispatch)


def run_deliver(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    sessions = open_database(settings)
    status = EXIT_OK
    delivery_ids: list[int] = []
    with DeliveryServices.from_settings(settings) as services:
        for path in args.files:
            data = read_file(path)
            if data is None:
                status = max(status, EXIT_UNREADABLE)
                continue
            with sessions.begin() as session:
                accepted = accept_bytes(
                    session, data, services, source="file", source_name=path.name
                )
                ids = session.scalars(
                    select(Delivery.id).where(
                        Delivery.message_id.in_(
                            [
                                a.recorded.message_id
                                for a in accepted
                                if a.recorded is not None and a.route is not None
                            ]
                            or [-1]
                        )
                    )
                ).all()
            delivery_ids.extend(ids)
            for item in accepted:
                print(_describe(path, item))
                if item.recorded is None:
                    status = max(status, EXIT_PROBLEM)
        if not args.no_send:
            dispatch_due(sessions, services)
    with sessions() as session:
        deliveries = session.scalars(
            select(Delivery).where(Delivery.id.in_(delivery_ids or [-1])).order_by(Delivery.id)
        ).all()
        for delivery in deliveries:
            print(_delivery_line(delivery))
            if delivery.state in (FAILED, UNROUTABLE):
                status = max(status, EXIT_PROBLEM)
    return status


def run_dispatch(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    sessions = open_database(settings)
    with DeliveryServices.from_settings(settings) as services:
        report = dispatch_due(sessions, services, limit=args.limit)
    print(_summary(report))
    return EXIT_PROBLEM if report.states.get(FAILED) else EXIT_OK


def _describe(path: Path, item: Answer) -> str:
    result = item.result
    where = f"{path} #{result.index}"
    if item.recorded is None:
        error = result.error
        assert error is not None
        return f"{where}: REJECTED {error.ack_code} ({type(error).__name__}): {error}"
    recorded = item.recorded
    head = f"{where}: {recorded.laboratory} {recorded.control_id}"
    if recorded.status == "duplicate":
        return f"{head}: already received with the same content; not delivered again"
    if recorded.status == "conflict":
        return (
            f"{head}: control ID already used with different content; kept as revision "
            f"{recorded.revision} and held for review"
        )
    route = item.route
    if route is None:  # recorded, then held before routing
        processing_id = result.facts.processing_id if result.facts else "?"
        return (
            f"{head}: recorded and held, not delivered: processing ID {processing_id} is not "
            "delivered here (LABDISPATCH_DELIVER_PROCESSING_IDS)"
        )
    return f"{head}: recorded, {route.routed} recipient(s)" + (
        f", {route.unroutable} not in the directory" if route.unroutable else ""
    )


def _delivery_line(delivery: Delivery) -> str:
    who = delivery.recipient_key or f"unknown ({delivery.wanted})"
    channel = (
        f" via {delivery.channel_kind}:{delivery.channel_address}" if delivery.channel_kind else ""
    )
    line = f"    {delivery.message.control_id} → {who}{channel}: {delivery.state}"
    if delivery.last_error:
        line += f" ({delivery.last_error})"
    return line


def _summary(report: DispatchReport) -> str:
    if not report.handled:
        return "nothing due"
    parts = ", ".join(f"{count} {state}" for state, count in sorted(report.states.items()))
    return f"{report.handled} deliveries handled: {parts}"
