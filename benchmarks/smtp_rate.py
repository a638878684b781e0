"""SMTP send rate: envelopes per second over ONE reused connection to a local relay, measured.

Sends a run of ~4 KB envelopes (a typical sealed result) and a run of ~200 KB envelopes (a
result with an attached report) through `SmtpTransport` to an aiosmtpd relay on 127.0.0.1,
and prints envelopes/s and MB/s for each, the share of one core our side used (the rest of
the wall time is spent waiting on the relay), and the connections the relay saw.

The relay runs in a subprocess (this same file with `--serve`) so that its asyncio loop
and our client do not share one GIL: in-process, the figure would measure their contention.
The relay counts and discards what it receives; it is aiosmtpd, a Python server, so the
figure is a floor for what a C relay (Postfix) on the same host would take.

    python benchmarks/smtp_rate.py [--small 2000] [--large 500]
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.transports.base import Envelope
from pipeline.transports.smtp import SmtpConfig, SmtpTransport

ROOT = Path(__file__).resolve().parents[1]


def sealed_message(number: int, size: int) -> bytes:
    """Headers and a base64 body in 76-character CRLF lines: the shape of S/MIME output."""
    headers = (
        f"Message-ID: <bench-{number}@labdispatch.test>\r\n"
        "From: results@labo.example\r\n"
        "To: sophie.martin@cabinet.example\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode("ascii")
    body = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return headers + body


# --- the relay, in its own process -------------------------------------------------------------


def serve() -> None:
    """Runs the relay until stdin closes, then prints what it received."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    class Counter:
        connections = 0
        messages = 0
        bytes = 0

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages += 1
            self.bytes += len(envelope.original_content)
            return f"250 2.0.0 Ok: queued as B{self.messages}"

    class CountingController(Controller):
        def factory(self) -> SMTP:
            counter.connections += 1
            return SMTP(self.handler, **self.SMTP_kwargs)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    counter = Counter()
    controller = CountingController(counter, hostname="127.0.0.1", port=port)
    controller.start()
    counter.connections = 0  # the controller's own start-up probe
    print(port, flush=True)
    sys.stdin.read()
    controller.stop()
    print(counter.connections, counter.messages, counter.bytes, flush=True)


# --- the client ---------------------------------------------------------------------------------


def run(transport: SmtpTransport, label: str, count: int, size: int) -> tuple[int, int]:
    envelopes = [
        Envelope(
            message_id=f"<bench-{size}-{n}@labdispatch.test>",
            envelope_id=f"bench-{size}-{n}",
            sender="results@labo.example",
            recipient="sophie.martin@cabinet.example",
            data=sealed_message(n, size),
        )
        for n in range(count)
    ]
    total = sum(len(e.data) for e in envelopes)
    start, cpu_start = time.perf_counter(), time.process_time()
    for sent in envelopes:
        result = transport.send(sent)
        assert result.accepted, result.evidence
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(
        f"{label:<20} {count:>6} {total / count / 1024:>7.1f} KB {elapsed:>7.2f} s "
        f"{count / elapsed:>7.0f} env/s {total / elapsed / 1e6:>6.1f} MB/s {cpu / elapsed:>8.0%}"
    )
    return count, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000, help="number of ~4 KB envelopes")
    parser.add_argument("--large", type=int, default=500, help="number of ~200 KB envelopes")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return

    relay = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert relay.stdin is not None and relay.stdout is not None
    try:
        port = int(relay.stdout.readline())
        config = SmtpConfig("127.0.0.1", port, tls="none", local_hostname="bench.test")
        sent_messages = sent_bytes = 0
        print(f"aiosmtpd relay in a subprocess on 127.0.0.1:{port}, one SmtpTransport")
        print(
            f"{'run':<20} {'count':>6} {'size':>10} {'time':>9} {'rate':>13} "
            f"{'throughput':>11} {'our CPU':>8}"
        )
        with SmtpTransport(config) as transport:
            for label, count, size in (
                ("~4 KB envelopes", args.small, 4 * 1024),
                ("~200 KB envelopes", args.large, 200 * 1024),
            ):
                messages, size_sent = run(transport, label, count, size)
                sent_messages += messages
                sent_bytes += size_sent
        relay.stdin.close()
        connections, messages, received = map(int, relay.stdout.readline().split())
    finally:
        relay.wait(timeout=30)
    print(
        f"relay saw {connections} connection(s), {messages} messages, {received} bytes "
        f"(sent {sent_messages} messages, {sent_bytes} bytes)"
    )
    assert (messages, received) == (sent_messages, sent_bytes)


if __name__ == "__main__":
    main()
