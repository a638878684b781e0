"""A local SMTP receiver for the demo and the benchmark: it accepts every message and keeps it.

`labdispatch demo` and `labdispatch bench` need a real mail server at the far end of the SMTP
transport, one that anyone can inspect afterwards: every message lands as one `.eml` file
(the exact bytes received, so `openssl cms -decrypt -in FILE.eml` works on it), and one TSV
line per message tells another process (the bench) what arrived and when, without parsing
mail. It does no authentication and no TLS: it is for 127.0.0.1, never for a real network.

For fault tests it can refuse on demand: while `refusing` is set (or, from another process,
while the file `<log>.refuse` exists) new connections are greeted with `421` and closed,
and a new transaction (MAIL FROM) on an open connection gets `421` and the connection is
closed, as a relay going down for maintenance does.

Run it as its own process:

    python -m workers.smtp_sink --host 127.0.0.1 --port 0 --outbox DIR --log FILE

It prints `listening on HOST:PORT` once bound (port 0 picks a free port) and exits 0 on
SIGTERM or SIGINT.

Log lines (tab-separated, one per message, appended and flushed as each arrives):

    arrived_at (time.time(), 6 decimals)  number  message_id  recipients (comma-separated)  size

`read_log` reads them back (skipping a last line still being written).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aiosmtpd.smtp import SMTP, Envelope, Session

#: The greeting name; given explicitly because aiosmtpd would otherwise look up the FQDN
#: (a DNS query) on every connection.
HOSTNAME = "labdispatch-sink"
REFUSAL = "421 4.3.2 service not available"
#: The Message-ID is looked for in this much of the message only: headers come first, and
#: a sealed result's body (hundreds of KB) must not be scanned.
HEADER_SCAN = 8192
#: The largest message accepted (S/MIME of a result with a big PDF stays far below).
DATA_SIZE_LIMIT = 64 * 1024 * 1024
REFUSE_SUFFIX = ".refuse"

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*?)\r?\n(?![ \t])", re.IGNORECASE | re.M | re.S)
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")
_LOG_UNSAFE = re.compile(r"[\t\r\n]+")
_EML_NUMBER = re.compile(r"(\d+)-")
#: `FROM:<path> [params]` / `TO:<path> [params]`: the path in angle brackets or bare.
_PATH = re.compile(r"\s*(?:<([^>]*)>|(\S+))\s*(.*)", re.S)


@dataclass(frozen=True)
class Arrival:
    """One message as the sink saw it."""

    number: int
    message_id: str  # "" when the message has no Message-ID header
    recipients: tuple[str, ...]  # envelope recipients (RCPT TO)
    size: int  # bytes of the message (after SMTP dot-unstuffing)
    arrived_at: float  # time.time() when DATA completed


@dataclass(frozen=True)
class Received:
    """An arrival and its bytes, kept in memory only when the sink is asked to (`keep`)."""

    arrival: Arrival
    mail_from: str
    data: bytes


def message_id(data: bytes) -> str:
    """The Message-ID header's value (unfolded, as written, angle brackets included), looked
    for only in the header part of the first `HEADER_SCAN` bytes."""
    head = data[:HEADER_SCAN]
    end = head.find(b"\r\n\r\n")
    if end == -1:
        end = head.find(b"\n\n")
    if end != -1:
        head = head[: end + 2]
    match = _MESSAGE_ID.search(head)
    if match is None:
        return ""
    return " ".join(match.group(1).decode("ascii", "replace").split())


def eml_name(number: int, message_id: str) -> str:
    """`<number>-<Message-ID made file-name safe>.eml`: sorted by arrival, and findable by
    Message-ID, whatever a sender put in the header."""
    stem = _UNSAFE.sub("_", message_id.strip("<> \t")).strip("._-")[:100]
    return f"{number:08d}-{stem or 'no-message-id'}.eml"


def read_log(path: Path) -> list[Arrival]:
    """Every complete line of a sink log, in arrival order (a line still being written by the
    sink, without its newline yet, is left for the next read)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    arrivals: list[Arrival] = []
    for line in data.split(b"\n")[:-1]:
        if not line:
            continue
        arrived_at, number, mid, recipients, size = line.decode("utf-8", "replace").split("\t")
        arrivals.append(
            Arrival(
                number=int(number),
                message_id=mid,
                recipients=tuple(recipients.split(",")) if recipients else (),
                size=int(size),
                arrived_at=float(arrived_at),
            )
        )
    return arrivals


