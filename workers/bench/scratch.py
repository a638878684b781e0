"""A throw-away PostgreSQL database for a benchmark run, so no run touches another's data."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from pipeline.db import DatabaseUnavailable, database_url, safe_url


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server, dropped afterwards; yields its URL."""
    admin = create_engine(
        database_url(admin_url), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(admin.dispose)
        try:
            url = cleanup.enter_context(scratch_database(admin, "labdispatch_bench"))
        except OperationalError as error:
            reason = str(error.orig or error).strip().splitlines()[0]
            raise DatabaseUnavailable(
                f"PostgreSQL is not reachable at {safe_url(admin_url)} ({reason})"
            ) from error
        yield url


@contextmanager
def scratch_database(admin: Engine, prefix: str) -> Iterator[str]:
    """A fresh database created on an AUTOCOMMIT admin connection, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(admin, name)


def drop_database(admin: Engine, name: str) -> None:
    """Drop a database even while processes are connected to it (they are cut off)."""
    with admin.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
