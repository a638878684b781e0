"""The intake commit, as every intake process runs it: MLLP, the HTTP API, the drop folder.

`IntakeCommit.commit` is the one sequence: record and commit (`pipeline.delivery.intake.
store_batch`, which also decides what a ledger outage is), then answer (ACKs on the wire, the
HTTP answer, the file's ACK and its move), then the after-commit hook that queues the route
stage. An ACK therefore always means "committed" (ARCHITECTURE rule 1), and the hook's
failures cost the laboratory nothing: reconcile queues what it could not.

`GroupCommitter` is the thread that batches for the listeners: it takes every item waiting
(up to `max_batch`, lingering a couple of milliseconds for more once it has one) from any
number of connections or requests, and commits them together, so a morning peak costs one
commit per batch rather than one per message. The drop folder, one file at a time, calls
`IntakeCommit.commit` itself. Nothing here logs message content: counts, peers, error types.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import first_line
from pipeline.delivery.intake import (
    Answer,
    Inbound,
    IntakeFailure,
    Stored,
    ledger_unreachable,
    store_batch,
)
from pipeline.delivery.services import DeliveryServices
from workers.hooks import AfterCommit
from workers.mllp.limits import RateLimitedLog

#: How long the committer waits for more items once it holds one: a little latency for
#: far fewer commits when many connections are busy.
DEFAULT_LINGER_SECONDS = 0.002

log = logging.getLogger(__name__)

#: Told when the after-commit hook failed: how many messages it was given, and the error.
HookFailure = Callable[[int, Exception], None]


class IntakeCommit:
    """Commit, then answer, then the after-commit hook."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        services: DeliveryServices,
        *,
        after_commit: AfterCommit | None = None,
    ) -> None:
        self.sessions = sessions
        self.services = services
        self.after_commit = after_commit
        #: An outage repeats its line once per 10 s (one committer thread writes it).
        self._events = RateLimitedLog(log)

    def commit(
        self,
        inbound: Sequence[Inbound],
        answer: Callable[[list[Stored]], None],
        *,
        failed: IntakeFailure | None = None,
        hook_failed: HookFailure | None = None,
    ) -> list[Stored]:
        """Store `inbound` (one transaction, or item by item after a failure), call
        `answer` with the outcome, then queue the route stage for what was committed (even
        if answering failed: the messages are in the ledger). `failed` and `hook_failed`
        replace the default log lines."""
        stored = store_batch(self.sessions, inbound, self.services, failed=failed or self._failed)
        try:
            answer(stored)
        finally:
            self._route(stored, hook_failed or self._hook_failed)
        return stored

    def _route(self, stored: Sequence[Stored], hook_failed: HookFailure) -> None:
        route = [message_id for item in stored for message_id in item.to_route]
        if not route or self.after_commit is None:
            return
        try:
            self.after_commit(route)
        except Exception as error:
            hook_failed(len(route), error)

    def _failed(self, items: Sequence[Inbound], error: BaseException) -> None:
        if ledger_unreachable(error):
            self._events.log(
                logging.ERROR,
                "unavailable",
                "ledger unavailable: %d item(s) answered with an error, not stored (%s)",
                len(items),
                first_line(getattr(error, "orig", None) or error),
            )
            return
        self._events.log(
            logging.ERROR,
            "intake-failed",
            "intake failed for an item from %s (%s): answered with an error, not stored%s",
            items[0].source_name if items else "?",
            type(error).__name__,
            debug_trace(error),
        )

    def _hook_failed(self, count: int, error: Exception) -> None:
        self._events.log(
            logging.ERROR,
            "after-commit",
            "after-commit hook failed for %d message(s) (%s); reconcile will route them%s",
            count,
            type(error).__name__,
            debug_trace(error),
        )


@dataclass
class _Pending:
    inbound: Inbound
    future: asyncio.Future[list[Answer]]


_STOP = object()


class GroupCommitter:
    """The one thread that writes a listener's intake to the ledger, a batch per commit.

    `submit` is called on the event loop; the answers come back on the same loop, and
    only after the batch's commit returned. The after-commit hook runs on this thread,
    after the answers are on their way; its exceptions are logged and swallowed
    (reconcile finds messages the route stage never took up)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        services: DeliveryServices,
        loop: asyncio.AbstractEventLoop,
        *,
        after_commit: AfterCommit | None = None,
        max_batch: int = 100,
        linger: float = DEFAULT_LINGER_SECONDS,
        name: str = "intake-committer",
    ) -> None:
        self._intake = IntakeCommit(sessions, services, after_commit=after_commit)
        self._loop = loop
        self._max_batch = max(1, max_batch)
        self._linger = linger
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.batches = 0  # commits attempted, for tests and curiosity

    def start(self) -> None:
        self._thread.start()

    def submit(self, inbound: Inbound) -> asyncio.Future[list[Answer]]:
        future: asyncio.Future[list[Answer]] = self._loop.create_future()
        self._queue.put(_Pending(inbound, future))
        return future

    def stop(self) -> None:
        """Finish what was submitted, then end the thread (blocks until it has)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Pending)
            batch = [first]
            deadline = time.monotonic() + self._linger
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Pending)
                batch.append(item)
            try:
                self._commit(batch)
            except Exception as error:  # a bug: never leave a connection waiting forever
                log.error(
                    "intake committer failed (%s)%s", type(error).__name__, debug_trace(error)
                )
                self._loop.call_soon_threadsafe(_fail, batch, error)

    def _commit(self, batch: list[_Pending]) -> None:
        self.batches += 1

        def answer(stored: list[Stored]) -> None:
            self._loop.call_soon_threadsafe(_resolve, batch, [item.answers for item in stored])

        self._intake.commit([pending.inbound for pending in batch], answer)


def debug_trace(error: BaseException) -> str:
    """Where an error came from, for the log, under LABDISPATCH_DEBUG=1 only: the frames
    (file, line, function), never the exception's text, which may quote a result."""
    if os.environ.get("LABDISPATCH_DEBUG") != "1":
        return ""
    frames = traceback.extract_tb(error.__traceback__)
    return "; raised at " + " <- ".join(
        f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in reversed(frames)
    )


def _resolve(batch: list[_Pending], answers: list[list[Answer]]) -> None:
    for pending, answer in zip(batch, answers, strict=True):
        if not pending.future.done():
            pending.future.set_result(answer)


def _fail(batch: list[_Pending], error: Exception) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)