class SinkHandler:
    """aiosmtpd handler: accept everything, record it, or refuse while asked to.

    Counters are plain ints, updated on the event loop and safe to read from any thread.
    """

    def __init__(
        self,
        outbox: Path | None = None,
        log: Path | None = None,
        *,
        refuse_file: Path | None = None,
        keep: bool = False,
    ) -> None:
        self.outbox = outbox
        self.log = log
        self.refuse_file = refuse_file or (
            log.with_name(log.name + REFUSE_SUFFIX) if log is not None else None
        )
        self.keep = keep
        #: Set to refuse new connections and transactions with 421 (cleared: accept again).
        self.refusing = False
        self.messages: list[Received] = []
        self.received = 0  # messages accepted
        self.envelope_recipients = 0  # RCPT TO addresses of accepted messages
        self.bytes = 0
        self.connections = 0
        self.refused = 0  # connections and transactions answered 421
        self.last_arrival = 0.0
        #: Open connections, closed when an in-process sink stops.
        self.transports: set[asyncio.BaseTransport] = set()
        self._number = 0
        self._log_handle: IO[bytes] | None = None
        self.open()

    def open(self) -> None:
        """Create the outbox and open the log (again, after `close`). OSError when either
        cannot be written."""
        if self.outbox is not None:
            self.outbox.mkdir(parents=True, exist_ok=True)
            self._number = max(self._number, _last_number(self.outbox))
        if self.log is not None and self._log_handle is None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: each line is one write(2) in append mode, whole for a reader.
            self._log_handle = self.log.open("ab", buffering=0)

    def is_refusing(self) -> bool:
        return self.refusing or (self.refuse_file is not None and self.refuse_file.exists())

    def close(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.is_refusing():
            self.refused += 1
            transport = server.transport
            if transport is not None:
                server.loop.call_soon(transport.close)  # after the reply is written
            return REFUSAL
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """250 only once the message is on disk, as a real MTA queues before it answers.

        Written on the event loop: a writer thread was measured slower (thread hand-off
        costs more CPU than the file creation it overlaps, on tmpfs and on a busy ext4).
        A message that cannot be stored gets 451, never a 250 for something not kept."""
        data = envelope.original_content or b""
        try:
            arrival = self.record(data, tuple(envelope.rcpt_tos), envelope.mail_from or "")
        except OSError as error:
            # A full or vanished disk is the sink's trouble, not the message's: a transient
            # answer, so the sender keeps the message and tries again.
            return f"451 4.3.0 cannot store the message: {error.strerror or error}"
        return f"250 2.0.0 Ok: queued as {arrival.number}"

    def record(self, data: bytes, recipients: tuple[str, ...], mail_from: str = "") -> Arrival:
        """Keep one received message: `.eml` file, log line, counters."""
        arrived_at = time.time()
        self._number += 1
        mid = message_id(data)
        arrival = Arrival(self._number, mid, recipients, len(data), arrived_at)
        if self.outbox is not None:
            final = self.outbox / eml_name(arrival.number, mid)
            temporary = self.outbox / f".{final.name}.tmp"
            with temporary.open("wb") as handle:
                handle.write(data)
            os.replace(temporary, final)
        if self._log_handle is not None:
            line = "\t".join(
                (
                    f"{arrived_at:.6f}",
                    str(arrival.number),
                    _LOG_UNSAFE.sub(" ", mid),
                    _LOG_UNSAFE.sub(" ", ",".join(recipients)),
                    str(arrival.size),
                )
            )
            self._log_handle.write(line.encode("utf-8", "replace") + b"\n")
        if self.keep:
            self.messages.append(Received(arrival, mail_from, data))
        self.received += 1
        self.envelope_recipients += len(recipients)
        self.bytes += len(data)
        self.last_arrival = arrived_at
        return arrival


def _last_number(outbox: Path) -> int:
    """Continue numbering after the files a previous run left, so none is overwritten."""
    highest = 0
    for entry in os.scandir(outbox):
        match = _EML_NUMBER.match(entry.name)
        if match is not None and entry.name.endswith(".eml"):
            highest = max(highest, int(match.group(1)))
    return highest


class SinkSMTP(SMTP):
    """aiosmtpd's server, greeting with 421 (and closing) while the handler refuses, and
    reading DATA in one piece rather than line by line."""

    event_handler: SinkHandler
    #: The stream reader's limit: DATA is read up to its end marker in one call, so the
    #: reader must be able to hold a whole message.
    line_length_limit = DATA_SIZE_LIMIT

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:
            self.event_handler.connections += 1
            self.event_handler.transports.add(transport)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.transport is not None:
            self.event_handler.transports.discard(self.transport)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.event_handler.is_refusing():
            self.event_handler.refused += 1
            await self.push(REFUSAL)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def smtp_MAIL(self, arg: str | None) -> None:
        """MAIL FROM with the path taken as written: aiosmtpd parses it as an RFC 5322
        address (~150 us a command, a fifth of the sink's time), which a sink that accepts
        everything does not need. Parameters (SIZE, BODY...) are recorded, never refused."""
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        assert self.envelope is not None
        path = _path(arg, "FROM:")
        if path is None:
            await self.push("501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]")
            return
        if self.envelope.mail_from is not None:
            await self.push("503 Error: nested MAIL command")
            return
        address, options = path
        await self.push(await self._call_handler_hook("MAIL", address, options))

    async def smtp_RCPT(self, arg: str | None) -> None:
        """RCPT TO, the path taken as written (see `smtp_MAIL`)."""
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        assert self.envelope is not None
        if self.envelope.mail_from is None:
            await self.push("503 Error: need MAIL command")
            return
        path = _path(arg, "TO:")
        if path is None or not path[0]:
            await self.push("501 Syntax: RCPT TO: <address> [SP <mail-parameters>]")
            return
        address, options = path
        self.envelope.rcpt_tos.append(address)
        self.envelope.rcpt_options.extend(options)
        await self.push("250 2.1.5 Ok")

    async def smtp_DATA(self, arg: str) -> None:
        """DATA read up to the end marker in one `readuntil`, then dot-unstuffed in one pass.

        aiosmtpd's own DATA awaits the stream once per line: ~70 times for a 5 KB sealed
        result, ~1,800 for one carrying a PDF, the largest share of the sink's CPU. Same
        replies, same bytes recorded (RFC 5321 4.5.2 transparency undone)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        parts: list[bytes] = []
        try:
            while True:
                # Every chunk ends a line; the message ends at a line holding only ".".
                chunk = await self._reader.readuntil(b".\r\n")
                parts.append(chunk)
                if chunk == b".\r\n" or chunk.endswith(b"\r\n.\r\n"):
                    break
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            # Larger than the reader can hold, or the client went away mid-message.
            await self.push("552 Error: Too much mail data")
            if self.transport is not None:
                self.transport.close()
            return
        raw = b"".join(parts)
        content = b"" if raw == b".\r\n" else raw[:-3]
        if content.startswith(b"."):
            content = content[1:]
        content = content.replace(b"\r\n.", b"\r\n")
        if self.data_size_limit and len(content) > self.data_size_limit:
            self.envelope = self._create_envelope()
            await self.push("552 Error: Too much mail data")
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()  # what aiosmtpd does after DATA
        await self.push(status)


def _path(arg: str | None, keyword: str) -> tuple[str, list[str]] | None:
    """(`address`, parameters) of a MAIL or RCPT argument, or None when it is not one."""
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    match = _PATH.fullmatch(arg, len(keyword))
    if match is None:
        return None
    bracketed, bare, rest = match.groups()
    return (bracketed if bracketed is not None else bare), rest.split()


def _factory(handler: SinkHandler) -> SinkSMTP:
    return SinkSMTP(
        handler,
        hostname=HOSTNAME,
        data_size_limit=DATA_SIZE_LIMIT,
        enable_SMTPUTF8=True,
    )


class SmtpSink:
    """The sink running in this process, on its own thread and event loop (demo, tests).

    `SmtpSink(...).start()` returns once the port is bound; `port` is then the real one
    (port 0 picks a free port). `stop()` closes the listener and the log.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        outbox: Path | None = None,
        log: Path | None = None,
        refuse_file: Path | None = None,
        keep: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.handler = SinkHandler(outbox, log, refuse_file=refuse_file, keep=keep)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def refusing(self) -> bool:
        return self.handler.refusing

    @refusing.setter
    def refusing(self, value: bool) -> None:
        self.handler.refusing = value

    def start(self) -> SmtpSink:
        """Listen (again, after `stop`: on the same port, so clients find it back)."""
        self.handler.open()
        loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                loop.create_server(lambda: _factory(self.handler), self.host, self.port)
            )
        except BaseException:
            loop.close()
            raise
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="smtp-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        loop, server, thread = self._loop, self._server, self._thread
        if loop is None or server is None or thread is None:
            return
        self._loop = self._server = self._thread = None
        asyncio.run_coroutine_threadsafe(_close_all(server, self.handler), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self.handler.close()

    def __enter__(self) -> SmtpSink:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _close_all(server: asyncio.Server, handler: SinkHandler) -> None:
    """Stop listening and drop open connections (a client mid-message sees the loss)."""
    server.close()
    for transport in list(handler.transports):
        transport.close()
    await asyncio.sleep(0)


async def serve(handler: SinkHandler, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT (the process form)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _factory(handler), host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        server.close()
        handler.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.smtp_sink",
        description="A local SMTP receiver that accepts every message (demo and benchmark).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525, help="0 picks a free port")
    parser.add_argument("--outbox", type=Path, help="write each message as one .eml file here")
    parser.add_argument("--log", type=Path, help="append one TSV line per message to this file")
    parser.add_argument(
        "--refuse-file",
        type=Path,
        help="answer 421 while this file exists (default: the log's name + .refuse)",
    )
    args = parser.parse_args(argv)
    try:
        handler = SinkHandler(args.outbox, args.log, refuse_file=args.refuse_file)
    except OSError as error:
        print(f"smtp sink: cannot write the outbox or the log: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(handler, args.host, args.port))
    except OSError as error:
        print(f"smtp sink: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    finally:
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
