"""What one sender may hold of the MLLP listener, and logging that does not flood.

A laboratory must never be able to stop intake for everyone, by malice or by accident
(ARCHITECTURE rule 3). So the listener bounds what a connection can take: connections in
all and from one address, how long a frame may take once begun, how long a connection may
stay without sending a frame, and the bytes of frames held in memory in all (the largest
unfinished frames are dropped first when it is reached). Each default is far above what a
real LIS does; each is a `LABDISPATCH_MLLP_*` setting.

The same condition repeated (a flood refused connection by connection) is logged once,
then at most once per interval with the count of what was not logged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pipeline.settings import ServiceSettings

#: Seconds between two log lines about the same condition.
LOG_INTERVAL_SECONDS = 10.0
#: File descriptors the listener process needs besides its connections (ledger, broker,
#: event loop, log files): the open-file limit must leave room for both.
RESERVED_FILE_DESCRIPTORS = 64


@dataclass(frozen=True)
class ListenerLimits:
    """The listener's bounds (see the module's docstring); `ServiceSettings` holds the
    defaults and reads them from the environment."""

    max_connections: int = ServiceSettings.mllp_max_connections
    max_connections_per_peer: int = ServiceSettings.mllp_max_connections_per_peer
    frame_timeout: float = ServiceSettings.mllp_frame_timeout
    idle_timeout: float = ServiceSettings.mllp_idle_timeout
    buffer_bytes: int = ServiceSettings.mllp_buffer_bytes

    @classmethod
    def from_settings(cls, service: ServiceSettings) -> ListenerLimits:
        return cls(
            max_connections=service.mllp_max_connections,
            max_connections_per_peer=service.mllp_max_connections_per_peer,
            frame_timeout=service.mllp_frame_timeout,
            idle_timeout=service.mllp_idle_timeout,
            buffer_bytes=service.mllp_buffer_bytes,
        )


class RateLimitedLog:
    """Log lines keyed by condition: the first at once, then one per `interval` seconds at
    most, saying how many were held back in between."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            message += " (and %d more like it since the last such line)"
            args = (*args, held)
        self._logger.log(level, message, *args)
