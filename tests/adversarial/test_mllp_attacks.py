"""The MLLP listener attacked as issue 11 did, scaled to run in seconds: slow senders, a
connection flood (also past the process's open-file limit), unfinished large frames.

Each test: the listener stays up, an ordinary LIS sending all along gets every ACK (AA)
within ACK_BOUND_SECONDS, and the listener's peak memory stays under the stated ceiling.
Every loop is bounded by a count or a deadline; all traffic is on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from tests.adversarial.conftest import (
    ACK_BOUND_SECONDS,
    LIMITS,
    OrdinaryLis,
    StartListener,
)
from tests.workers.mllp.conftest import result_message
from workers.mllp.client import MllpClient
from workers.mllp.framing import START_BLOCK

FRAME_TIMEOUT = float(LIMITS["LABDISPATCH_MLLP_FRAME_TIMEOUT"])
IDLE_TIMEOUT = float(LIMITS["LABDISPATCH_MLLP_IDLE_TIMEOUT"])
BUDGET_MIB = int(LIMITS["LABDISPATCH_MLLP_BUFFER_BYTES"]) / 2**20
#: Memory the listener may gain over its idle size during an attack, beyond its buffer
#: budget: connection objects, socket buffers, the allocator's slack.
MARGIN_MIB = 64.0


@dataclass
class Attack:
    """What the attacking connections saw."""

    opened: int = 0
    refused: int = 0  # could not connect, or closed by the listener within 1 s
    lifetimes: list[float] = field(default_factory=list)  # open → closed by the listener
    #: How long each connection still open when the attack ended had been open.
    still_open: list[float] = field(default_factory=list)


def _sources(count: int) -> list[str]:
    """Loopback addresses standing for `count` different senders (127.0.0.2, .3, …)."""
    return [f"127.0.0.{2 + n}" for n in range(count)]


async def _attacker(
    port: int,
    source: str,
    attack: Attack,
    deadline: float,
    feed: bytes,
    chunk: int,
    interval: float,
) -> None:
    """One connection: sends `feed` `chunk` bytes at a time every `interval` seconds (never
    a complete frame), until the listener closes it or the deadline passes."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        attack.refused += 1
        return
    opened = loop.time()
    attack.opened += 1
    closed = asyncio.ensure_future(reader.read(65536))
    position = 0
    write_failed = False
    try:
        while loop.time() < deadline and not closed.done():
            if position < len(feed):
                writer.write(feed[position : position + chunk])
                position += chunk
                async with asyncio.timeout(max(0.01, deadline - loop.time())):
                    await writer.drain()
            await asyncio.wait([closed], timeout=interval)
    except OSError:
        write_failed = True  # reset by the listener while writing
    except TimeoutError:
        pass  # the listener stopped reading it (TCP pushes back): still open
    if closed.done() or write_failed:
        if closed.done() and not closed.cancelled():
            closed.exception()  # a reset is a close too; retrieved, not left to the loop
        lifetime = loop.time() - opened
        attack.lifetimes.append(lifetime)
        if lifetime < 1.0:
            attack.refused += 1
    else:
        attack.still_open.append(loop.time() - opened)
    closed.cancel()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _attack(
    port: int,
    *,
    connections: int,
    sources: list[str],
    seconds: float,
    feed: bytes = b"",
    chunk: int = 1,
    interval: float = 0.05,
) -> Attack:
    attack = Attack()
    deadline = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(
        *(
            _attacker(port, sources[n % len(sources)], attack, deadline, feed, chunk, interval)
            for n in range(connections)
        )
    )
    return attack


#: Log lines an attack may cause in all: each condition once, then once per 10 s.
MAX_LOG_LINES = 12


def _assert_ordinary_lis_was_served(lis: OrdinaryLis) -> None:
    assert lis.errors == [], lis.errors
    assert len(lis.codes) >= 5 and set(lis.codes) == {"AA"}, lis.codes
    assert max(lis.waits) < ACK_BOUND_SECONDS, max(lis.waits)


