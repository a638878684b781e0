"""The Celery tasks: each calls one pipeline stage and queues what comes next.

No business logic here (ARCHITECTURE "Layers"): the stages in `pipeline.delivery` decide;
tasks carry lists of IDs in batches of `LABDISPATCH_BATCH_SIZE`, so the broker's per-task
cost is paid once per batch. In the normal path a result crosses the broker once: intake's
after-commit hook queues `deliver` (route, seal, send, record in one pass,
`pipeline.delivery.deliver`). `seal` and `send` are the recovery and retry path: what
reconcile finds unsealed or due, and what an operator replays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from celery.signals import worker_process_shutdown

from pipeline.delivery.deliver import deliver_stage, send_stage
from pipeline.delivery.reconcile import resume_unroutable, stalled_work
from pipeline.delivery.seal import seal_stage
from pipeline.receipts.record import collect_receipts
from pipeline.receipts.sources import report_source
from workers.celery_app import (
    PRIORITY_SUFFIXES,
    ROUTE_QUEUE,
    SEAL_QUEUE,
    SEND_QUEUE,
    app,
    settings,
)
from workers.runtime import close_runtime, runtime

logger = logging.getLogger(__name__)

BATCH_SIZE = settings.service.batch_size


@app.task(name="labdispatch.deliver")
def deliver(message_ids: list[int]) -> dict[str, int]:
    rt = runtime()
    return dict(deliver_stage(rt.sessions, message_ids, rt.services).states)


@app.task(name="labdispatch.route")
def route(message_ids: list[int]) -> dict[str, int]:
    """Tasks queued before the one-pass path (an upgrade with work in the queue)."""
    rt = runtime()
    return dict(deliver_stage(rt.sessions, message_ids, rt.services).states)


@app.task(name="labdispatch.seal")
def seal(delivery_ids: list[int]) -> int:
    rt = runtime()
    report = seal_stage(rt.sessions, delivery_ids, rt.services)
    enqueue(send, report.next_ids)
    return len(report.next_ids)


@app.task(name="labdispatch.send")
def send(delivery_ids: list[int]) -> dict[str, int]:
    rt = runtime()
    return dict(send_stage(rt.sessions, delivery_ids, rt.services).states)


@app.task(name="labdispatch.reconcile")
def reconcile() -> dict[str, int]:
    """Queue again what the broker lost, retries that came due, and resumed unroutables."""
    rt = runtime()
    work = stalled_work(
        rt.sessions,
        rt.services.clock(),
        requeue_after=timedelta(seconds=rt.settings.service.requeue_after),
        backlogged=backlogged_stages(),
    )
    resumed = resume_unroutable(rt.sessions, rt.services)
    enqueue(deliver, work.route)
    enqueue(seal, work.seal + resumed)
    enqueue(send, work.send)
    counts = {
        "route": len(work.route),
        "seal": len(work.seal),
        "send": len(work.send),
        "resumed": len(resumed),
    }
    if work.total or resumed:
        logger.info("reconcile queued %s", counts)
    return counts


@app.task(name="labdispatch.receipts")
def receipts() -> int:
    """Read delivery and read reports (DSN, MDN) back into the ledger."""
    rt = runtime()
    settings = rt.settings
    if not settings.receipts.imap_host and not settings.receipts_maildir_path.is_dir():
        return 0  # nowhere reports come back to yet
    with report_source(settings) as source:
        recorded = collect_receipts(
            rt.sessions, source, now=rt.services.clock(), notices_dir=rt.services.notices_dir
        )
        return len(recorded)


@app.task(name="labdispatch.noop")
def noop(item: int) -> None:
    """Does nothing: the benchmark measures the broker's own cost per task with it."""


def backlogged_stages() -> frozenset[str]:
    """The stages whose queue holds tasks right now (see `stalled_work`)."""
    with app.connection_for_read() as connection:
        client = connection.default_channel.client
        return frozenset(
            stage
            for stage, queue in (("route", ROUTE_QUEUE), ("seal", SEAL_QUEUE), ("send", SEND_QUEUE))
            if any(client.llen(queue + suffix) for suffix in PRIORITY_SUFFIXES)
        )


def enqueue(task: object, ids: Sequence[int]) -> None:
    """Queue `ids` for a stage task in batches."""
    size = BATCH_SIZE
    for start in range(0, len(ids), size):
        task.apply_async(args=[list(ids[start : start + size])])  # type: ignore[attr-defined]


def enqueue_route(message_ids: Sequence[int]) -> None:
    """The intake's after-commit hook: deliver what was just recorded (one pass)."""
    enqueue(deliver, message_ids)


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    close_runtime()
