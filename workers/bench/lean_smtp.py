"""A lean SMTP receiver for the bench: accepts everything, keeps nothing, costs little CPU.

In production the relay is another machine; on the 2-core bench box every cycle the receiver
takes is one the delivery path does not get. The aiosmtpd receiver (`workers.smtp_sink`)
stores each message and parses every command, ~2 ms a result: right for the demo and the
correctness tests, too heavy to stand in for a remote relay in a throughput figure. This one
is one asyncio protocol reading bytes:

- it advertises and accepts PIPELINING (RFC 2920), 8BITMIME, SIZE, SMTPUTF8 and
  ENHANCEDSTATUSCODES; every complete command in a read is answered, in order, with one
  write;
- DATA is scanned for its end marker chunk by chunk and dropped; only the first
  `HEAD_LIMIT` bytes are kept, to find the Message-ID header;
- it counts connections, messages, RCPTs and distinct (Message-ID, RCPT) pairs, so the
  bench can say how many envelopes arrived and how many were sent twice.

Run as a process (`python -m workers.bench.lean_smtp --port 0`): it prints
`listening on HOST:PORT`, serves until SIGTERM or SIGINT, then prints its counts and its
own CPU seconds as one JSON line and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HOSTNAME = b"bench-receiver.labdispatch.invalid"
#: Bytes at the start of a message searched for its Message-ID (headers come first).
HEAD_LIMIT = 8192
#: The largest message accepted (advertised as SIZE); a larger one gets 552.
SIZE_LIMIT = 64 * 1024 * 1024
#: A command line longer than this (RFC 5321 allows 512 with its parameters) closes the
#: connection with 500.
LINE_LIMIT = 4096
_END_OF_DATA = b"\r\n.\r\n"

_GREETING = b"220 " + HOSTNAME + b" ESMTP labdispatch bench receiver\r\n"
_EHLO = (
    b"".join(
        b"250-" + line + b"\r\n"
        for line in (
            HOSTNAME,
            b"PIPELINING",
            b"8BITMIME",
            b"SIZE %d" % SIZE_LIMIT,
            b"SMTPUTF8",
        )
    )
    + b"250 ENHANCEDSTATUSCODES\r\n"
)
_OK = b"250 2.0.0 Ok\r\n"
_MAIL_OK = b"250 2.1.0 Ok\r\n"
_RCPT_OK = b"250 2.1.5 Ok\r\n"
_START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
_BYE = b"221 2.0.0 Bye\r\n"
_NEED_HELO = b"503 5.5.1 Error: send EHLO or HELO first\r\n"
_NESTED_MAIL = b"503 5.5.1 Error: nested MAIL command\r\n"
_NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
_NEED_RCPT = b"503 5.5.1 Error: need RCPT command\r\n"
_BAD_MAIL = b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
_BAD_RCPT = b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"
_TOO_BIG = b"552 5.3.4 Message size exceeds fixed limit\r\n"
_LINE_TOO_LONG = b"500 5.5.2 Line too long\r\n"
_UNKNOWN = b"500 5.5.2 Error: command not recognized\r\n"


@dataclass
class Counts:
    """What the receiver took in, over all its connections."""

    connections: int = 0
    messages: int = 0
    recipients: int = 0  # RCPT addresses of accepted messages
    octets: int = 0  # message bytes (as sent, dot-stuffing included)
    without_message_id: int = 0
    #: Hashes of the (Message-ID, RCPT) pairs seen: 64 bits each, so 200,000 pairs take a
    #: few MB and a collision is out of reach.
    pairs: set[int] = field(default_factory=set)
    duplicate_pairs: int = 0

    def record(self, message_id: bytes, recipients: list[bytes], size: int) -> None:
        self.messages += 1
        self.recipients += len(recipients)
        self.octets += size
        if not message_id:
            self.without_message_id += 1
            return
        for recipient in recipients:
            key = hash((message_id, recipient.lower()))
            if key in self.pairs:
                self.duplicate_pairs += 1
            else:
                self.pairs.add(key)

    def as_dict(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "messages": self.messages,
            "recipients": self.recipients,
            "bytes": self.octets,
            "without_message_id": self.without_message_id,
            "distinct_pairs": len(self.pairs),
            "duplicate_pairs": self.duplicate_pairs,
        }


class LeanSmtp(asyncio.Protocol):
    """One SMTP connection. Commands are answered in the order they came, all the replies
    to one read in one write (what PIPELINING lets a server do)."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.transport: asyncio.WriteTransport | None = None
        self._buffer = bytearray()
        self._greeted = False
        self._in_transaction = False
        self._recipients: list[bytes] = []
        self._in_data = False
        self._head = bytearray()
        self._tail = b""
        self._size = 0
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        self.counts.connections += 1
        transport.write(_GREETING)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        out: list[bytes] = []
        while data:
            if self._in_data:
                data = self._feed_data(data, out)
                continue
            self._buffer += data
            data = b""
            self._commands(out)
            if self._in_data and self._buffer:
                data = bytes(self._buffer)  # what followed DATA is the message
                self._buffer.clear()
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if self._closing and self.transport is not None:
            self.transport.close()

    def _commands(self, out: list[bytes]) -> None:
        start = 0
        buffer = self._buffer
        while not self._in_data and not self._closing:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                if len(buffer) - start > LINE_LIMIT:
                    out.append(_LINE_TOO_LONG)
                    self._closing = True
                break
            self._command(bytes(buffer[start:end]), out)
            start = end + 2
        del buffer[:start]

    def _command(self, line: bytes, out: list[bytes]) -> None:
        verb = line[:4].upper()
        if len(line) > 4 and line[4:5] != b" ":
            verb = b""
        if verb == b"EHLO":
            self._greeted = True
            self._reset()
            out.append(_EHLO)
        elif verb == b"HELO":
            self._greeted = True
            self._reset()
            out.append(b"250 " + HOSTNAME + b"\r\n")
        elif verb == b"MAIL":
            out.append(self._mail(line[5:]))
        elif verb == b"RCPT":
            out.append(self._rcpt(line[5:]))
        elif verb == b"DATA":
            if not self._greeted:
                out.append(_NEED_HELO)
            elif not self._recipients:
                out.append(_NEED_RCPT)
            else:
                out.append(_START_DATA)
                self._in_data = True
                self._head = bytearray()
                self._tail = b"\r\n"  # the DATA line's end: a message may be just "."
                self._size = 0
        elif verb == b"RSET":
            self._reset()
            out.append(_OK)
        elif verb == b"NOOP":
            out.append(_OK)
        elif verb == b"QUIT":
            out.append(_BYE)
            self._closing = True
        else:
            out.append(_UNKNOWN)

    def _mail(self, argument: bytes) -> bytes:
        if not self._greeted:
            return _NEED_HELO
        if self._in_transaction:
            return _NESTED_MAIL
        if argument[:5].upper() != b"FROM:":
            return _BAD_MAIL
        for parameter in argument[5:].split()[1:]:
            size = parameter[5:]
            if parameter[:5].upper() == b"SIZE=" and size.isdigit() and int(size) > SIZE_LIMIT:
                return _TOO_BIG
        self._in_transaction = True
        self._recipients = []
        return _MAIL_OK

    def _rcpt(self, argument: bytes) -> bytes:
        if not self._in_transaction:
            return _NEED_MAIL
        if argument[:3].upper() != b"TO:":
            return _BAD_RCPT
        path = argument[3:].strip().split(b" ", 1)[0]
        address = path[1:-1] if path[:1] == b"<" and path[-1:] == b">" else path
        if not address:
            return _BAD_RCPT
        self._recipients.append(address)
        return _RCPT_OK

    def _feed_data(self, data: bytes, out: list[bytes]) -> bytes:
        """Take message bytes until the end marker; return what follows it (commands)."""
        window = self._tail + data
        end = window.find(_END_OF_DATA)
        if end < 0:
            self._keep(data)
            self._tail = window[-4:]
            return b""
        # `window` starts with the last bytes already taken: the message's own bytes in
        # `data` end before the marker's ".", the marker ends `end + 5` into `window`.
        self._keep(data[: max(0, end + 2 - len(self._tail))])
        rest = data[end + 5 - len(self._tail) :]
        if self._size > SIZE_LIMIT:
            out.append(_TOO_BIG)
        else:
            self.counts.record(message_id(bytes(self._head)), self._recipients, self._size)
            out.append(b"250 2.0.0 Ok: queued as %d\r\n" % self.counts.messages)
        self._in_data = False
        self._reset()
        return rest

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        room = HEAD_LIMIT - len(self._head)
        if room > 0:
            self._head += data[:room]

    def _reset(self) -> None:
        self._in_transaction = False
        self._recipients = []


