"""A real MLLP listener on a free port, over the test database (SQLite and PostgreSQL).

The listener runs its own event loop in a thread, as `labdispatch mllp serve` runs it in
its process; tests talk to it over real sockets with the blocking client, so a test
reads as what a LIS does: connect, send, wait for the ACK.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import open_database
from pipeline.delivery.services import DeliveryServices
from pipeline.settings import Settings
from tests.support import set_msh
from workers.mllp.client import MllpClient
from workers.mllp.server import MllpServer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"
RESULT = (FIXTURES / "fr_prt_idnps_utf8.hl7").read_bytes()
RESULT_CONTROL_ID = "LBC-2026-000101"


def result_message(control_id: str, *, accept: str = "", application: str = "") -> bytes:
    """A valid ORU^R01 (the French fixture) under another control ID, MSH-15/16 as given."""
    return set_msh(RESULT, {10: control_id, 15: accept, 16: application})


class RunningServer:
    """An `MllpServer` on 127.0.0.1, port chosen by the system, in a thread of its own."""

    def __init__(self, sessions: sessionmaker[Session], services: DeliveryServices) -> None:
        self.sessions = sessions
        self.services = services
        self.routed: list[int] = []  # what the after-commit hook was given
        self.hook_error: Exception | None = None  # raised by the hook when set
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: MllpServer | None = None
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, **options: Any) -> RunningServer:
        self._thread = threading.Thread(target=self._run, args=(options,), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the MLLP listener did not start within 30 s")
        if self._failure is not None:
            raise self._failure
        return self

    @property
    def server(self) -> MllpServer:
        assert self._server is not None
        return self._server

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"mllp://127.0.0.1:{self.port}"

    def client(self, timeout: float = 15.0) -> MllpClient:
        return MllpClient("127.0.0.1", self.port, timeout=timeout)

    def stop(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(60)
        self._thread.join(60)

    def _after_commit(self, message_ids: Sequence[int]) -> None:
        self.routed.extend(message_ids)
        if self.hook_error is not None:
            raise self.hook_error

    def _run(self, options: dict[str, Any]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main(options))
        finally:
            self._loop.close()

    async def _main(self, options: dict[str, Any]) -> None:
        try:
            self._server = MllpServer(
                self.sessions, self.services, after_commit=self._after_commit, **options
            )
            await self._server.start("127.0.0.1", 0)
        except BaseException as error:
            self._failure = error
            self._ready.set()
            return
        self._ready.set()
        await self._server.serve_forever()


StartServer = Callable[..., RunningServer]


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def service_settings(cli_env: str) -> Settings:
    """Settings as `labdispatch mllp serve` reads them (storage key named beside PostgreSQL)."""
    return Settings.from_env()


@pytest.fixture
def ledger(service_settings: Settings) -> Iterator[sessionmaker[Session]]:
    sessions = open_database(service_settings)
    yield sessions
    sessions.kw["bind"].dispose()


@pytest.fixture
def services(service_settings: Settings) -> Iterator[DeliveryServices]:
    with DeliveryServices.from_settings(service_settings) as services:
        yield services


@pytest.fixture
def start_server(
    ledger: sessionmaker[Session], services: DeliveryServices
) -> Iterator[StartServer]:
    """Starts listeners (options go to `MllpServer`, and `sessions=` overrides the ledger);
    stops them all after the test."""
    running: list[RunningServer] = []

    def start(sessions: sessionmaker[Session] | None = None, **options: Any) -> RunningServer:
        server = RunningServer(sessions or ledger, services)
        running.append(server)
        return server.start(**options)

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def mllp(start_server: StartServer) -> RunningServer:
    """A listener with the default options."""
    return start_server()
