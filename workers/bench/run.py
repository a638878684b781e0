"""The end-to-end benchmark: synthetic results over MLLP through the whole stack.

What runs is what an installation runs: `labdispatch mllp serve` and `labdispatch worker`
as processes, a real Redis broker, a PostgreSQL ledger (a scratch database, dropped after),
and a real SMTP receiver in its own process (`workers.bench.lean_smtp` by default, or
`workers.smtp_sink`). The bench process only generates results, pushes them as a laboratory
would (a few connections, a window of unanswered messages each; as fast as the ACKs come,
or open loop at a fixed rate, `openloop`), and watches the ledger until everything is
delivered.

Figures are measured, never estimated: throughput from the first message sent to the last
delivery recorded; ACK latency per message at the client (write → ACK read); ingest to
delivery from the ledger (`accepted_at - received_at`, both stamped by our processes);
RSS and CPU from /proc (PostgreSQL: the backends of the run's database, told apart by
their process title); the floor per result measured in this process before the load
(`floor`) and the ratio of the service's CPU per result to it; PostgreSQL WAL and table
growth per result (`pgwrites`); and, in the same run on the same broker, the
one-task-per-item Celery no-op rate as the yardstick of what the broker alone costs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.closing import Closing
from pipeline.db import open_database
from pipeline.errors import ConfigurationError
from pipeline.ledger.models import Delivery, Message
from pipeline.ledger.states import ACCEPTED
from pipeline.settings import PREFIX, Settings
from workers.bench import pgwrites
from workers.bench.floor import Floor, measure_floor
from workers.bench.openloop import LATE_AFTER, Offer, push_at_rate
from workers.bench.progress import Progress, progress_line
from workers.bench.scratch import postgres_database
from workers.bench.synthetic import (
    SMALL,
    SyntheticResult,
    bench_pki,
    bench_recipients,
    generate_labelled_results,
)
from workers.broker import stop_embedded
from workers.mllp.client import push
from workers.stack import Stack, StackError, has_open_work

LABORATORY = "LABO-BENCH"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
_LISTENING = re.compile(r"listening on ([^:]+):(\d+)")


@dataclass(frozen=True)
class BenchOptions:
    messages: int = 10_000
    workers: int = 2
    recipients: int = 200
    connections: int = 16
    window: int = 2
    seed: int = 1
    pdf_ratio: float = 0.05
    batch_size: int = 100
    #: Admin URL of the PostgreSQL server that gets the scratch ledger; None: SQLite.
    postgres_admin_url: str | None = DEFAULT_ADMIN_URL
    broker_url: str = ""  # empty: the embedded Redis server
    noop_tasks: int = 5_000
    workdir: Path | None = None
    timeout: float = 3600.0
    #: Sample the listener and the worker pool with py-spy while results flow, and print
    #: where their time goes.
    profile: bool = False
    #: Open loop: results offered per second by the clock; None: closed loop (the next
    #: message as soon as an ACK frees the window).
    rate: float | None = None
    #: ~3 KB results (21 to 31 observations, no PDF) instead of the mix.
    small: bool = False
    #: The SMTP receiver: "lean" (`workers.bench.lean_smtp`) or "aiosmtpd" (`smtp_sink`).
    sink: str = "lean"
    #: A progress line on stderr; None: when stderr is a terminal.
    progress: bool | None = None


@dataclass(frozen=True)
class Mix:
    """What the run pushes, counted from the generator before the load."""

    results: int
    envelopes: int  # one per recipient named
    mean_bytes: float
    with_pdf: int
    small: bool

    @property
    def pdf_share(self) -> float:
        return self.with_pdf / self.results if self.results else 0.0

    @property
    def envelopes_per_result(self) -> float:
        return self.envelopes / self.results if self.results else 0.0

    def line(self) -> str:
        kind = "small (~3 KB, no PDF)" if self.small else "mix"
        return (
            f"input                {kind}: {self.results} results, "
            f"{self.mean_bytes / 1024:.1f} KB mean, {self.pdf_share * 100:.1f} % with a PDF, "
            f"{self.envelopes_per_result:.2f} recipients each ({self.envelopes} envelopes)"
        )


def describe(results: Iterable[SyntheticResult], small: bool) -> Mix:
    count = envelopes = size = pdf = 0
    for result in results:
        count += 1
        envelopes += len(result.recipients)
        size += len(result.data)
        pdf += result.has_pdf
    return Mix(count, envelopes, size / count if count else 0.0, pdf, small)


#: Processes whose CPU is not the service's: the laboratory (the bench pushing) and the
#: relay (another machine in production). Shown, but apart from the end-to-end figure.
CLIENT = "bench (client)"
RECEIVER = "smtp receiver"


@dataclass
class BenchResult:
    messages: int
    envelopes: int
    elapsed: float  # first message sent → last delivery recorded
    push_elapsed: float  # first message sent → last ACK read
    ack_latencies: list[float]
    delivery_latencies: list[float]
    ack_codes: dict[str, int]
    peak_rss: dict[str, int]  # process → kB
    worker_rss_early: int  # kB, pool processes summed, at 10 % of the deliveries
    worker_rss_late: int  # kB, at 90 %
    noop_rate: float
    states: dict[str, int] = field(default_factory=dict)
    database: str = ""
    broker: str = ""
    profile: list[str] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    mix: Mix | None = None
    #: Open loop only: the schedule kept, and ACK latency from each message's slot.
    offer: Offer | None = None
    slot_latencies: list[float] = field(default_factory=list)
    floor: Floor | None = None
    postgres_writes: pgwrites.Writes | None = None
    sink: str = "lean"
    receiver: dict[str, float] = field(default_factory=dict)

    def service_cpu(self) -> float:
        """CPU seconds of the service: listener, workers, beat, broker, PostgreSQL."""
        return sum(
            seconds for name, seconds in self.cpu_seconds.items() if name not in (CLIENT, RECEIVER)
        )

    def lines(self) -> list[str]:
        ack = _percentiles(self.ack_latencies)
        delivery = _percentiles(self.delivery_latencies)
        rss = ", ".join(f"{name} {kb / 1024:.0f} MB" for name, kb in sorted(self.peak_rss.items()))
        growth = (
            f"{(self.worker_rss_late - self.worker_rss_early) / 1024:+.1f} MB"
            if self.worker_rss_early
            else "n/a"
        )
        if self.offer is not None:
            offer = self.offer
            slot = _percentiles(self.slot_latencies)
            load = [
                f"offered load         open loop at {offer.rate:g} results/s: achieved "
                f"{offer.achieved_rate:.1f}/s ({'yes' if offer.achieved else 'NO'}); "
                f"{offer.late()} of {offer.sent} sends late (> {LATE_AFTER * 1000:.0f} ms "
                f"behind their slot), worst {offer.worst * 1000:.0f} ms",
                f"ACK latency          p50 {ack[0] * 1000:.1f} ms, p99 {ack[1] * 1000:.1f} ms "
                f"from the write; p50 {slot[0] * 1000:.1f} ms, p99 {slot[1] * 1000:.1f} ms "
                "from the slot",
            ]
        else:
            load = [
                "offered load         closed loop (the next message when an ACK frees the window)",
                f"ACK latency          p50 {ack[0] * 1000:.1f} ms, p99 {ack[1] * 1000:.1f} ms",
            ]
        per_result = self.service_cpu() / self.messages * 1000
        cpu_line = (
            f"CPU per result       {per_result:.2f} ms end to end (listener, workers, beat, "
            "broker, PostgreSQL; receiver and client apart)"
        )
        if self.floor is not None and self.floor.total > 0:
            cpu_line += f" = {per_result / self.floor.total:.1f} x the floor"
        receiver_cpu = self.cpu_seconds.get(RECEIVER, 0.0)
        receiver = (
            f"SMTP receiver        {self.sink}: {receiver_cpu / self.messages * 1000:.3f} ms CPU "
            "per result"
        )
        if self.receiver:
            got = self.receiver
            receiver += (
                f"; {got.get('messages', 0):.0f} messages, {got.get('recipients', 0):.0f} RCPT, "
                f"{got.get('distinct_pairs', 0):.0f} distinct (Message-ID, RCPT), "
                f"{got.get('duplicate_pairs', 0):.0f} sent again"
            )
        return [
            f"ledger {self.database}, broker {self.broker}",
            *([self.mix.line()] if self.mix is not None else []),
            *load,
            f"results              {self.messages} in {self.elapsed:.1f} s: "
            f"{self.messages / self.elapsed:.0f} results/s end to end",
            f"envelopes            {self.envelopes}: {self.envelopes / self.elapsed:.0f} "
            "envelopes/s end to end",
            f"intake               all ACKed in {self.push_elapsed:.1f} s "
            f"({self.messages / self.push_elapsed:.0f} messages/s); ACK codes "
            + ", ".join(f"{c} {n}" for c, n in sorted(self.ack_codes.items())),
            f"ingest → delivery    p50 {delivery[0]:.2f} s, p99 {delivery[1]:.2f} s",
            *([self.floor.line()] if self.floor is not None else []),
            cpu_line,
            receiver,
            *([self.postgres_writes.line()] if self.postgres_writes is not None else []),
            f"peak RSS             {rss}",
            "CPU seconds          "
            + ", ".join(
                f"{name} {seconds:.1f}"
                for name, seconds in sorted(self.cpu_seconds.items(), key=lambda i: -i[1])
            )
            + f" (of {2 * self.elapsed:.0f} core-seconds on 2 cores)",
            f"worker RSS           {self.worker_rss_early / 1024:.0f} MB at 10 % → "
            f"{self.worker_rss_late / 1024:.0f} MB at 90 % ({growth})",
            "deliveries by state  " + ", ".join(f"{s} {n}" for s, n in sorted(self.states.items())),
            f"Celery no-op         {self.noop_rate:.0f} tasks/s (one task per item, same broker)",
            *self.profile,
        ]


class Sent:
    """Counts the results taken from the generator (the progress line's "sent")."""

    def __init__(self, results: Iterable[bytes]) -> None:
        self.count = 0
        self._results = results

    def __iter__(self) -> Iterator[bytes]:
        for data in self._results:
            self.count += 1
            yield data


def run_bench(options: BenchOptions) -> BenchResult:
    if options.messages < 1 or options.workers < 1:
        raise ConfigurationError("--messages and --workers must be at least 1")
    if options.rate is not None and not options.rate > 0:
        raise ConfigurationError(f"--rate must be above 0 results per second, not {options.rate}")
    if options.sink not in SINKS:
        raise ConfigurationError(f"--sink must be one of {', '.join(SINKS)}, not {options.sink!r}")
    with contextlib.ExitStack() as cleanup:
        workdir = options.workdir or Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="labdispatch-bench-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        if options.postgres_admin_url:
            database_url = cleanup.enter_context(postgres_database(options.postgres_admin_url))
        else:
            database_url = f"sqlite:///{workdir / 'var' / 'labdispatch.db'}"
        key_file = workdir / "storage.key"
        key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        key_file.chmod(0o600)
        pki = workdir / "pki"
        bench_pki(pki, options.recipients, LABORATORY)
        env = {name: value for name, value in os.environ.items() if not name.startswith(PREFIX)}
        env |= {
            "LABDISPATCH_VAR_DIR": str(workdir / "var"),
            "LABDISPATCH_DATABASE_URL": database_url,
            "LABDISPATCH_STORAGE_KEY_FILE": str(key_file),
            "LABDISPATCH_SIGNING_CERT": str(pki / "lab.crt"),
            "LABDISPATCH_SIGNING_KEY": str(pki / "lab.key"),
            "LABDISPATCH_MAIL_FROM": "results@labo-bench.example",
            "LABDISPATCH_SMTP_HOST": "127.0.0.1",
            "LABDISPATCH_SMTP_TLS": "none",
            "LABDISPATCH_BATCH_SIZE": str(options.batch_size),
            "LABDISPATCH_RECONCILE_INTERVAL": "10",
            "LABDISPATCH_REQUEUE_AFTER": "60",
        }
        if options.broker_url:
            env["LABDISPATCH_BROKER_URL"] = options.broker_url
        os.environ.clear()
        os.environ.update(env)
        settings = Settings.from_env()
        sessions = open_database(settings)
        cleanup.callback(_dispose, sessions)
        if not options.broker_url:
            cleanup.callback(stop_embedded, settings)
        from workers.cli import main  # the command line imports this module

        if main(["directory", "import", str(pki / "directory.csv")]) != 0:
            raise ConfigurationError("importing the benchmark directory failed")

        people = bench_recipients(options.recipients)
        rpps = [r.rpps for r in people]

        def results() -> Iterator[SyntheticResult]:
            return generate_labelled_results(
                options.messages,
                options.seed,
                LABORATORY,
                rpps,
                0.0 if options.small else options.pdf_ratio,
                SMALL if options.small else (10, 30),
            )

        mix = describe(results(), options.small)
        # The floor, in this process, before anything else runs.
        floor = measure_floor(
            results(),
            pki,
            people,
            pdf_share=mix.pdf_share,
            envelopes_per_result=mix.envelopes_per_result,
        )

        sink = cleanup.enter_context(
            SinkProcess(options.sink, workdir / "sink.log", log=workdir / "sink.tsv")
        )
        os.environ["LABDISPATCH_SMTP_PORT"] = str(sink.port)
        stack = cleanup.enter_context(
            Stack(env={"LABDISPATCH_SMTP_PORT": str(sink.port)}, log_dir=workdir / "logs")
        )
        port = stack.start_listener()
        stack.start_worker(concurrency=options.workers)
        ready = time.monotonic() + 60
        while len(stack.worker_children("worker")) < options.workers:
            stack.check_running()
            if time.monotonic() > ready:
                raise StackError("the worker did not start its pool in 60 s")
            time.sleep(0.05)

        engine = sessions.kw.get("bind")
        postgres = engine if options.postgres_admin_url and isinstance(engine, Engine) else None
        before = pgwrites.snapshot(postgres) if postgres is not None else None
        sent = Sent(result.data for result in results())
        sampler = RssSampler(stack, sink, sessions, settings, database=_database_name(engine))
        sampler.expected = mix.envelopes  # one delivery per recipient named, all routable
        sampler.progress = Progress(enabled=options.progress)
        sampler.sent = sent
        sampler.mix = mix
        sampler.start()
        profiler = Profiler(stack, workdir / "profile") if options.profile else None
        started = time.monotonic()
        offered: Offer | None = None
        slot_latencies: list[float] = []
        if options.rate is None:
            report = asyncio.run(
                push(
                    "127.0.0.1",
                    port,
                    sent,
                    connections=options.connections,
                    window=options.window,
                )
            )
            latencies, codes = report.latencies, dict(report.codes)
        else:
            open_report = asyncio.run(
                push_at_rate(
                    "127.0.0.1",
                    port,
                    sent,
                    options.rate,
                    connections=options.connections,
                    window=options.window,
                )
            )
            latencies, codes = open_report.latencies, dict(open_report.codes)
            offered, slot_latencies = open_report.offer, open_report.from_slot
        pushed = time.monotonic()
        deadline = started + options.timeout
        while True:
            stack.check_running()
            with sessions() as session:
                if not has_open_work(session):
                    break
            if time.monotonic() > deadline:
                raise StackError(f"not settled after {options.timeout:.0f} s")
            time.sleep(0.5)
        finished = time.monotonic()
        sampler.stop()
        profile = profiler.stop() if profiler is not None else []
        after = pgwrites.snapshot(postgres) if postgres is not None else None
        with sessions() as session:
            states = {
                state: count
                for state, count in session.execute(
                    select(Delivery.state, func.count()).group_by(Delivery.state)
                ).all()
            }
            delivery_latencies = [
                (accepted - received).total_seconds()
                for accepted, received in session.execute(
                    select(Delivery.accepted_at, Message.received_at)
                    .join(Message, Delivery.message_id == Message.id)
                    .where(Delivery.accepted_at.is_not(None))
                ).all()
                if accepted is not None
            ]
        peak = sampler.peaks()
        cpu = sampler.cpu_seconds()
        stack.close()
        receiver = sink.stop()
        written = (
            pgwrites.writes(postgres, before, after, options.messages)
            if postgres is not None and before is not None and after is not None
            else None
        )

        noop_rate = measure_noop_rate(options.noop_tasks, options.workers, workdir)
        return BenchResult(
            messages=options.messages,
            envelopes=len(delivery_latencies),
            elapsed=finished - started,
            push_elapsed=pushed - started,
            ack_latencies=latencies,
            delivery_latencies=delivery_latencies,
            ack_codes=codes,
            peak_rss=peak,
            cpu_seconds=cpu,
            worker_rss_early=sampler.early,
            worker_rss_late=sampler.late,
            noop_rate=noop_rate,
            states=states,
            database="PostgreSQL (scratch database)" if options.postgres_admin_url else "SQLite",
            broker="Redis "
            + ("(embedded)" if not options.broker_url else "(LABDISPATCH_BROKER_URL)"),
            profile=profile,
            mix=mix,
            offer=offered,
            slot_latencies=slot_latencies,
            floor=floor,
            postgres_writes=written,
            sink=options.sink,
            receiver=receiver,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _database_name(engine: object) -> str:
    """The run's database name on PostgreSQL ("" otherwise): its backends carry it in their
    process title, which is how their CPU is told from other databases'."""
    if isinstance(engine, Engine) and engine.dialect.name == "postgresql":
        return engine.url.database or ""
    return ""


def measure_noop_rate(tasks: int, concurrency: int, workdir: Path) -> float:
    """One no-op task per item through the same broker and a worker of the same size,
    from the first publish to the queue drained (worker start-up excluded): the per-task
    cost the stages' batching is there to amortise."""
    from workers.celery_app import BENCH_QUEUE, app
    from workers.tasks import noop

    def drained() -> bool:
        return not client.llen(BENCH_QUEUE) and not client.hlen("unacked")

    with app.connection_for_write() as connection, Stack(env={}, log_dir=workdir / "logs") as stack:
        client = connection.default_channel.client
        client.delete(BENCH_QUEUE)
        stack.start(
            "noop-worker",
            *("worker", "--queues", BENCH_QUEUE, "--no-beat", "--"),
            *("--concurrency", str(concurrency), "--loglevel", "WARNING"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        )
        noop.apply_async(args=[0])  # warm-up: the worker is ready once this is gone
        while not drained():
            stack.check_running()
            time.sleep(0.02)
        producer = app.amqp.producer_pool.acquire(block=True)
        started = time.monotonic()
        try:
            for item in range(tasks):
                noop.apply_async(args=[item], producer=producer)
        finally:
            producer.release()
        while not drained():
            stack.check_running()
            time.sleep(0.01)
        elapsed = time.monotonic() - started
    return tasks / elapsed


class Profiler:
    """py-spy sampling the listener and each worker pool process until stopped."""

    def __init__(self, stack: Stack, folder: Path) -> None:
        executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(executable).exists():
            raise ConfigurationError("--profile needs py-spy: pip install py-spy")
        folder.mkdir(parents=True, exist_ok=True)
        targets = {"mllp": stack.processes["mllp"].pid}
        for index, pid in enumerate(stack.worker_children("worker"), start=1):
            targets[f"worker-{index}"] = pid
        self.outputs = {name: folder / f"{name}.raw" for name in targets}
        self.processes = [
            subprocess.Popen(
                [
                    executable,
                    *("record", "--pid", str(pid), "--format", "raw", "--nonblocking"),
                    *("--rate", "50", "-o", str(self.outputs[name])),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in targets.items()
        ]

    def stop(self) -> list[str]:
        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        lines = []
        for name, path in self.outputs.items():
            lines += summarise_profile(name, path)
        return lines


def summarise_profile(name: str, path: Path, top: int = 12) -> list[str]:
    """Where one process spent its samples: our functions by inclusive share, and the
    leaf functions (self time) wherever they are."""
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text()
    except OSError:
        return [f"profile {name}: no samples"]
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        leaves[_short(frames[-1])] += samples
        for frame in {f for f in frames if "pipeline/" in f or "workers/" in f}:
            inclusive[_short(frame)] += samples
    if not total:
        return [f"profile {name}: no samples"]
    lines = [f"profile {name} ({total} samples): ours, inclusive"]
    lines += [f"  {n * 100 / total:5.1f}% {frame}" for frame, n in inclusive.most_common(top)]
    lines.append(f"profile {name}: leaf functions")
    lines += [f"  {n * 100 / total:5.1f}% {frame}" for frame, n in leaves.most_common(top)]
    return lines


def _short(frame: str) -> str:
    """`func (path/to/module.py:12)` → `func (module.py)`: lines differ, functions don't."""
    function, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":")[0]
    return f"{function} ({module})"


#: The bench's SMTP receivers: the lean one (default: little CPU, nothing kept) and the
#: aiosmtpd one of the demo and the correctness tests (every message logged).
SINKS = ("lean", "aiosmtpd")


class SinkProcess(Closing):
    """The SMTP receiver in its own process, so its CPU shows apart from ours.

    `kind` "lean" is `workers.bench.lean_smtp` (its counts come back from `stop`),
    "aiosmtpd" is `workers.smtp_sink` logging each message to `log`."""

    def __init__(self, kind: str, output: Path, log: Path | None = None) -> None:
        if kind not in SINKS:
            raise ConfigurationError(f"unknown SMTP receiver {kind!r}: choose one of {SINKS}")
        self.kind = kind
        if kind == "lean":
            command = [sys.executable, "-m", "workers.bench.lean_smtp", "--port", "0"]
        else:
            command = [sys.executable, "-m", "workers.smtp_sink", "--port", "0"]
            if log is not None:
                command += ["--log", str(log)]
        self._output = output.open("wb")
        self.counts: dict[str, float] = {}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._output, start_new_session=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        match = _LISTENING.search(line)
        if match is None:
            self.close()
            raise StackError(f"the SMTP receiver did not start; see {output}")
        self.port = int(match.group(2))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> dict[str, float]:
        """Stop the receiver; the lean one's counts (messages, recipients, distinct and
        duplicate (Message-ID, RCPT) pairs, its CPU seconds), {} for aiosmtpd."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                output, _ = self.process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                output, _ = self.process.communicate()
            if self.kind == "lean" and output.strip():
                with contextlib.suppress(ValueError):
                    self.counts = json.loads(output.strip().splitlines()[-1])
        return self.counts

    def close(self) -> None:
        self.stop()
        self._output.close()


class RssSampler:
    """Samples every process's RSS every two seconds, and the pool's RSS at 10 % and 90 %
    of the deliveries (to show whether workers grow over a run); keeps the CPU of the
    PostgreSQL backends of the run's database (they come and go); shows progress."""

    def __init__(
        self,
        stack: Stack,
        sink: SinkProcess,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        database: str = "",
    ) -> None:
        self.stack = stack
        self.sink = sink
        self.sessions = sessions
        self.settings = settings
        self.database = database
        self.expected: int | None = None
        self.early = 0
        self.late = 0
        self.progress = Progress(enabled=False)
        self.sent: Sent | None = None
        self.mix: Mix | None = None
        self._peaks: dict[str, int] = {}
        self._cpu_start: dict[str, float] = {}
        self._postgres_start: dict[int, float] = {}
        self._postgres_last: dict[int, float] = {}
        self._started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._cpu_start = {name: _cpu(pid) for name, pid in self._processes().items()}
        self._postgres_start = dict(self._postgres())
        self._postgres_last = dict(self._postgres_start)
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.progress.end()
        # A run shorter than two samples: the pool as it is at the end stands in.
        pool = self._sample()
        self.early = self.early or pool
        self.late = self.late or pool

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used since the sampler started, per process; PostgreSQL as the backends of
        the run's database, and the server's own processes (shared with any other database
        on the server)."""
        now = {name: _cpu(pid) for name, pid in self._processes().items()}
        found = {
            name: seconds - self._cpu_start.get(name, 0.0)
            for name, seconds in now.items()
            if seconds
        }
        self._sample_postgres()
        backends = shared = 0.0
        for pid, seconds in self._postgres_last.items():
            used = seconds - self._postgres_start.get(pid, 0.0)
            if pid > 0:
                backends += used
            else:
                shared += used
        if self.database:
            found["postgresql (the run's backends)"] = backends
            found["postgresql (server processes, shared)"] = shared
        return found

    def peaks(self) -> dict[str, int]:
        self._sample()
        return dict(self._peaks)

    def _processes(self) -> dict[str, int]:
        found = {CLIENT: os.getpid(), RECEIVER: self.sink.pid}
        for name, process in self.stack.processes.items():
            found[f"{name} (main)" if name == "worker" else name] = process.pid
        for index, child in enumerate(self.stack.worker_children("worker"), start=1):
            found[f"worker pool {index}"] = child
        pid_file = self.settings.broker_dir / "redis.pid"
        with contextlib.suppress(OSError, ValueError):
            found["redis (embedded)"] = int(pid_file.read_text().strip())
        return found

    def _postgres(self) -> dict[int, float]:
        """CPU seconds of the run's backends by pid, and of the server's own processes
        under negative pids; other databases' backends left out."""
        if not self.database:
            return {}
        return postgres_cpu(self.database)

    def _sample_postgres(self) -> None:
        for pid, seconds in self._postgres().items():
            self._postgres_last[pid] = max(seconds, self._postgres_last.get(pid, 0.0))

    def _sample(self) -> int:
        pool = 0
        for name, pid in self._processes().items():
            kb = _status_kb(pid, "VmHWM")
            if kb:
                self._peaks[name] = max(self._peaks.get(name, 0), kb)
            if name.startswith("worker pool"):
                pool += _status_kb(pid, "VmRSS")
        return pool

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            pool = self._sample()
            self._sample_postgres()
            if self.expected:
                done = _count_deliveries(self.sessions, finished=True)
                if not self.early and done >= 0.1 * self.expected:
                    self.early = pool
                if not self.late and done >= 0.9 * self.expected:
                    self.late = pool
                if self.mix is not None and self.sent is not None:
                    self.progress.show(
                        progress_line(
                            self.sent.count,
                            self.mix.results,
                            done,
                            self.expected,
                            time.monotonic() - self._started,
                        )
                    )


def _count_deliveries(sessions: sessionmaker[Session], *, finished: bool = False) -> int:
    with sessions() as session:
        query = select(func.count()).select_from(Delivery)
        if finished:
            query = query.where(Delivery.state == ACCEPTED)  # the state index answers
        return int(session.scalar(query) or 0)


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(database: str) -> dict[int, float]:
    """CPU seconds of the PostgreSQL processes on this machine (the server is local here)
    that work for `database` (their title names it: backends, autovacuum workers), by pid;
    the server's own processes (postmaster, checkpointer, WAL writer...) under -pid."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() not in ("postgres", "postmaster"):
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        pid = int(entry.name)
        if f" {database} " in f" {title} ":
            found[pid] = _cpu(pid)
        elif not title.startswith("postgres:") or any(name in title for name in _SERVER):
            found[-pid] = _cpu(pid)  # the postmaster or one of the server's own processes
    return found


#: The titles of the PostgreSQL server's own processes (PostgreSQL 13 to 17).
_SERVER = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "stats collector",
    "archiver",
)


def _status_kb(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return at(0.50), at(0.99)


def _dispose(sessions: sessionmaker[Session]) -> None:
    bind = sessions.kw.get("bind")
    if bind is not None:
        bind.dispose()
