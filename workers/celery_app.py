"""The Celery application: one queue per stage, late acknowledgement, batched work.

`celery -A workers.celery_app worker` (or `labdispatch worker`, which wraps it) runs it.
Settings come from `LABDISPATCH_*` like everything else; with no LABDISPATCH_BROKER_URL the
embedded Redis server is started on first use (`workers.broker`).

Why these settings:
- `task_acks_late` + `task_reject_on_worker_lost`: a task is removed from the broker only
  once it ran; a worker killed mid-batch leaves it to be delivered again. That is safe
  because every step is idempotent (`pipeline.delivery.claims`), and attempts are counted
  in the ledger, never by the broker.
- `worker_prefetch_multiplier=1`: a task carries a batch already; prefetching more would
  park batches behind a slow one (and behind a dead relay's timeouts).
- Results are not kept: the ledger holds every outcome.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from pipeline.settings import Settings
from workers.broker import broker_url

ROUTE_QUEUE = "labdispatch.route"
SEAL_QUEUE = "labdispatch.seal"
SEND_QUEUE = "labdispatch.send"
PERIODIC_QUEUE = "labdispatch.periodic"
QUEUES = (ROUTE_QUEUE, SEAL_QUEUE, SEND_QUEUE, PERIODIC_QUEUE)
#: Celery's Redis transport keeps a queue's tasks in lists named after it, one per priority
#: step; these are the suffixes of the default steps (0 has none).
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
#: The benchmark's no-op tasks: a queue no production worker serves.
BENCH_QUEUE = "labdispatch.bench"

#: Celery on Redis redelivers a task not acknowledged within this (a worker died holding
#: it). Longer than any batch can run (a send batch gives up at half its lease).
VISIBILITY_TIMEOUT = 3600


def make_app(settings: Settings) -> Celery:
    app = Celery("labdispatch", broker=broker_url(settings), include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[
            Queue(name, Exchange(name), routing_key=name) for name in (*QUEUES, BENCH_QUEUE)
        ],
        task_default_queue=ROUTE_QUEUE,
        task_routes={
            # One pass per batch of results; its queue keeps the name of the route stage
            # it replaced (dashboards, alerts and deployments know it).
            "labdispatch.deliver": {"queue": ROUTE_QUEUE},
            "labdispatch.route": {"queue": ROUTE_QUEUE},
            "labdispatch.seal": {"queue": SEAL_QUEUE},
            "labdispatch.send": {"queue": SEND_QUEUE},
            "labdispatch.reconcile": {"queue": PERIODIC_QUEUE},
            "labdispatch.receipts": {"queue": PERIODIC_QUEUE},
            "labdispatch.noop": {"queue": BENCH_QUEUE},
        },
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        broker_connection_retry_on_startup=True,
        # Publishing must not hang an MLLP listener when Redis is away: the message is in
        # the ledger already, and reconcile will queue it.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        worker_hijack_root_logger=False,
        # Keep sys.stderr real: our root handler (workers.cli) writes to it, and Celery's
        # logging proxy would drop those lines as recursion, so a worker logged nothing.
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        beat_schedule={
            "reconcile": {
                "task": "labdispatch.reconcile",
                "schedule": settings.service.reconcile_interval,
            },
            "receipts": {
                "task": "labdispatch.receipts",
                "schedule": settings.service.reconcile_interval,
            },
        },
    )
    return app


settings = Settings.from_env()
app = make_app(settings)
