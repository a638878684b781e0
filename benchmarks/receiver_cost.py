"""CPU the bench's SMTP receivers take per message, measured from /proc on their process.

Sends N messages of a given size to `workers.bench.lean_smtp` (or `--sink aiosmtpd`:
`workers.smtp_sink`) over one connection, first as smtplib does (one command, one reply),
then pipelined (RFC 2920: MAIL, RCPT, DATA in one write, the body and the next group in the
next), and prints the receiver's CPU per message for each.

    python benchmarks/receiver_cost.py [--messages 3000] [--size 6000] [--sink lean]
"""

from __future__ import annotations

import argparse
import smtplib
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.bench.run import SINKS, SinkProcess, _cpu  # noqa: E402


def body(number: int, size: int) -> bytes:
    head = f"Message-ID: <m{number}@bench.example>\r\nFrom: a@b.example\r\n\r\n".encode()
    line = b"x" * 74 + b"\r\n"
    return head + line * max(1, size // len(line))


def with_smtplib(port: int, messages: int, size: int) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        for number in range(messages):
            client.sendmail("a@b.example", [f"dr{number % 50}@bench.example"], body(number, size))


def pipelined(port: int, messages: int, size: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        reader = connection.makefile("rb")
        reader.readline()
        connection.sendall(b"EHLO bench\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        group = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<dr%d@bench.example>\r\nDATA\r\n"
        connection.sendall(group % 0)
        for number in range(messages):
            for _ in range(3):
                reader.readline()  # MAIL, RCPT, DATA (354)
            last = number == messages - 1
            connection.sendall(
                body(number, size) + b".\r\n" + (b"QUIT\r\n" if last else group % (number + 1))
            )
            reader.readline()  # 250 queued
        reader.readline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=6000)
    parser.add_argument("--sink", choices=SINKS, default="lean")
    args = parser.parse_args()
    for label, drive in (
        ("smtplib, one command at a time", with_smtplib),
        ("pipelined", pipelined),
    ):
        with (
            tempfile.TemporaryDirectory() as folder,
            SinkProcess(args.sink, Path(folder) / "out.log", log=Path(folder) / "sink.tsv") as sink,
        ):
            start = _cpu(sink.pid)
            drive(sink.port, args.messages, args.size)
            used = _cpu(sink.pid) - start
        print(
            f"{args.sink} receiver, {label}: {used / args.messages * 1000:.3f} ms CPU a message"
            f" ({args.messages} messages of {args.size} bytes)"
        )


if __name__ == "__main__":
    main()
