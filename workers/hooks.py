"""What intake processes call once a commit is done: hand the new messages to the workers.

Loading the Celery app connects to the broker (and starts the embedded one), which only
intake processes need, not every command: hence the import inside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

AfterCommit = Callable[[Sequence[int]], None]


def route_after_commit() -> AfterCommit:
    """Queue the route stage for messages just committed. If the broker is away, the
    messages wait in the ledger and reconcile queues them."""
    from workers.tasks import enqueue_route

    return enqueue_route
