"""The bench's lean SMTP receiver, run as the bench runs it (its own process), spoken to over
real sockets: pipelined sessions, counts, several connections, and a stock client."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.bench.lean_smtp import HEAD_LIMIT, message_id
from workers.bench.run import SinkProcess

FROM = "results@labo.example"


def mail(mid: str, body: bytes = b"hello\r\n") -> bytes:
    return f"Message-ID: <{mid}>\r\nFrom: {FROM}\r\n\r\n".encode() + body


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[SinkProcess]:
    with SinkProcess("lean", tmp_path / "receiver.log") as running:
        yield running


class Session:
    """A raw SMTP connection: write bytes as they are, read CRLF-ended reply lines."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.pending = b""
        greeting = self.lines(1)
        assert greeting[0].startswith("220 ")

    def write(self, data: bytes) -> None:
        self.socket.sendall(data)

    def lines(self, count: int) -> list[str]:
        """The next `count` reply lines (a multi-line reply counts each of its lines)."""
        while self.pending.count(b"\r\n") < count:
            chunk = self.socket.recv(65536)
            assert chunk, f"closed with {self.pending!r} read"
            self.pending += chunk
        parts = self.pending.split(b"\r\n")
        lines, rest = parts[:count], parts[count:]
        self.pending = b"\r\n".join(rest)
        return [line.decode() for line in lines]

    def replies(self, count: int) -> list[str]:
        """The next `count` replies, a multi-line one joined: its last line's code first."""
        found: list[str] = []
        current: list[str] = []
        while len(found) < count:
            [line] = self.lines(1)
            current.append(line)
            if line[3:4] != "-":
                found.append(" | ".join(current))
                current = []
        return found

    def close(self) -> None:
        self.socket.close()


def codes(replies: list[str]) -> list[str]:
    return [reply[:3] for reply in replies]


def test_ehlo_offers_pipelining_8bitmime_and_size(receiver: SinkProcess) -> None:
    with smtplib.SMTP("127.0.0.1", receiver.port, timeout=10) as client:
        code, _ = client.ehlo("lab.example")
        assert code == 250
        assert client.has_extn("pipelining")
        assert client.has_extn("8bitmime")
        assert int(client.esmtp_features["size"]) >= 100 * 1024 * 1024 // 4
        client.sendmail(FROM, ["dr1@bench.example"], mail("m1@labdispatch.test"))
    counts = receiver.stop()
    assert counts["messages"] == 1
    assert counts["distinct_pairs"] == 1


def test_a_pipelined_session_gets_every_reply_in_order(receiver: SinkProcess) -> None:
    """EHLO, then for three messages MAIL/RCPT.../DATA in one write each and the body with
    the next group in the same write (RFC 2920: DATA ends a group): the replies come in
    order, one per command, and each message is counted with its recipients."""
    session = Session(receiver.port)
    session.write(b"EHLO lab.example\r\n")
    assert session.replies(1)[0].endswith("250 ENHANCEDSTATUSCODES")
    session.write(
        b"MAIL FROM:<results@labo.example> SIZE=100 BODY=8BITMIME\r\n"
        b"RCPT TO:<dr1@bench.example>\r\n"
        b"RCPT TO:<dr2@bench.example>\r\n"
        b"DATA\r\n"
    )
    assert codes(session.replies(4)) == ["250", "250", "250", "354"]
    # Body of the first, then the whole second transaction, in one write.
    session.write(
        mail("a@labdispatch.test", b"line\r\n..dot-stuffed\r\n")
        + b".\r\n"
        + b"MAIL FROM:<results@labo.example>\r\nRCPT TO:<dr3@bench.example>\r\nDATA\r\n"
    )
    replies = session.replies(4)
    assert codes(replies) == ["250", "250", "250", "354"]
    assert "queued as 1" in replies[0]
    # The body ending, a transaction refused out of order, a reset, and the third one.
    session.write(
        mail("b@labdispatch.test")
        + b".\r\n"
        + b"RCPT TO:<dr9@bench.example>\r\n"  # no MAIL: refused, the session goes on
        + b"DATA\r\n"  # no RCPT: refused
        + b"MAIL FROM:<results@labo.example>\r\nMAIL FROM:<x@y>\r\nRSET\r\nNOOP\r\n"
        + b"MAIL FROM:<results@labo.example>\r\nRCPT TO:<dr1@bench.example>\r\nDATA\r\n"
    )
    replies = session.replies(10)
    assert codes(replies) == [
        *("250", "503", "503", "250", "503", "250", "250"),
        *("250", "250", "354"),
    ]
    assert "queued as 2" in replies[0]
    # Sent again: the same Message-ID to dr1 (a duplicate pair), then QUIT in the same write.
    session.write(mail("a@labdispatch.test") + b".\r\nQUIT\r\n")
    assert codes(session.replies(2)) == ["250", "221"]
    session.close()

    counts = receiver.stop()
    assert counts["connections"] == 1
    assert counts["messages"] == 3
    assert counts["recipients"] == 4  # dr1 + dr2, dr3, dr1
    assert counts["distinct_pairs"] == 3
    assert counts["duplicate_pairs"] == 1
    assert counts["cpu_seconds"] >= 0


