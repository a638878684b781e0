"""SMTP send cost per envelope: one at a time against a pipelined batch, measured.

Sends runs of ~4 KB envelopes (the size of a sealed result) to a local relay over ONE
connection per run, and prints per envelope: the wall time, our CPU (client only), the
relay's CPU, and the round trips the relay saw (the reads it made). The runs:

- smtplib, as the transport sent before: MAIL, RCPT, DATA, each waiting for its reply;
- `SmtpTransport.send`, one envelope at a time (a batch of one: MAIL+RCPT+DATA pipelined
  when offered, then the data);
- `SmtpTransport.send_many` in batches, PIPELINING offered (one round trip per envelope);
- `SmtpTransport.send_many` in batches, PIPELINING not offered (one command at a time).

The relay is aiosmtpd in a subprocess (this file with `--serve`), so that its asyncio loop
and our client do not share one GIL; it counts and discards what it receives. It is a
Python server and costs far more CPU per envelope than our client: on a 2-core machine its
CPU, not ours, sets the wall time. Read the client CPU column for what pipelining saves us,
the round-trips column for what it saves the network.

    python benchmarks/smtp_rate.py [--count 2000] [--size 4] [--batch 100]
    python benchmarks/smtp_rate.py --relay 127.0.0.1:2525   # any running receiver instead
                                                            # (no relay CPU or reads then)
"""

from __future__ import annotations

import argparse
import base64
import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.transports.base import Envelope
from pipeline.transports.smtp import SmtpConfig, SmtpTransport

ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


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


# --- the relays, in their own process ----------------------------------------------------------


def serve() -> None:
    """Runs two relays (PIPELINING offered, and not) until stdin closes; a line on stdin
    asks for the counters: messages, bytes, reads (one per chunk the relays read)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    class Counter:
        messages = 0
        bytes = 0
        reads = 0

        def __init__(self, pipelining: bool) -> None:
            self.pipelining = pipelining

        async def handle_EHLO(
            self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
        ) -> list[str]:
            session.host_name = hostname
            if self.pipelining:
                responses.insert(-1, "250-PIPELINING")
            return responses

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages += 1
            self.bytes += len(envelope.original_content)
            return f"250 2.0.0 Ok: queued as B{self.messages}"

    counters = [Counter(pipelining=True), Counter(pipelining=False)]

    class CountingSMTP(SMTP):
        def data_received(self, data: bytes) -> None:
            self.event_handler.reads += 1
            super().data_received(data)

    class CountingController(Controller):
        def factory(self) -> SMTP:
            return CountingSMTP(self.handler, **self.SMTP_kwargs)

    controllers = []
    for counter in counters:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        controller = CountingController(counter, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append((controller, port))
    print(*(port for _, port in controllers), flush=True)
    for _ in sys.stdin:
        print(sum(c.messages for c in counters), sum(c.bytes for c in counters), end=" ")
        print(sum(c.reads for c in counters), flush=True)
    for controller, _ in controllers:
        controller.stop()


class RelayProcess:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        self.pipelining_port, self.plain_port = map(int, self.process.stdout.readline().split())

    def counters(self) -> tuple[int, int, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        messages, received, reads = map(int, self.process.stdout.readline().split())
        return messages, received, reads

    def cpu(self) -> float:
        """The relay process's CPU seconds so far (user + system)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


# --- the runs ----------------------------------------------------------------------------------


def envelopes(count: int, size: int) -> list[Envelope]:
    return [
        Envelope(
            message_id=f"<bench-{n}@labdispatch.test>",
            envelope_id=f"bench-{n}",
            sender="results@labo.example",
            recipient="sophie.martin@cabinet.example",
            data=sealed_message(n, size),
        )
        for n in range(count)
    ]


def with_smtplib(host: str, port: int, sent: list[Envelope], batch: int) -> None:
    """The transaction as the transport wrote it with smtplib: each command waits."""
    smtp = smtplib.SMTP(host, port, local_hostname="bench.test", timeout=30)
    try:
        smtp.ehlo()
        for envelope in sent:
            size = [f"SIZE={len(envelope.data)}"] if smtp.has_extn("size") else []
            assert smtp.mail(envelope.sender, size)[0] == 250
            assert smtp.rcpt(envelope.recipient)[0] == 250
            assert smtp.data(envelope.data)[0] == 250
    finally:
        smtp.quit()


