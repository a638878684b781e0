"""Serving the API with uvicorn, as `labdispatch api serve` does.

The socket is bound here, before uvicorn starts, so an address in use is a one-line error
and port 0 can be told back. uvicorn's own logging setup and access log are off: our
handlers print the lines (`workers.cli`), and `access_log.AccessLog` writes the one line
per call that holds no patient data. SIGTERM / SIGINT: uvicorn stops taking requests,
finishes those in flight, then the app's shutdown lets the committer answer what was
posted.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from pipeline.errors import LabdispatchError
from pipeline.settings import Settings
from workers.api.app import create_app


class ApiServerError(LabdispatchError):
    """The API cannot start (address in use, no permission to bind)."""


class _Server(uvicorn.Server):
    """uvicorn's server, telling `ready` once the app has started, exiting 0 when stopped."""

    def __init__(self, config: uvicorn.Config, ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._ready = ready

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn raises the signal again once it has stopped, so the process ends "killed
        # by SIGTERM"; a stop we were asked for is a clean exit (0), as for `mllp serve`.
        self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._ready is not None:
            self._ready()


def run_api_server(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    ready: Callable[[str, int], None] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean stop, 1 when the app did not start."""
    host = host if host is not None else settings.service.api_host
    port = port if port is not None else settings.service.api_port
    listener = _bind(host, port)
    logging.getLogger("labdispatch.api").setLevel(logging.INFO)  # the access log
    bound = int(listener.getsockname()[1])
    try:
        config = uvicorn.Config(
            create_app(settings),
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="on",
            # After SIGTERM, calls still running this long are cut (a report is stopped by
            # its own time limit, LABDISPATCH_STATS_TIMEOUT), so a stop is always prompt.
            timeout_graceful_shutdown=max(1, round(settings.service.api_shutdown_timeout)),
        )
        server = _Server(config, (lambda: ready(host, bound)) if ready is not None else None)
        server.run(sockets=[listener])
    finally:
        listener.close()
    return 0 if server.started else 1


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise ApiServerError(
            f"cannot listen for HTTP on {host}:{port}: {error.strerror or error}"
        ) from error
    return listener
