"""The ledger, its journals, the storage key and var/ are the service's alone (rule 5).

Run as the embedded default runs: a process opens the database and builds its services
under a usual umask (022, which makes files 0644 and folders 0755 unless told otherwise).
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from pipeline.db import open_database
from pipeline.delivery.services import DeliveryServices
from pipeline.settings import Settings


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def embedded(tmp_path: Path) -> Settings:
    var = tmp_path / "var"
    return Settings(var_dir=var, database_url=f"sqlite:///{var / 'labdispatch.db'}")


def test_a_fresh_embedded_ledger_and_its_key_are_readable_by_the_service_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = embedded(tmp_path)

    sessions = open_database(settings)
    DeliveryServices.from_settings(settings)
    with sessions.begin() as session:  # a write: SQLite's WAL and shared-memory files
        session.execute(text("CREATE TABLE scratch (n INTEGER)"))
        session.execute(text("INSERT INTO scratch VALUES (1)"))
        var = settings.var_dir
        files = {
            name: mode(var / name)
            for name in ("labdispatch.db", "labdispatch.db-wal", "labdispatch.db-shm")
        }
    sessions.kw["bind"].dispose()

    assert mode(var) == 0o700
    assert files == dict.fromkeys(files, 0o600)
    assert mode(var / "storage.key") == 0o600
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing to fix


def test_files_left_readable_by_others_are_made_private_at_start_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As an older version (or a copy with a lax umask) left them: 0755 var/, 0644 ledger,
    journal, key and broker log."""
    settings = embedded(tmp_path)
    var = settings.var_dir
    open_database(settings).kw["bind"].dispose()  # the ledger, as an older version made it
    lax = [
        var / "labdispatch.db",
        var / "labdispatch.db-wal",
        var / "labdispatch.db-journal",
        var / "storage.key",
        var / "broker" / "redis.log",
    ]
    (var / "broker").mkdir()
    for path in lax[1:]:
        path.write_bytes(b"")
    (var / "storage.key").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    for path in lax:
        path.chmod(0o644)
    var.chmod(0o755)
    caplog.set_level(logging.WARNING)

    sessions = open_database(settings)
    DeliveryServices.from_settings(settings)
    sessions.kw["bind"].dispose()

    assert mode(var) == 0o700
    # (SQLite removes an empty -wal or -journal when it opens the ledger: the warnings tell
    # those were made private first.)
    left = {path.name: mode(path) for path in lax if path.exists()}
    assert left == dict.fromkeys(left, 0o600)
    assert {"labdispatch.db", "storage.key", "redis.log"} <= left.keys()
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for path in [var, *lax]:
        assert f"{path} was readable by other users" in warned


def test_a_ledger_outside_var_is_private_too_and_its_folder_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    folder.mkdir(mode=0o755)
    settings = Settings(var_dir=tmp_path / "var", database_url=f"sqlite:///{folder / 'ledger.db'}")

    open_database(settings).kw["bind"].dispose()

    assert mode(folder / "ledger.db") == 0o600
    assert mode(folder) == 0o755  # an operator's folder: not ours to change
