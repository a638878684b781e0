"""A whole labdispatch installation on this machine, as child processes: the MLLP listener
and Celery workers, sharing one environment (ledger, broker, keys, relay).

The demo, the benchmark and the fault tests start the very processes an operator runs
(`labdispatch mllp serve`, `labdispatch worker`), not threads standing in for them, so a
worker can be killed with SIGKILL and the broker stopped under them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.closing import Closing
from pipeline.errors import LabdispatchError
from pipeline.ledger.files import private_file
from pipeline.ledger.models import Delivery, Message
from pipeline.ledger.states import OPEN_STATES, RECEIVED

STOP_TIMEOUT = 15.0


class StackError(LabdispatchError):
    """A process of the stack did not start or stopped unexpectedly."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class Stack(Closing):
    """Child processes started with `env` (merged over this process's environment), their
    output in `log_dir`."""

    env: Mapping[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    mllp_port: int = 0
    api_port: int = 0

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment.update(self.env)
        return environment

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start `labdispatch ARGS...` as the process called `name`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Readable by the operator alone, like every file of the service (`ledger.files`).
        log = private_file(self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *args],
            env=self._environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a signal to it must not reach us, and vice versa
        )
        log.close()
        self.processes[name] = process
        return process

    def start_listener(self, port: int = 0, *, timeout: float = 30.0) -> int:
        """Start `labdispatch mllp serve` and wait until it accepts connections."""
        self.mllp_port = port or free_port()
        process = self.start("mllp", "mllp", "serve", "--port", str(self.mllp_port))
        self._wait_for_port(process, "mllp", "the MLLP listener", self.mllp_port, timeout)
        return self.mllp_port

    def start_api(self, port: int = 0, *, timeout: float = 30.0) -> int:
        """Start `labdispatch api serve` and wait until it accepts connections."""
        self.api_port = port or free_port()
        process = self.start("api", "api", "serve", "--port", str(self.api_port))
        self._wait_for_port(process, "api", "the HTTP API", self.api_port, timeout)
        return self.api_port

    def _wait_for_port(
        self,
        process: subprocess.Popen[bytes],
        name: str,
        what: str,
        port: int,
        timeout: float,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(
                    f"{what} exited ({process.returncode}); see {self.log_dir / f'{name}.log'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise StackError(f"{what} did not open port {port} in {timeout} s")

    def start_worker(
        self, name: str = "worker", *, concurrency: int = 2, beat: bool = True
    ) -> subprocess.Popen[bytes]:
        """A worker without beat (its pool processes are then all its children), and with
        `beat` the periodic jobs in a process of their own, named "beat"."""
        if beat and "beat" not in self.processes:
            self.start("beat", "beat")
        args = ["worker", "--no-beat"]
        args += [
            "--",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        return self.start(name, *args)

    def worker_children(self, name: str = "worker") -> list[int]:
        """The pool processes of a worker (those that run the tasks)."""
        process = self.processes[name]
        try:
            text = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def signal(self, name: str, number: int) -> None:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(number)

    def stop_process(self, name: str, timeout: float = STOP_TIMEOUT) -> int | None:
        process = self.processes.pop(name, None)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        # A Celery pool child outlives a killed parent: clear the whole group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.returncode

    def check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise StackError(
                    f"{name} exited ({process.returncode}); see {self.log_dir / (name + '.log')}"
                )

    def close(self) -> None:
        # Listener first: nothing new comes in while the workers finish.
        for name in sorted(self.processes, key=lambda n: n != "mllp"):
            self.stop_process(name)


def has_open_work(session: Session) -> bool:
    """Is a message not yet routed, or a delivery still waiting for work from us? (EXISTS,
    not a count: it is asked every second of a long run, and stops at the first row.)"""
    unrouted = select(Message.id).where(Message.state == RECEIVED).exists()
    waiting = select(Delivery.id).where(Delivery.state.in_(OPEN_STATES)).exists()
    return bool(session.scalar(select(or_(unrouted, waiting))))


def wait_until_settled(
    sessions: sessionmaker[Session],
    *,
    timeout: float,
    expected_messages: int | None = None,
    interval: float = 0.2,
    alive: Callable[[], None] | None = None,
) -> bool:
    """Poll the ledger until nothing is left to do (and, if given, that many messages were
    recorded); False when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        with sessions() as session:
            recorded = session.scalar(select(func.count()).select_from(Message)) or 0
            if (expected_messages is None or recorded >= expected_messages) and not has_open_work(
                session
            ):
                return True
        time.sleep(interval)
    return False