def test_the_end_marker_split_across_reads_and_an_empty_message(receiver: SinkProcess) -> None:
    session = Session(receiver.port)
    session.write(b"EHLO lab.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<dr1@bench.example>\r\nDATA\r\n")
    assert codes(session.replies(4)) == ["250", "250", "250", "354"]
    body = mail("split@labdispatch.test", b"x" * 100_000 + b"\r\n") + b".\r\n"
    for at in range(0, len(body) - 4, 7_001):  # uneven pieces, then the marker split
        session.write(body[at : min(at + 7_001, len(body) - 4)])
    for piece in (body[-4:-2], body[-2:-1], body[-1:]):
        session.write(piece)
    [reply] = session.replies(1)
    assert reply.startswith("250 ")
    session.write(b"MAIL FROM:<a@b>\r\nRCPT TO:<dr2@bench.example>\r\nDATA\r\n")
    assert codes(session.replies(3)) == ["250", "250", "354"]
    for piece in (b".", b"\r", b"\n"):  # an empty message, its marker byte by byte
        session.write(piece)
    assert codes(session.replies(1)) == ["250"]
    session.close()
    counts = receiver.stop()
    assert counts["messages"] == 2
    assert counts["without_message_id"] == 1  # the empty one
    assert counts["distinct_pairs"] == 1
    assert counts["bytes"] > 100_000


def test_several_connections_at_once_are_counted_together(receiver: SinkProcess) -> None:
    sessions = [Session(receiver.port) for _ in range(5)]
    for number, session in enumerate(sessions):
        session.write(
            b"EHLO lab.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<dr%d@bench.example>\r\nDATA\r\n"
            % number
        )
    for session in sessions:
        assert codes(session.replies(4)) == ["250", "250", "250", "354"]
    # Interleaved: each connection sends its body and a second transaction, turn by turn.
    for number, session in enumerate(sessions):
        session.write(
            mail(f"c{number}-1@labdispatch.test")
            + b".\r\nMAIL FROM:<a@b>\r\nRCPT TO:<dr%d@bench.example>\r\nDATA\r\n" % number
        )
    for session in sessions:
        assert codes(session.replies(4)) == ["250", "250", "250", "354"]
    for number, session in enumerate(sessions):
        session.write(mail(f"c{number}-2@labdispatch.test") + b".\r\nQUIT\r\n")
    for session in sessions:
        assert codes(session.replies(2)) == ["250", "221"]
        session.close()
    counts = receiver.stop()
    assert counts["connections"] == 5
    assert counts["messages"] == 10
    assert counts["distinct_pairs"] == 10
    assert counts["duplicate_pairs"] == 0


def test_commands_out_of_place_are_refused_without_closing(receiver: SinkProcess) -> None:
    session = Session(receiver.port)
    session.write(b"MAIL FROM:<a@b>\r\nBOGUS\r\nEHLO x\r\nMAIL TO:<a@b>\r\nRCPT FROM:<a@b>\r\n")
    replies = session.replies(5)
    assert codes(replies) == ["503", "500", "250", "501", "503"]
    session.write(b"MAIL FROM:<a@b> SIZE=999999999999\r\nQUIT\r\n")
    assert codes(session.replies(2)) == ["552", "221"]
    session.close()
    assert receiver.stop()["messages"] == 0


def test_message_id_read_from_the_headers_only() -> None:
    assert message_id(b"Message-ID: <a@b>\r\nX: y\r\n\r\nbody") == b"<a@b>"
    assert message_id(b"From: x\r\nmessage-id:\r\n <folded@b>\r\n\r\n") == b"<folded@b>"
    assert message_id(b"From: x\r\n\r\nMessage-ID: <in-body@b>\r\n") == b""
    assert message_id(b"From: x\r\n" + b"X: " + b"y" * HEAD_LIMIT) == b""
