"""`labdispatch watch DIR`: folder intake for laboratories that export files.

Files dropped in DIR are recorded in the ledger once they have settled, then moved to
DIR/done/ (every message recorded) or DIR/rejected/ (with `<name>.reason.txt`); each
message's ACK is written to DIR/acks/<name>.ack. See docs/folder-intake.md.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import Any

from pipeline.db import open_database
from pipeline.delivery.services import DeliveryServices
from pipeline.settings import Settings
from workers.broker import one_shot_broker
from workers.hooks import AfterCommit, route_after_commit
from workers.watch import (
    DEFAULT_INTERVAL,
    DEFAULT_SETTLE,
    MARKER_SUFFIX,
    OUTCOME_REJECTED,
    OUTCOME_RETRY,
    READY_MARKER,
    READY_MODES,
    READY_SETTLE,
    FileReport,
    FolderWatcher,
    stop_on_signals,
)

EXIT_OK = 0
EXIT_REJECTED = 1  # --once: at least one file went to rejected/
EXIT_TEMPFAIL = 75  # --once: the ledger was unavailable; files left for the next run


def register(commands: Any) -> None:
    watch = commands.add_parser(
        "watch",
        help="record the HL7 files a laboratory drops in a folder (done/, rejected/, acks/)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("folder", type=Path, metavar="DIR", help="the drop folder")
    watch.add_argument(
        "--ready",
        choices=READY_MODES,
        default=READY_SETTLE,
        help=f"when a file is complete: '{READY_MARKER}' once its exporter has written "
        f"NAME{MARKER_SUFFIX} after NAME (safe with any writer that can); '{READY_SETTLE}' "
        "once nobody has written it for --settle seconds (default: %(default)s)",
    )
    watch.add_argument(
        "--settle",
        type=_seconds,
        default=DEFAULT_SETTLE,
        metavar="SECONDS",
        help="take a file only once nobody has written it for this long (default: %(default)s)",
    )
    watch.add_argument(
        "--interval",
        type=_interval,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="look at the folder this often (default: %(default)s)",
    )
    watch.add_argument(
        "--once",
        action="store_true",
        help="process the settled files there now, print one line each, and exit "
        "(0: all recorded, 1: something rejected, 75: ledger unavailable, try again)",
    )
    watch.set_defaults(handler=run_watch)


def run_watch(args: argparse.Namespace, after_commit: AfterCommit | None = None) -> int:
    """`after_commit` receives the ledger IDs of newly recorded messages once committed:
    by default the function that queues their route stage."""
    settings = Settings.from_env()
    if args.once:
        # A one-shot job: an embedded broker it had to start is stopped when it is done,
        # unless another process uses it by then.
        with one_shot_broker(settings):
            return _run(args, settings, after_commit)
    return _run(args, settings, after_commit)


def _run(args: argparse.Namespace, settings: Settings, after_commit: AfterCommit | None) -> int:
    if after_commit is None:
        after_commit = route_after_commit()
    sessions = open_database(settings)
    ready = getattr(args, "ready", READY_SETTLE)
    with DeliveryServices.from_settings(settings) as services:
        watcher = FolderWatcher(
            args.folder,
            sessions,
            services,
            settle=args.settle,
            after_commit=after_commit,
            max_bytes=settings.max_message_bytes,
            ready=ready,
        )
        if args.once:
            reports = watcher.poll()
            for report in reports:
                print(report.line(), flush=True)
            return once_status(reports)
        log = logging.getLogger("workers.watch")
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)  # a service logs one line per file it handled
        if ready == READY_MARKER:
            log.info(
                "watching %s (files with a %s marker, every %g s)",
                args.folder,
                MARKER_SUFFIX,
                args.interval,
            )
        else:
            log.info(
                "watching %s (settle %g s, every %g s)", args.folder, args.settle, args.interval
            )
        stop = threading.Event()
        with stop_on_signals(stop):
            watcher.run(interval=args.interval, stop=stop)
        log.info("stopped")
    return EXIT_OK


def once_status(reports: list[FileReport]) -> int:
    if any(report.outcome == OUTCOME_RETRY for report in reports):
        return EXIT_TEMPFAIL
    if any(report.outcome == OUTCOME_REJECTED for report in reports):
        return EXIT_REJECTED
    return EXIT_OK


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds cannot be negative")
    return value


def _interval(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("the interval must be more than 0 seconds")
    return value
