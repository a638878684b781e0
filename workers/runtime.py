"""What a worker process holds for its life: settings, the database, the delivery services.

Built on first use in each process, never before a fork: a prefork worker's children must
not share the parent's database connections or SMTP sockets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import open_database
from pipeline.delivery.services import DeliveryServices
from pipeline.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    services: DeliveryServices
    pid: int


_current: Runtime | None = None


def runtime() -> Runtime:
    global _current
    if _current is None or _current.pid != os.getpid():
        settings = Settings.from_env()
        _current = Runtime(
            settings=settings,
            sessions=open_database(settings),
            services=DeliveryServices.from_settings(settings),
            pid=os.getpid(),
        )
    return _current


def close_runtime() -> None:
    global _current
    if _current is not None and _current.pid == os.getpid():
        _current.services.close()
        bind = _current.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()
    _current = None
