"""How much work the broker holds: one reading for `labdispatch status`, the dashboard and
`/metrics`.

Looking never starts anything: with the embedded default, a broker that is not running is
reported as such (BrokerUnavailable), not started by whoever looked. Queue names are the
Celery app's, copied here rather than imported, since importing the app connects to the
broker.

A task a worker took stays in Redis's `unacked` hash until it is acknowledged (late
acknowledgement); a worker killed with kill -9 leaves its entries there until Celery
redelivers them after `visibility_timeout`. So that `status` reports only live work, the
workers are asked (one broadcast, only when something is unacknowledged) which of those
tasks they hold; the rest are reported apart, as held by a lost worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from pipeline.settings import Settings
from workers.broker import (
    PING_TIMEOUT,
    BrokerUnavailable,
    embedded_broker,
    embedded_running,
    is_embedded,
    redis_client,
)

#: The stage queues (`workers.celery_app.QUEUES`) and Celery's priority-step suffixes for
#: the Redis transport (a queue's tasks sit in one list per step; step 0 has no suffix).
STAGE_QUEUES = ("labdispatch.route", "labdispatch.seal", "labdispatch.send", "labdispatch.periodic")
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
#: `workers.celery_app.VISIBILITY_TIMEOUT`: a task unacknowledged this long is redelivered.
VISIBILITY_TIMEOUT = 3600
#: How long the workers are given to say which tasks they hold.
WORKERS_TIMEOUT = 1.0


@dataclass(frozen=True)
class QueueDepths:
    #: Tasks waiting per stage queue (each task carries up to a batch of IDs).
    depths: dict[str, int]
    #: Tasks taken by a worker and not yet acknowledged (in progress, or lost with it).
    unacked: int
    #: Of those, the ones a live worker says it holds (being worked on, or reserved by it);
    #: None when nothing was unacknowledged, or the workers could not be asked.
    held_by_live_workers: int | None = None

    @property
    def in_progress(self) -> int:
        """Tasks live workers hold (all the unacknowledged when they could not be asked)."""
        return self.unacked if self.held_by_live_workers is None else self.held_by_live_workers

    @property
    def lost(self) -> int:
        """Tasks held by a worker that is gone: Celery redelivers them after
        `visibility_timeout` (VISIBILITY_TIMEOUT)."""
        return self.unacked - self.in_progress


def queue_depths(
    settings: Settings,
    *,
    timeout: float = PING_TIMEOUT,
    ask_workers: bool = False,
    workers_timeout: float = WORKERS_TIMEOUT,
) -> QueueDepths:
    """Read the stage queues' depths; BrokerUnavailable (one readable line) if it cannot.
    With `ask_workers`, also which unacknowledged tasks live workers hold (up to
    `workers_timeout` more, only when some task is unacknowledged)."""
    if is_embedded(settings):
        if not embedded_running(settings):
            raise BrokerUnavailable(
                "the embedded broker is not running (the first process that needs it starts "
                "it, or: labdispatch broker start)"
            )
        url = embedded_broker(settings).url
    else:
        url = settings.service.broker_url
    client = redis_client(url, timeout=timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in STAGE_QUEUES:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(queue + suffix)
        pipe.hvals("unacked")
        *lengths, entries = pipe.execute()
    except redis.RedisError as error:
        raise BrokerUnavailable(f"the broker did not answer: {type(error).__name__}") from None
    finally:
        client.close()
    steps = len(PRIORITY_SUFFIXES)
    depths = {
        queue: sum(int(n) for n in lengths[i * steps : (i + 1) * steps])
        for i, queue in enumerate(STAGE_QUEUES)
    }
    held = None
    if entries and ask_workers:
        task_ids = {task_id for task_id in map(_task_id, entries) if task_id}
        live = live_workers_tasks(url, task_ids, timeout=workers_timeout)
        if live is not None:
            held = sum(1 for entry in entries if _task_id(entry) in live)
    return QueueDepths(depths=depths, unacked=len(entries), held_by_live_workers=held)


def live_workers_tasks(url: str, task_ids: set[str], *, timeout: float) -> set[str] | None:
    """Which of `task_ids` a live worker holds (running, reserved or scheduled), by asking
    every worker over Celery's control channel; None if they could not be asked."""
    if not task_ids:
        return set()
    from celery import Celery  # only when something is unacknowledged

    app = Celery("labdispatch-status", broker=url, set_as_current=False)
    try:
        replies = app.control.inspect(timeout=timeout).query_task(*sorted(task_ids)) or {}
    except Exception:  # a broker gone between the two readings: say nothing rather than guess
        return None
    finally:
        app.close()
    return {
        task_id
        for held in replies.values()
        if isinstance(held, dict)
        for task_id in held
        if task_id in task_ids
    }


def _task_id(entry: bytes | str) -> str:
    """The task ID of an `unacked` entry: kombu stores `[message, exchange, routing key]`
    in JSON, the message's headers carrying Celery's task `id`."""
    try:
        message = json.loads(entry)[0]
        task_id = message["headers"]["id"]
    except (ValueError, LookupError, TypeError):
        return ""
    return task_id if isinstance(task_id, str) else ""