def with_send(host: str, port: int, sent: list[Envelope], batch: int) -> None:
    with SmtpTransport(config(host, port)) as transport:
        for envelope in sent:
            result = transport.send(envelope)
            assert result.accepted, result.evidence


def with_send_many(host: str, port: int, sent: list[Envelope], batch: int) -> None:
    with SmtpTransport(config(host, port)) as transport:
        for start in range(0, len(sent), batch):
            for result in transport.send_many(sent[start : start + batch]):
                assert result.accepted, result.evidence


def config(host: str, port: int) -> SmtpConfig:
    return SmtpConfig(host, port, tls="none", local_hostname="bench.test")


Run = Callable[[str, int, list[Envelope], int], None]


def measure(
    relay: RelayProcess | None,
    label: str,
    address: tuple[str, int],
    run: Run,
    sent: list[Envelope],
    batch: int,
) -> None:
    """One run; the relay's CPU and reads, and a check that it received exactly what was
    sent, when the relay is ours."""
    before = relay.counters() if relay else (0, 0, 0)
    relay_cpu = relay.cpu() if relay else 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    run(*address, sent, batch)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    count = len(sent)
    relay_figures = f"{'-':>9} {'-':>8}"
    if relay is not None:
        relay_cpu = relay.cpu() - relay_cpu
        messages, received, reads = relay.counters()
        assert (messages - before[0], received - before[1]) == (
            count,
            sum(len(e.data) for e in sent),
        ), "the relay did not receive exactly what was sent"
        relay_figures = f"{relay_cpu / count * 1e3:>9.3f} {(reads - before[2]) / count:>8.2f}"
    print(
        f"{label:<40} {wall / count * 1e3:>8.3f} {cpu / count * 1e3:>9.3f} {relay_figures} "
        f"{count / wall:>8.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="envelopes per run")
    parser.add_argument("--size", type=int, default=4, help="envelope size in KB")
    parser.add_argument("--batch", type=int, default=100, help="envelopes per send_many")
    parser.add_argument("--relay", help="HOST:PORT of a running receiver to use instead")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return

    sent = envelopes(args.count, args.size * 1024)
    relay: RelayProcess | None = None
    if args.relay:
        host, _, port = args.relay.rpartition(":")
        pipelining = plain = (host.strip("[]"), int(port))
        what = f"the receiver at {args.relay} (PIPELINING as it offers)"
        runs: list[tuple[str, tuple[str, int], Run]] = [
            ("smtplib, one command at a time (before)", plain, with_smtplib),
            ("send(), one at a time", plain, with_send),
            (f"send_many({args.batch})", pipelining, with_send_many),
        ]
    else:
        relay = RelayProcess()
        pipelining = ("127.0.0.1", relay.pipelining_port)
        plain = ("127.0.0.1", relay.plain_port)
        what = "aiosmtpd relays in a subprocess on 127.0.0.1"
        runs = [
            ("smtplib, one command at a time (before)", plain, with_smtplib),
            ("send(), PIPELINING not offered", plain, with_send),
            ("send(), PIPELINING offered", pipelining, with_send),
            (f"send_many({args.batch}), PIPELINING not offered", plain, with_send_many),
            (f"send_many({args.batch}), PIPELINING offered", pipelining, with_send_many),
        ]
    try:
        print(
            f"{what}; {args.count} envelopes of ~{args.size} KB per run, one connection per "
            "run; figures per envelope"
        )
        print(
            f"{'run':<40} {'wall ms':>8} {'our CPU':>9} {'relay CPU':>9} {'reads':>8} {'env/s':>8}"
        )
        with_send_many(*pipelining, sent[:50], args.batch)  # warm up both sides
        for label, address, run in runs:
            measure(relay, label, address, run, sent, args.batch)
    finally:
        if relay is not None:
            relay.stop()


if __name__ == "__main__":
    main()
