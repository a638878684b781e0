"""A real `labdispatch mllp serve` process under attack, over loopback only.

Each test starts the listener as operators run it, with its limits set small through the
`LABDISPATCH_MLLP_*` variables so the attacks end in seconds, and watches it from outside:
it stays up, an ordinary LIS keeps getting its ACKs within a bound, and its memory (the
peak resident set, VmHWM) stays under a stated ceiling. PostgreSQL is the ledger, as in
production; what is attacked here is the network side, the same on either engine.
"""

from __future__ import annotations

import os
import resource
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.conftest import scratch_postgres
from tests.workers.mllp.conftest import result_message
from workers.mllp.client import MllpClient, MllpError

REPO = Path(__file__).resolve().parents[2]

#: The limits every test starts the listener with (small, so attacks end in seconds).
LIMITS = {
    "LABDISPATCH_MLLP_MAX_CONNECTIONS": "200",
    "LABDISPATCH_MLLP_MAX_CONNECTIONS_PER_PEER": "20",
    "LABDISPATCH_MLLP_FRAME_TIMEOUT": "2",
    "LABDISPATCH_MLLP_IDLE_TIMEOUT": "3",
    "LABDISPATCH_MLLP_BUFFER_BYTES": str(32 * 1024 * 1024),
}
#: How long an ordinary LIS may wait for an ACK while the listener is under attack.
ACK_BOUND_SECONDS = 2.0


@pytest.fixture
def database_url(postgres_admin: Engine) -> Iterator[str]:
    """PostgreSQL only (the production ledger): the attacks are on the network side."""
    with scratch_postgres(postgres_admin) as url:
        yield url


@dataclass
class Listener:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_mib(self) -> float:
        """The process's peak resident set so far (VmHWM), in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
        return int(line.split()[1]) / 1024

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("VmRSS:")]
        return int(line.split()[1]) / 1024

    def log_lines(self, containing: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if containing in line]


StartListener = Callable[..., Listener]


@pytest.fixture
def start_listener(cli_env: str, tmp_path: Path) -> Iterator[StartListener]:
    """Starts `labdispatch mllp serve --port 0` with `LIMITS` (and overrides); an optional
    open-file limit is set on the process (soft and hard, so it cannot raise it)."""
    started: list[Listener] = []

    def start(open_files: int | None = None, **overrides: str) -> Listener:
        log = tmp_path / f"listener-{len(started)}.log"

        def limit_files() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "workers.cli",
                    "mllp",
                    "serve",
                    "--host=127.0.0.1",
                    "--port=0",
                ],
                cwd=REPO,
                env={**os.environ, **LIMITS, **overrides},
                stdout=subprocess.PIPE,
                stderr=stderr,
                preexec_fn=limit_files,
            )
        listener = Listener(process, 0, log)
        started.append(listener)
        assert process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(60):
            raise AssertionError("the listener printed nothing within 60 s")
        line = process.stdout.readline().decode().strip()
        assert line.startswith("labdispatch: MLLP listener on 127.0.0.1:"), line
        listener.port = int(line.rsplit(":", 1)[1])
        return listener

    yield start
    for listener in started:
        if listener.alive():
            listener.process.kill()
        listener.process.wait(30)


@dataclass
class OrdinaryLis:
    """A LIS sending a result every `pace` seconds on its own connection, reconnecting when
    it must, as real ones do; records each ACK's code and wait."""

    port: int
    pace: float = 0.2
    waits: list[float] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> OrdinaryLis:
        """Starts sending; returns once the first ACK is in (connected before the attack)."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not (self.codes or self.errors) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.codes == ["AA"], (self.codes, self.errors)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def _run(self) -> None:
        client: MllpClient | None = None
        for number in range(10_000):  # bounded; stopped long before
            if self._stop.is_set():
                break
            started = time.monotonic()
            try:
                if client is None:
                    client = MllpClient("127.0.0.1", self.port, timeout=ACK_BOUND_SECONDS)
                reply = client.exchange(result_message(f"ORDINARY-{number:05d}"))
                self.codes.append(reply.code)
            except MllpError as error:
                self.errors.append(type(error).__name__)
                if client is not None:
                    client.close()
                client = None
            self.waits.append(time.monotonic() - started)
            self._stop.wait(self.pace)
        if client is not None:
            client.close()