def message_id(head: bytes) -> bytes:
    """The Message-ID header's value among the headers in `head` (b"" when absent); folded
    lines are unfolded. Only the header block is searched, never the body."""
    end = head.find(b"\r\n\r\n")
    block = head if end < 0 else head[: end + 2]
    lower = block.lower()
    if lower.startswith(b"message-id:"):
        start = len(b"message-id:")
    else:
        found = lower.find(b"\r\nmessage-id:")
        if found < 0:
            return b""
        start = found + len(b"\r\nmessage-id:")
    value = bytearray()
    while True:
        line_end = block.find(b"\r\n", start)
        if line_end < 0:
            value += block[start:]
            break
        value += block[start:line_end]
        if block[line_end + 2 : line_end + 3] not in (b" ", b"\t"):
            break
        start = line_end + 2
    return bytes(value).strip()


async def serve(host: str, port: int, counts: Counts) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LeanSmtp(counts), host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        server.close()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.bench.lean_smtp",
        description="The bench's SMTP receiver: accepts every message (PIPELINING), keeps none,"
        " counts them; prints its counts as JSON when stopped.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525, help="0 picks a free port")
    args = parser.parse_args(argv)
    counts = Counts()
    try:
        asyncio.run(serve(args.host, args.port, counts))
    except OSError as error:
        print(f"lean smtp: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    report: dict[str, Any] = counts.as_dict()
    report["cpu_seconds"] = round(cpu_seconds(), 4)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