def test_slow_senders_a_byte_at_a_time(start_listener: StartListener) -> None:
    """300 connections from 2 addresses dribbling a frame a byte every 50 ms: 20 per
    address are taken, and each is cut off at the frame timeout."""
    listener = start_listener()
    idle_mib = listener.rss_mib()
    frame_start = START_BLOCK + result_message("SLOW")
    with OrdinaryLis(listener.port) as lis:
        attack = asyncio.run(
            _attack(
                listener.port,
                connections=300,
                sources=_sources(2),
                seconds=FRAME_TIMEOUT + 3,
                feed=frame_start,
            )
        )
    assert listener.alive()
    _assert_ordinary_lis_was_served(lis)
    assert len(listener.log_lines("")) <= MAX_LOG_LINES, listener.log_lines("")
    assert all(age < FRAME_TIMEOUT + 1.5 for age in attack.still_open), attack.still_open
    assert attack.refused >= 300 - 2 * 20  # past the per-address cap: closed at once
    taken = [t for t in attack.lifetimes if t >= 1.0]
    assert taken and max(taken) < FRAME_TIMEOUT + 1.5  # cut off at the frame timeout
    assert listener.peak_rss_mib() < idle_mib + MARGIN_MIB
    assert len(listener.log_lines("MLLP_MAX_CONNECTIONS_PER_PEER")) <= 2  # rate-limited


def test_connection_flood(start_listener: StartListener) -> None:
    """1,000 connections from 4 addresses, opened at once and left silent: past the caps
    they are closed at once, the rest at the idle timeout."""
    listener = start_listener()
    idle_mib = listener.rss_mib()
    with OrdinaryLis(listener.port) as lis:
        attack = asyncio.run(
            _attack(listener.port, connections=1000, sources=_sources(4), seconds=IDLE_TIMEOUT + 2)
        )
    assert listener.alive()
    _assert_ordinary_lis_was_served(lis)
    assert len(listener.log_lines("")) <= MAX_LOG_LINES, listener.log_lines("")
    # Connections taken late (their SYN retried) may still be in their idle time; none
    # outlives it.
    assert all(age < IDLE_TIMEOUT + 1.5 for age in attack.still_open), attack.still_open
    assert attack.refused >= 1000 - 4 * 20
    assert listener.peak_rss_mib() < idle_mib + MARGIN_MIB
    assert len(listener.log_lines("MLLP_MAX_CONNECTIONS_PER_PEER")) <= 2


def test_connection_flood_past_the_open_file_limit(start_listener: StartListener) -> None:
    """The process may open 128 files, the caps allow 200 connections: accept() fails with
    EMFILE. The listener pauses accepting (a few log lines, not thousands), a LIS already
    connected is still answered, and a new one is taken once the flood is closed."""
    listener = start_listener(open_files=128)
    assert listener.log_lines("open-file limit (128)")  # said at start
    with OrdinaryLis(listener.port) as lis:
        attack = asyncio.run(
            _attack(listener.port, connections=400, sources=_sources(20), seconds=IDLE_TIMEOUT + 2)
        )
    assert listener.alive()
    _assert_ordinary_lis_was_served(lis)
    assert len(listener.log_lines("")) <= MAX_LOG_LINES, listener.log_lines("")
    assert attack.opened > 128  # the flood did go past the limit (waiting in the backlog)
    out_of_files = listener.log_lines("cannot accept connections") + listener.log_lines(
        "out of system resource"
    )
    assert 1 <= len(out_of_files) <= 3, len(out_of_files)
    started = time.monotonic()
    with MllpClient("127.0.0.1", listener.port, timeout=ACK_BOUND_SECONDS + 2) as client:
        assert client.exchange(result_message("AFTER-FLOOD")).code == "AA"
    assert time.monotonic() - started < ACK_BOUND_SECONDS + 2  # accept pauses 2 s at most


def test_unfinished_large_frames(start_listener: StartListener) -> None:
    """40 connections from 2 addresses each sending 15 MiB of a frame that never ends:
    past the 32 MiB budget the largest are dropped, so memory stays bounded."""
    listener = start_listener()
    idle_mib = listener.rss_mib()
    body = START_BLOCK + b"MSH|^~\\&|" + b"x" * (15 * 2**20)
    with OrdinaryLis(listener.port) as lis:
        attack = asyncio.run(
            _attack(
                listener.port,
                connections=40,
                sources=_sources(2),
                seconds=FRAME_TIMEOUT + 3,
                feed=body,
                chunk=256 * 1024,
                interval=0.001,
            )
        )
    assert listener.alive()
    _assert_ordinary_lis_was_served(lis)
    assert len(listener.log_lines("")) <= MAX_LOG_LINES, listener.log_lines("")
    assert all(age < FRAME_TIMEOUT + 1.5 for age in attack.still_open), attack.still_open
    assert listener.peak_rss_mib() < idle_mib + BUDGET_MIB + MARGIN_MIB, (
        listener.peak_rss_mib(),
        idle_mib,
    )
    assert 1 <= len(listener.log_lines("MLLP_BUFFER_BYTES")) <= 2
