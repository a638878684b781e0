"""`labdispatch worker` (Celery workers for every stage) and `labdispatch status`.

`worker` is a thin wrapper over `celery worker`: it names the app and the stage queues,
runs the periodic jobs (reconcile, retry sweep, receipts) in the same process unless told
`--no-beat`, and passes anything after `--` to Celery as is (`labdispatch worker --
--concurrency 4 --loglevel INFO`). Run one worker with beat and as many `--no-beat` ones
as the machines allow.
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from typing import Any

from pipeline.db import open_database
from pipeline.delivery.services import utc_now
from pipeline.settings import Settings
from pipeline.stats.status import LedgerStatus, ledger_status
from workers.broker import BrokerUnavailable, embedded_broker, is_embedded, redact
from workers.queues import VISIBILITY_TIMEOUT, QueueDepths, queue_depths


def register(commands: Any) -> None:
    worker = commands.add_parser(
        "worker",
        help="run Celery workers for the route, seal and send stages (and the periodic jobs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument(
        "--queues", help="comma-separated stage queues to serve (default: all of them)"
    )
    worker.add_argument(
        "--no-beat", action="store_true", help="do not run the periodic jobs in this worker"
    )
    worker.add_argument(
        "celery_args", nargs=argparse.REMAINDER, help="after --: options for celery worker"
    )
    worker.set_defaults(handler=run_worker)

    beat = commands.add_parser(
        "beat",
        help="run only the periodic jobs (when every worker runs with --no-beat)",
        description="Celery beat: queues reconcile (with the retry sweep) and receipts "
        "every LABDISPATCH_RECONCILE_INTERVAL seconds. Run exactly one.",
    )
    beat.add_argument(
        "celery_args", nargs=argparse.REMAINDER, help="after --: options for celery beat"
    )
    beat.set_defaults(handler=run_beat)

    status = commands.add_parser(
        "status",
        help="queue depths, what waits and since when, deliveries by state, recent failures",
        description="What an operator asks first, from the broker and the ledger.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=run_status)


def run_worker(args: argparse.Namespace) -> int:
    from workers.celery_app import QUEUES, app

    settings = Settings.from_env()
    open_database(settings)  # migrate once here, before the children start
    argv = ["worker", "--queues", args.queues or ",".join(QUEUES)]
    if not args.no_beat:
        settings.ensure_var_dir()
        argv += ["--beat", "--schedule", str(settings.var_dir / "beat-schedule")]
    extra = [a for a in args.celery_args if a != "--"]
    if not any(a.startswith(("--loglevel", "-l")) for a in extra):
        argv += ["--loglevel", "INFO"]
    app.worker_main(argv + extra)
    return 0


def run_beat(args: argparse.Namespace) -> int:
    from workers.celery_app import app

    settings = Settings.from_env()
    settings.ensure_var_dir()
    argv = ["beat", "--schedule", str(settings.var_dir / "beat-schedule")]
    extra = [a for a in args.celery_args if a != "--"]
    if not any(a.startswith(("--loglevel", "-l")) for a in extra):
        argv += ["--loglevel", "INFO"]
    app.start(argv + extra)
    return 0


def run_status(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    sessions = open_database(settings)
    now = utc_now()
    with sessions() as session:
        ledger = ledger_status(session, now)
    try:
        reading = queue_depths(settings, ask_workers=True)
        queues, held = reading.depths, reading
        url = settings.service.broker_url or embedded_broker(settings).url
        broker = {"url": redact(url), "embedded": is_embedded(settings), "answering": True}
    except BrokerUnavailable as error:
        queues, held = {}, None
        broker = {"url": "", "embedded": is_embedded(settings), "answering": False}
        broker["error"] = str(error)
    if args.json:
        print(json.dumps(_as_json(broker, queues, held, ledger), indent=2))
    else:
        print(_as_text(broker, queues, held, ledger))
    return 0 if broker["answering"] else 1


def _as_json(
    broker: dict[str, Any], queues: dict[str, int], held: QueueDepths | None, ledger: LedgerStatus
) -> dict[str, Any]:
    return {
        "broker": broker,
        "queues": queues,
        # All unacknowledged; of those, what live workers hold, and what a worker that is
        # gone left behind (redelivered after the visibility timeout).
        "unacknowledged_tasks": held.unacked if held else None,
        "tasks_in_progress": held.in_progress if held else None,
        "tasks_held_by_lost_workers": held.lost if held else None,
        "messages": ledger.messages,
        "deliveries": ledger.deliveries,
        "oldest_open_delivery_seconds": _seconds(ledger.oldest_open_age),
        "oldest_unrouted_message_seconds": _seconds(ledger.oldest_unrouted_age),
        "next_retry_at": ledger.next_retry_at.isoformat() if ledger.next_retry_at else None,
        "last_hour": {
            "received": ledger.received_last_hour,
            "rejected": ledger.rejected_last_hour,
            "failed": ledger.failed_last_hour,
        },
    }


def _as_text(
    broker: dict[str, Any], queues: dict[str, int], held: QueueDepths | None, ledger: LedgerStatus
) -> str:
    kind = "embedded" if broker["embedded"] else "external"
    if broker["answering"]:
        lines = [f"broker      {broker['url']} ({kind}): answering"]
        depth = ", ".join(f"{q.removeprefix('labdispatch.')} {n}" for q, n in queues.items())
        assert held is not None
        line = f"queues      {depth}; {held.in_progress} task(s) being worked on"
        if held.lost:
            line += (
                f", {held.lost} held by a lost worker (redelivered after visibility_timeout, "
                f"{VISIBILITY_TIMEOUT} s)"
            )
        lines.append(line)
    else:
        lines = [f"broker      NOT ANSWERING ({kind}): {broker.get('error', '')}"]
    lines.append("messages    " + _counts(ledger.messages))
    lines.append("deliveries  " + _counts(ledger.deliveries))
    lines.append(
        "waiting     oldest open delivery "
        + _age(ledger.oldest_open_age)
        + ", oldest unrouted message "
        + _age(ledger.oldest_unrouted_age)
        + (
            f", next retry {ledger.next_retry_at.isoformat(timespec='seconds')}"
            if ledger.next_retry_at
            else ""
        )
    )
    lines.append(
        f"last hour   {ledger.received_last_hour} received, {ledger.rejected_last_hour} "
        f"rejected at intake, {ledger.failed_last_hour} deliveries failed"
    )
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {count}" for state, count in counts.items())


def _age(age: timedelta | None) -> str:
    if age is None:
        return "none"
    seconds = int(age.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _seconds(age: timedelta | None) -> float | None:
    return round(age.total_seconds(), 1) if age is not None else None
