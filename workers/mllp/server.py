"""The MLLP listener: many LIS connections, one writer to the ledger, no ACK before commit.

Each connection reads its frames in order and hands each one to the `GroupCommitter`
(`workers.intake_commit`, shared with the HTTP API; the drop folder runs the same commit
policy): one thread that owns the database work. It takes every frame waiting (up to `max_batch`,
lingering a couple of milliseconds for more once it has one), records them all in one
transaction, commits, and only then answers each frame. So a morning peak of many LIS
pushing at once costs one commit per batch rather than one per message, and an ACK on
the wire always means "committed" (ARCHITECTURE rule 1).

A connection writes its ACKs in the order its frames arrived, however the batches fell.
When the commit fails (the ledger is down), every frame of the batch gets an error ACK
(AE, enhanced mode CE) saying it was not stored: the LIS keeps it and sends it again.
Nothing here logs message content: peers, counts and control IDs only.

What a sender can hold is bounded (`workers.mllp.limits`): connections in all and per
address (past them a connection is closed at once), a frame's time to finish once begun, a
connection's time without a message, and the bytes held for frames not yet answered (past
the budget the largest unfinished frames are dropped). The listener accepts connections
itself, so running out of file descriptors pauses accepting instead of spinning on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import open_database
from pipeline.delivery.intake import Answer, Inbound
from pipeline.delivery.services import DeliveryServices
from pipeline.errors import LabdispatchError
from pipeline.hl7.ack import REJECT, AckContext, AckIssue, encode_accept_ack
from pipeline.settings import Settings
from workers.hooks import AfterCommit
from workers.intake_commit import DEFAULT_LINGER_SECONDS, GroupCommitter
from workers.mllp.framing import (
    DEFAULT_MAX_BYTES,
    READ_SIZE,
    FrameDecoder,
    OversizedFrame,
    frame,
)
from workers.mllp.limits import RESERVED_FILE_DESCRIPTORS, ListenerLimits, RateLimitedLog

#: Frames a connection may have waiting for their ACK; past this we stop reading it, and
#: TCP pushes back on the sender.
DEFAULT_WINDOW = 256
#: How long a connection closed by a shutdown waits for the LIS to close its side.
LINGER_SECONDS = 2.0
#: How long a shutdown waits for in-flight batches and their ACKs.
DEFAULT_GRACE_SECONDS = 10.0

log = logging.getLogger(__name__)


class ListenerError(LabdispatchError):
    """The listener cannot start (address in use, no permission to bind)."""


@dataclass(eq=False)  # each connection is its own: kept in a set by identity
class _Connection:
    peer: str
    writer: asyncio.StreamWriter
    window: asyncio.Semaphore
    #: What to write next, in order: an ACK to come (the committer's answer) or ready bytes,
    #: with the size of the frame it answers (released from the budget once written).
    pending: asyncio.Queue[tuple[asyncio.Future[list[Answer]] | bytes | None, int]] = field(
        default_factory=asyncio.Queue
    )
    reading: asyncio.Task[None] | None = None
    decoder: FrameDecoder | None = None
    frames: int = 0
    acks: int = 0
    broken: bool = False
    #: Dropped by the listener (budget): stop reading at once.
    dropped: bool = False
    #: Bytes of the unfinished frame held, and of frames read and not yet answered.
    partial: int = 0
    unanswered: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    #: Event-loop time of the last frame read or ACK written (the idle timeout runs from it).
    last_activity: float = 0.0


#: accept() errors that mean "out of file descriptors or memory right now": pause accepting
#: (the pending connections wait in the kernel's queue) rather than spin on them.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors about one connection that went away before it was taken: skip it.
_CONNECTION_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
ACCEPT_PAUSE_SECONDS = 0.1
ACCEPT_PAUSE_MAX_SECONDS = 2.0
#: Connections the kernel may hold for accept(): a burst of connections (a flood, or every
#: LIS reconnecting after a network cut) must not overflow it and drop ordinary ones.
BACKLOG = 1024


class MllpServer:
    """An asyncio MLLP listener committing through a `GroupCommitter`.

    `start` binds (port 0 picks a free port, read it back from `port`); `close` stops
    accepting, stops reading, lets every frame already read be committed and answered,
    then closes the connections and the committer. `limits` bound what senders can hold
    (`workers.mllp.limits`): a connection over a cap is closed at once, a frame not
    finished in time or a connection idle too long is closed, and past the buffer budget
    the largest unfinished frames are dropped (their LIS sends them again)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        services: DeliveryServices,
        *,
        after_commit: AfterCommit | None = None,
        max_batch: int = 100,
        linger: float = DEFAULT_LINGER_SECONDS,
        max_frame_bytes: int = DEFAULT_MAX_BYTES,
        window: int = DEFAULT_WINDOW,
        grace: float = DEFAULT_GRACE_SECONDS,
        limits: ListenerLimits | None = None,
    ) -> None:
        self._sessions = sessions
        self._services = services
        self._after_commit = after_commit
        self._max_batch = max_batch
        self._linger = linger
        self._max_frame_bytes = max_frame_bytes
        self._window = window
        self._grace = grace
        self.limits = limits or ListenerLimits()
        #: Never below one whole frame: a frame the listener accepts must fit.
        self._budget = max(self.limits.buffer_bytes, max_frame_bytes + READ_SIZE)
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._committer: GroupCommitter | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._open = 0
        self._per_peer: Counter[str] = Counter()
        #: Bytes held for senders: unfinished frames, and frames not yet answered.
        self.held = 0
        self._events = RateLimitedLog(log)
        self._closed = asyncio.Event()
        self._closing = False

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._committer = GroupCommitter(
            self._sessions,
            self._services,
            loop,
            after_commit=self._after_commit,
            max_batch=self._max_batch,
            linger=self._linger,
            name="mllp-committer",
        )
        _make_room_for(self.limits.max_connections)
        self._listeners = _bind(host, port)
        self._committer.start()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self._listeners]

    @property
    def port(self) -> int:
        assert self._listeners, "start() first"
        port: int = self._listeners[0].getsockname()[1]
        return port

    @property
    def committer(self) -> GroupCommitter:
        assert self._committer is not None, "start() first"
        return self._committer

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self._open

    async def serve_forever(self) -> None:
        """Wait until `close` has finished."""
        await self._closed.wait()

    async def close(self) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        for task in self._accepting:
            task.cancel()  # no new connections
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self._listeners:
            sock.close()
        for connection in list(self._connections):
            if connection.reading is not None:
                connection.reading.cancel()  # frames already read are still answered
        if self._handlers:
            _, late = await asyncio.wait(set(self._handlers), timeout=self._grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("MLLP shutdown: %d connection(s) did not finish in time", len(late))
                await asyncio.wait(late)
        if self._committer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._committer.stop)
        self._closed.set()

    # --- accepting ---------------------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        pause = ACCEPT_PAUSE_SECONDS
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as error:
                if error.errno in _CONNECTION_GONE:
                    continue
                # Out of descriptors (or another error we cannot fix from here): pause,
                # longer each time it repeats, so the loop never spins on it.
                self._events.log(
                    logging.ERROR,
                    "accept",
                    "MLLP: cannot accept connections (%s); accepting again in %.1f s. "
                    "Raise the open-file limit or lower LABDISPATCH_MLLP_MAX_CONNECTIONS",
                    error.strerror or type(error).__name__,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, ACCEPT_PAUSE_MAX_SECONDS)
                continue
            pause = ACCEPT_PAUSE_SECONDS
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: Any) -> None:
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        refusal = ""
        if self._open >= self.limits.max_connections:
            refusal = (
                f"{self._open} connections open, the most this listener takes "
                "(LABDISPATCH_MLLP_MAX_CONNECTIONS)"
            )
        elif self._per_peer[host] >= self.limits.max_connections_per_peer:
            refusal = (
                f"{self._per_peer[host]} connections from {host} open, the most one address "
                "may have (LABDISPATCH_MLLP_MAX_CONNECTIONS_PER_PEER)"
            )
        if refusal:
            sock.close()
            self._events.log(
                logging.WARNING, "cap", "MLLP: connection from %s closed: %s", host, refusal
            )
            return
        self._open += 1
        self._per_peer[host] += 1
        task = asyncio.get_running_loop().create_task(self._serve_socket(sock, host))
        self._handlers.add(task)

    async def _serve_socket(self, sock: socket.socket, host: str) -> None:
        task = asyncio.current_task()
        try:
            try:
                reader, writer = await asyncio.open_connection(sock=sock)
            except OSError:
                sock.close()
                return
            await self._handle(reader, writer)
        finally:
            self._open -= 1
            self._per_peer[host] -= 1
            if not self._per_peer[host]:
                del self._per_peer[host]
            self._handlers.discard(task)

    # --- one connection --------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        connection = _Connection(peer, writer, asyncio.Semaphore(self._window))
        connection.last_activity = asyncio.get_running_loop().time()
        connection.drained.set()
        self._connections.add(connection)
        log.info("MLLP connection from %s", peer)
        try:
            if self._closing:
                return
            sender = asyncio.create_task(self._send_acks(connection))
            connection.reading = asyncio.create_task(self._read(connection, reader))
            await asyncio.wait([connection.reading])
            if not connection.reading.cancelled() and connection.reading.exception():
                log.error(
                    "MLLP %s: reading failed (%s)",
                    peer,
                    type(connection.reading.exception()).__name__,
                )
            connection.pending.put_nowait((None, 0))
            await sender
            if self._closing and not connection.broken:
                await _linger(reader, writer)
        finally:
            self._connections.discard(connection)
            self._hold_partial(connection, 0)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            log.info(
                "MLLP connection from %s closed: %d frame(s), %d ACK(s)",
                peer,
                connection.frames,
                connection.acks,
            )

    async def _read(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        decoder = connection.decoder = FrameDecoder(self._max_frame_bytes)
        loop = asyncio.get_running_loop()
        frame_started = loop.time()
        try:
            while not connection.dropped:
                await self._room_in_budget(connection)
                if decoder.in_frame:
                    remaining = frame_started + self.limits.frame_timeout - loop.time()
                elif connection.unanswered:
                    remaining = self.limits.idle_timeout  # waiting for our ACKs: not idle
                else:
                    remaining = connection.last_activity + self.limits.idle_timeout - loop.time()
                if remaining <= 0:
                    self._timed_out(connection, decoder)
                    break
                try:
                    async with asyncio.timeout(remaining):
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    continue
                if not data or connection.dropped:
                    break
                was_in_frame = decoder.in_frame
                items = decoder.feed(data)
                now = loop.time()
                if items:
                    connection.last_activity = now
                if decoder.in_frame and (items or not was_in_frame):
                    frame_started = now
                self._hold_partial(connection, decoder.buffered)
                for item in items:
                    await connection.window.acquire()
                    # No await from here to the queue: a shutdown cancelling the read never
                    # separates a submitted frame from its place in the ACK order.
                    connection.frames += 1
                    if isinstance(item, OversizedFrame):
                        ack = _oversized_ack(item, connection.peer)
                        if ack is None:
                            connection.window.release()
                        else:
                            connection.pending.put_nowait((ack, 0))
                        continue
                    self._hold_unanswered(connection, len(item))
                    connection.pending.put_nowait(
                        (self.committer.submit(Inbound(item, "mllp", connection.peer)), len(item))
                    )
                if self.held > self._budget:
                    self._shed()
        except (ConnectionError, OSError) as error:
            log.info("MLLP %s: connection lost (%s)", connection.peer, type(error).__name__)
        finally:
            if decoder.partial and not connection.dropped:
                self._events.log(
                    logging.WARNING,
                    "closed-mid-frame",
                    "MLLP %s closed in the middle of a message: %d bytes dropped, nothing stored",
                    connection.peer,
                    decoder.partial,
                )
            if decoder.discarded or decoder.interrupted:
                self._events.log(
                    logging.WARNING,
                    "outside-frame",
                    "MLLP %s: %d byte(s) outside any frame and %d frame(s) cut short by a new "
                    "start block were dropped",
                    connection.peer,
                    decoder.discarded,
                    decoder.interrupted,
                )
            decoder.drop()
            self._hold_partial(connection, 0)

    def _timed_out(self, connection: _Connection, decoder: FrameDecoder) -> None:
        if decoder.in_frame:
            self._events.log(
                logging.WARNING,
                "frame-timeout",
                "MLLP %s: a message begun more than %g s ago is still not complete "
                "(LABDISPATCH_MLLP_FRAME_TIMEOUT): connection closed, nothing stored",
                connection.peer,
                self.limits.frame_timeout,
            )
            connection.dropped = True  # its partial bytes are not "closed by the LIS"
        else:
            self._events.log(
                logging.INFO,
                "idle-timeout",
                "MLLP %s: no message for %g s (LABDISPATCH_MLLP_IDLE_TIMEOUT): connection closed",
                connection.peer,
                self.limits.idle_timeout,
            )

    # --- the buffer budget -------------------------------------------------------------------

    def _hold_partial(self, connection: _Connection, size: int) -> None:
        self.held += size - connection.partial
        connection.partial = size

    def _hold_unanswered(self, connection: _Connection, size: int) -> None:
        self.held += size
        connection.unanswered += size
        if connection.unanswered:
            connection.drained.clear()

    def _release_unanswered(self, connection: _Connection, size: int) -> None:
        self.held -= size
        connection.unanswered -= size
        if not connection.unanswered:
            connection.drained.set()

    async def _room_in_budget(self, connection: _Connection) -> None:
        """Over the budget, a connection with frames waiting for their ACK reads no more
        until they are answered (TCP pushes back on its LIS); answering needs nothing from
        the LIS but reading its ACKs, which the ACK timeout bounds."""
        while self.held > self._budget and connection.unanswered and not connection.dropped:
            await connection.drained.wait()

    def _shed(self) -> None:
        """Back under the budget: drop the connections holding the largest unfinished
        frames first (an ordinary LIS's frame is small; the one holding most goes)."""
        holders = sorted(
            (c for c in self._connections if c.partial and not c.dropped),
            key=lambda c: c.partial,
            reverse=True,
        )
        for victim in holders:
            if self.held <= self._budget:
                break
            self._events.log(
                logging.WARNING,
                "budget",
                "MLLP %s: connection dropped with %d bytes of an unfinished message: the "
                "listener held %d bytes for its senders, over its budget of %d "
                "(LABDISPATCH_MLLP_BUFFER_BYTES); nothing of it was stored",
                victim.peer,
                victim.partial,
                self.held,
                self._budget,
            )
            victim.dropped = True
            if victim.decoder is not None:
                victim.decoder.drop()
            self._hold_partial(victim, 0)
            victim.writer.transport.abort()

    async def _send_acks(self, connection: _Connection) -> None:
        writer = connection.writer
        loop = asyncio.get_running_loop()
        while True:
            item, size = await connection.pending.get()
            if item is None:
                break
            try:
                acks = [item] if isinstance(item, bytes) else _acks(await item)
            except Exception:
                # The committer could not answer (a bug, logged there): this frame and any
                # after it would go unanswered or out of order. Drop the connection, so the
                # LIS resends what has no ACK.
                connection.broken = True
                writer.transport.abort()
                acks = []
            finally:
                connection.window.release()
                self._release_unanswered(connection, size)
            if connection.broken or writer.is_closing():
                connection.broken = True
                continue
            for ack in acks:
                writer.write(frame(ack))
            connection.acks += len(acks)
            try:
                # At once when the LIS reads; waits when it does not, for a while only.
                async with asyncio.timeout(self.limits.frame_timeout):
                    await writer.drain()
            except TimeoutError:
                self._events.log(
                    logging.WARNING,
                    "ack-timeout",
                    "MLLP %s: its ACKs went unread for %g s (LABDISPATCH_MLLP_FRAME_TIMEOUT): "
                    "connection closed",
                    connection.peer,
                    self.limits.frame_timeout,
                )
                connection.broken = True
                writer.transport.abort()
            except (ConnectionError, OSError):
                connection.broken = True  # the LIS went away: it resends what has no ACK
            connection.last_activity = loop.time()


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names (as asyncio's own server binds)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise ListenerError(f"cannot listen for MLLP on {host}:{port}: {error.strerror}") from error
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise ListenerError(
            f"cannot listen for MLLP on {host}:{port}: {error.strerror or error}"
        ) from error
    return sockets


def _make_room_for(connections: int) -> None:
    """Raise the open-file limit to what `connections` need, as far as the hard limit lets
    a process; warn when it stays short (accept() would then fail before the cap)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + RESERVED_FILE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "MLLP: the open-file limit (%d) is below what %d connections need (%d); "
            "raise it (LimitNOFILE) or lower LABDISPATCH_MLLP_MAX_CONNECTIONS",
            soft,
            connections,
            needed,
        )


def _acks(answers: list[Answer]) -> list[bytes]:
    """What to write for one frame: an ACK per message, in order (none when MSH-15 says)."""
    return [answer.ack for answer in answers if answer.ack is not None]


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop until the LIS closes (for a moment at most).

    Closing a socket with unread data in it makes TCP reset the connection, and a reset
    can destroy the ACKs the LIS has not read yet: the ones for messages we committed."""
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(READ_SIZE):
                pass


def _oversized_ack(item: OversizedFrame, peer: str) -> bytes | None:
    context = AckContext.from_raw(item.head)
    log.warning(
        "MLLP %s: message %s refused: %d bytes, over the %d-byte limit",
        peer,
        context.control_id or "(no control ID)",
        item.size,
        item.limit,
    )
    issue = AckIssue(
        f"message of {item.size} bytes refused: larger than this listener's limit of "
        f"{item.limit} bytes"
    )
    return encode_accept_ack(context, REJECT, [issue])


def run_mllp_server(
    settings: Settings,
    after_commit: AfterCommit | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    ready: Callable[[str, int], None] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then finish in-flight batches and return 0.

    `ready` is told the address once listening (port 0 picks a free one)."""
    sessions = open_database(settings)
    try:
        with DeliveryServices.from_settings(settings) as services:
            return asyncio.run(
                _serve(
                    sessions,
                    services,
                    after_commit,
                    host if host is not None else settings.service.mllp_host,
                    port if port is not None else settings.service.mllp_port,
                    settings.service.batch_size,
                    ready,
                    ListenerLimits.from_settings(settings.service),
                )
            )
    finally:
        bind = sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()


async def _serve(
    sessions: sessionmaker[Session],
    services: DeliveryServices,
    after_commit: AfterCommit | None,
    host: str,
    port: int,
    batch_size: int,
    ready: Callable[[str, int], None] | None,
    limits: ListenerLimits,
) -> int:
    server = MllpServer(
        sessions, services, after_commit=after_commit, max_batch=batch_size, limits=limits
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start(host, port)
    if ready is not None:
        ready(host, server.port)
    await stop.wait()
    log.info("MLLP listener stopping: finishing in-flight messages")
    await server.close()
    return 0
