"""How much work the broker holds: one reading for `labdispatch status`, the dashboard and
`/metrics`.

Looking never starts anything: with the embedded default, a broker that is not running is
reported as such (BrokerUnavailable), not started by whoever looked. Queue names are the
Celery app's, copied here rather than imported, since importing the app connects to the
broker.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class QueueDepths:
    #: Tasks waiting per stage queue (each task carries up to a batch of IDs).
    depths: dict[str, int]
    #: Tasks taken by a worker and not yet acknowledged (in progress, or lost with it).
    unacked: int


def queue_depths(settings: Settings, *, timeout: float = PING_TIMEOUT) -> QueueDepths:
    """Read the stage queues' depths; BrokerUnavailable (one readable line) if it cannot."""
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
        pipe.hlen("unacked")
        *lengths, unacked = pipe.execute()
    except redis.RedisError as error:
        raise BrokerUnavailable(f"the broker did not answer: {type(error).__name__}") from None
    finally:
        client.close()
    steps = len(PRIORITY_SUFFIXES)
    depths = {
        queue: sum(int(n) for n in lengths[i * steps : (i + 1) * steps])
        for i, queue in enumerate(STAGE_QUEUES)
    }
    return QueueDepths(depths=depths, unacked=int(unacked))
