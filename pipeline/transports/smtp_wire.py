"""The SMTP bytes smtplib cannot write: commands queued and written together (PIPELINING,
RFC 2920), replies read back in order, the message data dot-stuffed.

smtplib writes one command and waits for its reply, so each envelope costs three or four
round trips to the relay, each one a wake-up of both sides. `SmtpWire` works on the socket
smtplib has already opened, secured (STARTTLS or implicit TLS) and authenticated: it only
queues commands, writes what is queued in one piece when a reply is wanted, and reads the
replies. What the commands mean, and what a reply decides, is the transport's business
(`smtp.py`).

A relay is not trusted to behave: a reply is bounded in size and must look like SMTP
(`NNN text`), or the connection is given up as unreadable. Every failure under it is an
`OSError`, as socket errors are: the transport turns them into a transient outcome.
"""

from __future__ import annotations

import socket

#: The longest reply we read (all its lines together). RFC 5321 bounds a reply line at 512
#: octets; real relays send a few lines of EHLO keywords at most.
MAX_REPLY_BYTES = 16 * 1024
_READ_SIZE = 64 * 1024

CRLF = b"\r\n"


class RelayClosedConnection(ConnectionError):
    """The relay closed the connection where a reply was due."""

    def __init__(self) -> None:
        super().__init__("connection closed by the relay")


class UnreadableReply(OSError):
    """The relay answered something that is not an SMTP reply, or one too long to be one."""


class SmtpWire:
    """Commands out, replies in, on one connected socket; not thread-safe.

    `command` and `message` only queue; `reply` writes everything queued in one `sendall`
    and then reads exactly one reply. So a caller pipelines by queueing several commands
    before reading their replies, and speaks one command at a time by reading after each.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._queued: list[bytes] = []
        self._buffer = bytearray()

    def command(self, line: bytes) -> None:
        """Queues one command line, given without its CRLF."""
        self._queued.append(line + CRLF)

    def message(self, data: bytes) -> None:
        """Queues the message data after a 354: dot-stuffed, ended by CRLF.CRLF."""
        self._queued.append(dot_stuffed(data))

    def flush(self) -> None:
        if self._queued:
            queued, self._queued = self._queued, []
            self.sock.sendall(queued[0] if len(queued) == 1 else b"".join(queued))

    def reply(self) -> tuple[int, bytes]:
        """Writes what is queued, then reads the next reply: its code and its text (the
        lines of a multi-line reply joined by LF, as smtplib gives them)."""
        self.flush()
        texts: list[bytes] = []
        size = 0
        while True:
            line = self._line()
            size += len(line)
            if size > MAX_REPLY_BYTES:
                raise UnreadableReply(f"the relay's reply is longer than {MAX_REPLY_BYTES} bytes")
            code = line[:3]
            separator = line[3:4]
            if not (len(code) == 3 and code.isdigit() and separator in (b"", b" ", b"-")):
                raise UnreadableReply("the relay's reply is not an SMTP reply (NNN text)")
            texts.append(line[4:].strip(b" \t"))
            if separator != b"-":
                return int(code), b"\n".join(texts)

    def _line(self) -> bytes:
        """The next line, without its line end (CRLF, or a bare LF from a lax relay)."""
        buffer = self._buffer
        searched = 0
        while True:
            end = buffer.find(b"\n", searched)
            if end >= 0:
                line = bytes(buffer[:end]).rstrip(b"\r")
                del buffer[: end + 1]
                return line
            if len(buffer) > MAX_REPLY_BYTES:
                raise UnreadableReply(f"the relay's reply is longer than {MAX_REPLY_BYTES} bytes")
            searched = len(buffer)
            chunk = self.sock.recv(_READ_SIZE)
            if not chunk:
                raise RelayClosedConnection()
            buffer += chunk


def dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, as smtplib does it: a dot that starts a line is doubled,
    the data ends with CRLF (added if missing) and then the lone dot that ends it."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\n.", b"\n..")
    if not data.endswith(CRLF):
        data += CRLF
    return data + b"." + CRLF
