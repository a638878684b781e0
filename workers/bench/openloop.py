"""An open-loop load: results offered at a fixed rate, by the clock, whatever the ACKs do.

A closed loop (`workers.mllp.client.push`) sends the next message when an ACK frees the
window, so a slow listener slows the sender and its latency hides in a lower rate. Here
message `i` is due at `start + i / rate`: the schedule never moves. A send that cannot go
on time (the client was busy, or every connection's window is full) goes as soon as it can
and is recorded as late; none is skipped, and the ones behind it stay due at their own
slots. So the report says both what latency the listener gives at that rate and whether
the rate was actually offered.

ACK latency is timed twice: from the write (what the listener took) and from the slot
(what a laboratory sending on schedule waits, its queueing when it was late included).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline.errors import ConfigurationError
from workers.mllp.client import AckReply, AckTimeout, CannotConnect, ConnectionLost, MllpError
from workers.mllp.framing import READ_SIZE, FrameDecoder, OversizedFrame, frame

T = TypeVar("T")

#: A send more than this behind its slot counts as late (asyncio's timers wake within a
#: millisecond or two of their time on an idle loop).
LATE_AFTER = 0.010
#: The offered rate counts as achieved when the sends kept within this share of it.
ACHIEVED_SHARE = 0.98


@dataclass
class Offer:
    """When each send was due and when it went."""

    rate: float  # per second
    start: float = 0.0  # the clock at slot 0
    lateness: list[float] = field(default_factory=list)  # seconds behind the slot, per send
    last_sent: float = 0.0

    def due(self, index: int) -> float:
        return self.start + index / self.rate

    @property
    def sent(self) -> int:
        return len(self.lateness)

    @property
    def achieved_rate(self) -> float:
        """Sends per second over the schedule actually kept: `rate` when every send went
        on time, lower when the last one went late."""
        if not self.lateness:
            return 0.0
        span = self.last_sent - self.start + 1 / self.rate
        return self.sent / span if span > 0 else 0.0

    @property
    def achieved(self) -> bool:
        return self.achieved_rate >= ACHIEVED_SHARE * self.rate

    def late(self, after: float = LATE_AFTER) -> int:
        return sum(1 for behind in self.lateness if behind > after)

    @property
    def worst(self) -> float:
        return max(self.lateness, default=0.0)


async def offer(
    items: Iterable[T],
    rate: float,
    send: Callable[[T, float], Awaitable[None]],
    *,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> Offer:
    """`send(item, slot)` for each item at its slot `start + i / rate`; a send that is
    behind goes at once and is recorded late (none skipped, no slot moved)."""
    if not rate > 0:
        raise ConfigurationError(f"the offered rate must be above 0 per second, not {rate}")
    schedule = Offer(rate=rate, start=clock())
    for index, item in enumerate(items):
        due = schedule.due(index)
        ahead = due - clock()
        if ahead > 0:
            await sleep(ahead)
        await send(item, due)
        sent = clock()
        schedule.lateness.append(max(0.0, sent - due))
        schedule.last_sent = sent
    return schedule


# --- over MLLP ------------------------------------------------------------------------------


@dataclass
class OpenLoopReport:
    """What `push_at_rate` saw."""

    offer: Offer
    latencies: list[float] = field(default_factory=list)  # write → ACK, seconds
    from_slot: list[float] = field(default_factory=list)  # slot → ACK, seconds
    codes: Counter[str] = field(default_factory=Counter)


@dataclass
class _Connection:
    address: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    waiting: deque[tuple[float, float]] = field(default_factory=deque)  # (slot, written at)


async def push_at_rate(
    host: str,
    port: int,
    messages: Iterable[bytes],
    rate: float,
    *,
    connections: int = 4,
    window: int = 32,
    timeout: float = 60.0,
    clock: Callable[[], float] = time.perf_counter,
) -> OpenLoopReport:
    """Offer `messages` at `rate` per second over `connections` MLLP connections, each
    message on the connection with the fewest unanswered (at most `window` each: when all
    are full the send waits, late). Returns once every message has its ACK."""
    address = f"mllp://{host}:{port}"
    opened: list[_Connection] = []
    try:
        for _ in range(max(1, connections)):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as error:
                raise CannotConnect(f"cannot connect to {address}: {error}") from error
            opened.append(_Connection(address, reader, writer))
        report = OpenLoopReport(Offer(rate=rate))
        room = asyncio.Condition()

        async def send(message: bytes, slot: float) -> None:
            async with room:
                await room.wait_for(lambda: any(len(c.waiting) < window for c in opened))
            connection = min(opened, key=lambda c: len(c.waiting))
            connection.waiting.append((slot, clock()))
            connection.writer.write(frame(message))
            await connection.writer.drain()

        async def receive(connection: _Connection) -> None:
            decoder = FrameDecoder()
            while True:
                try:
                    data = await asyncio.wait_for(connection.reader.read(READ_SIZE), timeout)
                except TimeoutError as error:
                    if not connection.waiting:
                        continue
                    raise AckTimeout(
                        f"{address}: no ACK within {timeout:g} s "
                        f"({len(connection.waiting)} waiting)"
                    ) from error
                if not data:
                    raise ConnectionLost(f"{address} closed a connection during the run")
                now = clock()
                for item in decoder.feed(data):
                    if isinstance(item, OversizedFrame) or not connection.waiting:
                        raise MllpError(f"{address}: an ACK that answers no message we sent")
                    slot, written = connection.waiting.popleft()
                    report.latencies.append(now - written)
                    report.from_slot.append(now - slot)
                    report.codes[AckReply.parse(item).code or "?"] += 1
                async with room:
                    room.notify_all()

        async def drive() -> Offer:
            schedule = await offer(messages, rate, send, clock=clock)
            async with room:
                await room.wait_for(lambda: all(not c.waiting for c in opened))
            return schedule

        driving = asyncio.create_task(drive())
        receivers = [asyncio.create_task(receive(c)) for c in opened]
        try:
            # Receivers run until cancelled: one that ends has failed, and stops the run.
            await asyncio.wait([driving, *receivers], return_when=asyncio.FIRST_COMPLETED)
            for task in receivers:
                if task.done():
                    task.result()
            report.offer = driving.result()
        finally:
            everything: list[asyncio.Task[Any]] = [driving, *receivers]
            for task in everything:
                task.cancel()
            await asyncio.gather(driving, *receivers, return_exceptions=True)
        return report
    finally:
        for connection in opened:
            connection.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await connection.writer.wait_closed()
