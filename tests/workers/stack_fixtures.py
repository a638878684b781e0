"""A whole labdispatch installation for the fault tests, and the checks they share.

`FaultStack` assembles what `labdispatch bench` assembles (test PKI and directory, the
ledger, a broker, an SMTP receiver, `labdispatch mllp serve` and `labdispatch worker` as
real child processes), on short leases and fast retries so that recovering from a fault
takes seconds, not the minutes of the production defaults. `PrivateRedis` is a
redis-server of the test's own on a free port, so stopping, killing or flushing it cannot
disturb another test.

The one check every fault test ends with is `FaultStack.check_all_delivered`: the ledger
holds every pushed result once, each of its deliveries `accepted`, and the set of
(Message-ID, envelope recipient) the receiver got equals the ledger's deliveries. Copies
beyond the first are counted, not refused: after a crash a send whose outcome was not yet
committed goes out again, under the same Message-ID, for the recipient's client to
de-duplicate (ARCHITECTURE rule 2); each test bounds how many it allows.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.closing import Closing
from pipeline.db import open_database
from pipeline.ledger.models import Attempt, Delivery, Event, Message
from pipeline.ledger.states import OPEN_STATES
from pipeline.settings import PREFIX, Settings
from workers.bench.synthetic import (
    SyntheticResult,
    bench_pki,
    bench_recipients,
    generate_labelled_results,
)
from workers.broker import redis_server_executable, stop_embedded
from workers.mllp.client import PushReport, push
from workers.smtp_sink import Arrival, SmtpSink, read_log
from workers.stack import Stack, StackError, free_port, wait_until_settled

LABORATORY = "LABO-FAULTS"
#: Settings that make recovery quick: a killed worker's claims run out after 4 s, reconcile
#: runs every second and re-queues work not finished 2 s after it was queued, retries wait
#: half a second to a second, an open circuit is tried again after a second.
FAST_SETTINGS = {
    "BATCH_SIZE": "20",
    "LEASE_SECONDS": "4",
    "REQUEUE_AFTER": "2",
    "RECONCILE_INTERVAL": "1",
    "RETRY_MIN_BACKOFF": "0.5",
    "RETRY_MAX_BACKOFF": "1",
    "BREAKER_OPEN_SECONDS": "1",
}
#: Log lines worth showing when a check fails.
_TROUBLE = ("ERROR", "CRITICAL", "Traceback", "WorkerLostError")
_TAIL_LINES = 40
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
#: Where an idle pool process sleeps: reading its pipe from the worker for the next task
#: (the kernel's `anon_pipe_read`, `pipe_read` or `pipe_wait`, by version).
_WAITING_FOR_A_TASK = "pipe"


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], None] | None = None,
    details: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll `condition` until it holds; fail the test with `what` (and the details) when
    `timeout` passes first. `alive` raises if a process it watches has died."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if condition():
            return
        if time.monotonic() > deadline:
            extra = details() if details is not None else ""
            pytest.fail(f"not within {timeout:g} s: {what}\n{extra}", pytrace=False)
        time.sleep(interval)


class PrivateRedis(Closing):
    """A redis-server of our own on a free TCP port, without persistence: stopped and
    started again, it comes back empty, as after a crash that lost its data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("this redis-server is running already")
        command = [
            redis_server_executable(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        process = self.process
        client = self.client()

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail(
                    f"redis-server exited ({process.returncode}); see "
                    f"{self.directory / 'redis.log'}",
                    pytrace=False,
                )
            try:
                return bool(client.ping())
            except (redis.RedisError, OSError):
                return False

        try:
            wait_for(answers, timeout=timeout, what=f"redis-server answering on {self.port}")
        finally:
            client.close()
        return self

    def stop(self, *, kill: bool = False) -> None:
        """SHUTDOWN NOSAVE (or SIGKILL): the queued work is lost, as in a crash."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            client = self.client()
            try:
                client.shutdown(nosave=True)
            except (redis.RedisError, OSError):
                process.kill()
            finally:
                client.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        self.stop(kill=True)


@dataclass(frozen=True)
class Tally:
    """What the check found: results and deliveries in the ledger, and the envelopes the
    receiver got (raw copies, and how many of them were copies of one already there)."""

    results: int
    deliveries: int
    copies: int
    duplicates: int
    attempts: int

    def line(self) -> str:
        return (
            f"{self.results} results, {self.deliveries} deliveries accepted, "
            f"{self.copies} envelope copies received, {self.duplicates} duplicate(s), "
            f"{self.attempts} send attempts"
        )


class FaultStack(Closing):
    """The MLLP listener and a worker over one ledger and broker, with an in-process SMTP
    receiver whose log is the truth of what arrived.

    `database_url=None` and `broker_url=None` is the embedded default: SQLite in the var
    dir and the Redis server the program starts itself (stopped again by `close`).
    """

    def __init__(
        self,
        workdir: Path,
        monkeypatch: pytest.MonkeyPatch,
        *,
        database_url: str | None = None,
        broker_url: str | None = None,
        recipients: int = 10,
        concurrency: int = 2,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.concurrency = concurrency
        self.people = bench_recipients(recipients)
        self.address_of = {person.rpps: person.address for person in self.people}
        self.embedded_broker = broker_url is None
        self.sink_log = workdir / "smtp-received.tsv"
        self.log_dir = workdir / "logs"
        self.sink = SmtpSink(log=self.sink_log)
        self.stack = Stack(env={}, log_dir=self.log_dir)
        self._settings: Settings | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._seeds = 0

        pki = workdir / "pki"
        bench_pki(pki, recipients, LABORATORY)
        env = {
            "VAR_DIR": str(workdir / "var"),
            "SIGNING_CERT": str(pki / "lab.crt"),
            "SIGNING_KEY": str(pki / "lab.key"),
            "MAIL_FROM": "results@labo-faults.example",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_TLS": "none",
            **FAST_SETTINGS,
            **(settings or {}),
        }
        if database_url is not None:
            env["DATABASE_URL"] = database_url
            if not database_url.startswith("sqlite"):
                key_file = workdir / "storage.key"
                key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
                key_file.chmod(0o600)
                env["STORAGE_KEY_FILE"] = str(key_file)
        if broker_url is not None:
            env["BROKER_URL"] = broker_url
        for name in list(os.environ):
            if name.startswith(PREFIX) and not name.startswith(PREFIX + "TEST_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(PREFIX + name, value)

        try:
            self.sink.start()
            monkeypatch.setenv(PREFIX + "SMTP_PORT", str(self.sink.port))
            self._settings = Settings.from_env()
            self._sessions = open_database(self._settings)
            from workers.cli import main  # the command line imports much; only here

            if main(["directory", "import", str(pki / "directory.csv")]) != 0:
                raise RuntimeError("importing the test directory failed")
        except BaseException:
            self.close()
            raise

    @property
    def sessions(self) -> sessionmaker[Session]:
        assert self._sessions is not None
        return self._sessions

    # --- processes --------------------------------------------------------------------

    def start(self) -> FaultStack:
        self.stack.start_listener()
        self.start_worker("worker")
        return self

    def start_worker(self, name: str) -> None:
        """Start a worker (and the periodic jobs in their own process, once) and wait for
        its pool processes."""
        self.stack.start_worker(name, concurrency=self.concurrency)
        wait_for(
            lambda: len(self.stack.worker_children(name)) == self.concurrency,
            timeout=30,
            what=f"{name} forking its {self.concurrency} pool processes",
            alive=self.alive,
            details=self.diagnostics,
        )

    def alive(self) -> None:
        """Fail the test, with the logs, if the listener or a worker has exited."""
        try:
            self.stack.check_running()
        except StackError as error:
            pytest.fail(f"{error}\n{self.diagnostics()}", pytrace=False)

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            self.sink.stop()
            if self._settings is not None and self.embedded_broker:
                stop_embedded(self._settings)
            if self._sessions is not None:
                bind = self._sessions.kw.get("bind")
                if bind is not None:
                    bind.dispose()

    # --- results in -------------------------------------------------------------------

    def results(self, count: int, *, pdf_ratio: float = 0.1) -> list[SyntheticResult]:
        """`count` new results (a fresh seed each call, so control IDs never repeat)."""
        self._seeds += 1
        rpps = [person.rpps for person in self.people]
        return list(generate_labelled_results(count, self._seeds, LABORATORY, rpps, pdf_ratio))

    def push(self, results: Iterable[SyntheticResult]) -> PushReport:
        """Send over MLLP as a laboratory does (two connections, a window each)."""
        return asyncio.run(
            push(
                "127.0.0.1",
                self.stack.mllp_port,
                [result.data for result in results],
                connections=2,
                window=16,
                timeout=30.0,
            )
        )

    @staticmethod
    def expected_deliveries(results: Iterable[SyntheticResult]) -> int:
        return sum(len(result.recipients) for result in results)

    # --- watching the ledger ----------------------------------------------------------

    def delivery_states(self) -> Counter[str]:
        with self.sessions() as session:
            rows = session.execute(select(Delivery.state, func.count()).group_by(Delivery.state))
            return Counter({state: int(count) for state, count in rows})

    def accepted(self) -> int:
        return self.delivery_states()["accepted"]

    def claimed(self) -> int:
        """Open deliveries a worker holds a lease on now: a seal or send batch at work."""
        now = datetime.now(UTC)
        with self.sessions() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.state.in_(OPEN_STATES), Delivery.leased_until > now)
                )
                or 0
            )

    def attempts_by_outcome(self) -> Counter[str]:
        with self.sessions() as session:
            rows = session.execute(select(Attempt.outcome, func.count()).group_by(Attempt.outcome))
            return Counter({outcome: int(count) for outcome, count in rows})

    def recorded(self, results: Iterable[SyntheticResult]) -> int:
        """How many of these results the ledger holds."""
        control_ids = [result.control_id for result in results]
        with self.sessions() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.control_id.in_(control_ids))
                )
                or 0
            )

    def events_like(self, kind: str, text: str) -> int:
        with self.sessions() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(Event)
                    .where(Event.kind == kind, Event.detail.contains(text))
                )
                or 0
            )

    def settle(self, messages: int, timeout: float = 60.0) -> float:
        """Wait until every message is recorded and no delivery is left open; seconds."""
        started = time.monotonic()
        if not wait_until_settled(
            self.sessions,
            timeout=timeout,
            expected_messages=messages,
            alive=self.alive,
        ):
            pytest.fail(f"still working after {timeout:g} s\n{self.diagnostics()}", pytrace=False)
        return time.monotonic() - started

    # --- killing ----------------------------------------------------------------------

    def working_pool_process(self, name: str = "worker", timeout: float = 10.0) -> int:
        """A pool process in the middle of a task: one that used at least 30 ms of CPU over
        the last 0.2 s and is not, right now, waiting on its pipe for the next task. Kill it at
        once."""
        deadline = time.monotonic() + timeout
        while True:
            children = self.stack.worker_children(name)
            before = {pid: _cpu_ticks(pid) for pid in children}
            time.sleep(0.2)  # the measuring interval
            busy = [
                pid
                for pid in children
                if (_cpu_ticks(pid) - before[pid]) * 1000 >= 30 * _TICKS_PER_SECOND
            ]
            for pid in busy:
                channel = _wait_channel(pid)
                if channel and _WAITING_FOR_A_TASK not in channel:
                    return pid
            if time.monotonic() > deadline:
                pytest.fail(f"no pool process of {name} at work on a task in {timeout:g} s")

    def kill_worker(self, name: str = "worker") -> list[int]:
        """SIGKILL the worker's whole process group (main and pool); the pids killed."""
        process = self.stack.processes[name]
        pids = [process.pid, *self.stack.worker_children(name)]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        del self.stack.processes[name]  # dead on purpose: not a failure `check_running` reports
        wait_for(
            lambda: not any(_alive(pid) for pid in pids),
            timeout=10,
            what=f"every process of {name} gone after SIGKILL",
        )
        return pids

    # --- the final check --------------------------------------------------------------

    def check_all_delivered(self, results: Iterable[SyntheticResult]) -> Tally:
        """Every result recorded once, every recipient's delivery accepted, and what the
        receiver got is exactly the ledger's envelopes (copies counted)."""
        pushed = {result.control_id: result for result in results}
        with self.sessions() as session:
            messages = Counter(
                session.scalars(
                    select(Message.control_id).where(Message.control_id.in_(pushed))
                ).all()
            )
            deliveries: list[tuple[str, str, str | None, str | None, str]] = [
                (control_id, state, address, envelope_id, error)
                for control_id, state, address, envelope_id, error in session.execute(
                    select(
                        Message.control_id,
                        Delivery.state,
                        Delivery.channel_address,
                        Delivery.envelope_message_id,
                        Delivery.last_error,
                    )
                    .join(Message, Delivery.message_id == Message.id)
                    .where(Message.control_id.in_(pushed))
                )
            ]
            attempts = int(session.scalar(select(func.count()).select_from(Attempt)) or 0)
            counted = int(session.scalar(select(func.sum(Delivery.attempts))) or 0)
        # Attempts are counted in the ledger, and each has its record (a crash loses both
        # or neither: they are committed together).
        assert counted == attempts, f"deliveries count {counted} attempts, {attempts} recorded"
        assert set(messages) == set(pushed) and max(messages.values()) == 1, (
            f"{len(pushed)} results pushed, {len(messages)} recorded "
            f"(recorded twice: {[c for c, n in messages.items() if n > 1][:5]}, "
            f"missing: {sorted(set(pushed) - set(messages))[:5]})\n{self.diagnostics()}"
        )
        not_accepted = [row for row in deliveries if row[1] != "accepted"]
        assert not not_accepted, (
            f"{len(not_accepted)} of {len(deliveries)} deliveries not accepted, e.g. "
            f"{[(c, s, e) for c, s, _, _, e in not_accepted[:5]]}\n{self.diagnostics()}"
        )
        wanted = {
            (result.control_id, self.address_of[rpps])
            for result in pushed.values()
            for rpps in result.recipients
        }
        routed = {(control_id, address) for control_id, _, address, _, _ in deliveries}
        assert routed == wanted and len(deliveries) == len(wanted), (
            f"deliveries in the ledger ({len(deliveries)}) are not one per recipient of each "
            f"result ({len(wanted)}): missing {sorted(wanted - routed)[:5]}, "
            f"unexpected {sorted(routed - wanted)[:5]}"
        )
        envelopes = {(str(mid), str(address)) for _, _, address, mid, _ in deliveries}
        copies = Counter(
            (arrival.message_id, recipient)
            for arrival in self.arrivals()
            for recipient in arrival.recipients
        )
        received = set(copies)
        assert received == envelopes, (
            f"the receiver got {len(received)} distinct envelopes, the ledger has "
            f"{len(envelopes)} deliveries: lost {sorted(envelopes - received)[:5]}, "
            f"never in the ledger {sorted(received - envelopes)[:5]}\n{self.diagnostics()}"
        )
        total = sum(copies.values())
        return Tally(
            results=len(pushed),
            deliveries=len(deliveries),
            copies=total,
            duplicates=total - len(received),
            attempts=attempts,
        )

    def arrivals(self) -> list[Arrival]:
        return read_log(self.sink_log)

    def diagnostics(self) -> str:
        """Delivery states, process states, and the tail of every log that shows trouble."""
        lines = [f"deliveries by state: {dict(self.delivery_states())}"]
        exited = set()
        for name, process in self.stack.processes.items():
            code = process.poll()
            lines.append(f"{name}: " + ("running" if code is None else f"exited {code}"))
            if code is not None:
                exited.add(f"{name}.log")
        for log in sorted(self.log_dir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()
            if log.name in exited or any(m in line for line in text for m in _TROUBLE):
                lines.append(f"--- last {_TAIL_LINES} lines of {log}")
                lines.extend(text[-_TAIL_LINES:])
        return "\n".join(lines)


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _wait_channel(pid: int) -> str:
    """The kernel function a process sleeps in ("0" while it runs; "" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
