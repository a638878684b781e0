"""`watch --once` with no broker configured: the embedded Redis server it had to start is
stopped when it exits (its queued work kept), and never one that others use or that was
running before. Real processes, a private var dir each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.settings import Settings
from tests.workers.test_broker import servers_in
from tests.workers.test_watch import GOOD, ROOT, drop
from workers.broker import embedded_broker, stop_embedded

ROUTE_QUEUE = "labdispatch.route"
DEADLINE = 60


@pytest.fixture
def private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The one-machine default: SQLite and the embedded broker under a private var dir."""
    for name in ("BROKER_URL", "DATABASE_URL", "STORAGE_KEY_FILE", "DEBUG"):
        monkeypatch.delenv(f"LABDISPATCH_{name}", raising=False)
    monkeypatch.setenv("LABDISPATCH_VAR_DIR", str(tmp_path / "var"))
    settings = Settings.from_env()
    yield settings
    try:
        stop_embedded(settings)
    finally:
        left = servers_in(settings.broker_dir) if settings.broker_dir.exists() else []
        for pid in left:
            os.kill(pid, signal.SIGKILL)


def labdispatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def queued(settings: Settings) -> int:
    client = redis.Redis(unix_socket_path=str(embedded_broker(settings).socket_path))
    try:
        return int(client.llen(ROUTE_QUEUE))
    finally:
        client.close()


def test_watch_once_stops_the_broker_it_started_and_keeps_the_queued_work(
    private: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    drop(folder, "cr.hl7", GOOD)

    done = labdispatch("watch", str(folder), "--once")

    assert done.returncode == 0, done.stderr
    assert done.stdout == "cr.hl7: 1 recorded, 0 refused → done/cr.hl7\n"
    assert done.stderr == ""
    assert embedded_broker(private).log_file.is_file()  # it did start one
    assert servers_in(private.broker_dir) == []  # and left none behind
    assert labdispatch("broker", "start").returncode == 0
    assert queued(private) == 1  # the route task waits for the workers


def test_watch_once_leaves_a_broker_that_was_running_before(
    private: Settings, tmp_path: Path
) -> None:
    assert labdispatch("broker", "start").returncode == 0
    (pid,) = servers_in(private.broker_dir)
    folder = tmp_path / "drop"
    folder.mkdir()
    drop(folder, "cr.hl7", GOOD)

    assert labdispatch("watch", str(folder), "--once").returncode == 0

    assert servers_in(private.broker_dir) == [pid]
    assert queued(private) == 1


def test_watch_once_leaves_the_broker_it_started_when_another_process_uses_it(
    private: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    drop(folder, "cr.hl7", GOOD)
    assert labdispatch("watch", str(folder), "--once").returncode == 0
    assert servers_in(private.broker_dir) == []
    # A process that joins the broker (as a worker or a listener does) while a one-shot
    # job that starts it runs: the job must not take it away from under it.
    user = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pipeline.settings import Settings; "
            "from workers.broker import broker_url; broker_url(Settings.from_env()); "
            "print('using', flush=True); sys.stdin.read()",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert user.stdout is not None and user.stdout.readline() == "using\n"
        assert len(servers_in(private.broker_dir)) == 1  # the user started this one
        stop_embedded(private)  # now the one-shot job will be the one to start it
        assert servers_in(private.broker_dir) == []
        drop(folder, "second.hl7", GOOD.replace(b"LBC-2026-000101", b"LBC-SECOND"))

        assert labdispatch("watch", str(folder), "--once").returncode == 0

        assert len(servers_in(private.broker_dir)) == 1  # started by it, kept for the user
        assert queued(private) == 2
    finally:
        user.communicate("", timeout=DEADLINE)
