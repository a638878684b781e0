"""The broker the processes share: the embedded Redis server of a var dir, and a named one.

Every embedded server here is a real `redis-server` on a Unix socket in the test's var dir;
the fixture stops it afterwards and checks that no server process is left behind.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
from celery import Celery

from pipeline.errors import ConfigurationError
from pipeline.settings import ServiceSettings, Settings
from workers.broker import (
    START_TIMEOUT,
    BrokerUnavailable,
    broker_url,
    check,
    embedded_broker,
    embedded_running,
    ping,
    redact,
    stop_embedded,
)
from workers.cli import main


def servers_in(directory: Path) -> list[int]:
    """Live redis-server processes running in `directory` (Redis chdirs to its --dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if "redis-server" not in (entry / "comm").read_text():
                continue
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue
            if Path(os.readlink(entry / "cwd")) == directory.resolve():
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def servers_started(settings: Settings) -> int:
    """How many servers ever started in this var dir (each logs this line once), including
    any that lost a race for the socket and exited."""
    return embedded_broker(settings).log_file.read_text().count("Server initialized")


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"  # its parent (init) reaps it in its own time


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not true after {timeout} s: {condition}"
        time.sleep(0.02)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Settings]:
    """Settings with no broker configured, on an empty var dir; its server (if any test
    started one) is stopped afterwards, and none may remain."""
    settings = Settings(var_dir=tmp_path / "var", database_url="sqlite:///unused.db")
    yield settings
    try:
        stop_embedded(settings)
    finally:
        left = servers_in(settings.broker_dir) if settings.broker_dir.exists() else []
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert left == [], "the embedded broker was still running after stop_embedded"


def client_for(settings: Settings) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(embedded_broker(settings).socket_path))


# --- the embedded server ---------------------------------------------------------------------


def test_embedded_broker_starts_from_an_empty_var_dir_on_a_private_socket(
    embedded: Settings,
) -> None:
    assert not embedded.var_dir.exists()

    url = broker_url(embedded)

    broker = embedded_broker(embedded)
    assert url == f"redis+socket://{broker.socket_path}"
    assert broker.socket_path.is_absolute()
    assert stat.S_ISSOCK(broker.socket_path.stat().st_mode)
    assert stat.S_IMODE(broker.socket_path.stat().st_mode) == 0o700
    assert ping(url) and embedded_running(embedded)
    client = client_for(embedded)
    assert client.config_get("port") == {"port": "0"}  # no TCP listener at all
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert servers_in(broker.directory) == [broker.pid()]


def test_a_second_start_reuses_the_running_server(embedded: Settings) -> None:
    first = broker_url(embedded)
    pid = embedded_broker(embedded).pid()

    second = broker_url(embedded)

    assert second == first
    assert pid is not None and embedded_broker(embedded).pid() == pid
    assert servers_in(embedded.broker_dir) == [pid]


def test_threads_starting_it_at_once_start_exactly_one_server(embedded: Settings) -> None:
    barrier = threading.Barrier(8)

    def start() -> str:
        barrier.wait()
        return broker_url(embedded)

    with ThreadPoolExecutor(8) as pool:
        urls = list(pool.map(lambda _: start(), range(8)))

    assert set(urls) == {embedded_broker(embedded).url}
    assert servers_in(embedded.broker_dir) == [embedded_broker(embedded).pid()]
    assert servers_started(embedded) == 1


def _start_in_child(var_dir: str, barrier: Any, results: Any) -> None:
    settings = Settings(var_dir=Path(var_dir), database_url="sqlite:///unused.db")
    barrier.wait()
    url = broker_url(settings)
    results.put((url, embedded_broker(settings).pid()))


def test_processes_starting_it_at_once_start_exactly_one_server(embedded: Settings) -> None:
    # As `mllp serve`, `worker` and `beat` do when launched together.
    context = multiprocessing.get_context("fork")  # no re-import: they start at once
    barrier = context.Barrier(6)
    results = context.Queue()
    children = [
        context.Process(target=_start_in_child, args=(str(embedded.var_dir), barrier, results))
        for _ in range(6)
    ]
    for child in children:
        child.start()
    answers = [results.get(timeout=30) for _ in children]
    for child in children:
        child.join(timeout=30)

    assert [child.exitcode for child in children] == [0] * 6
    pid = embedded_broker(embedded).pid()
    assert set(answers) == {(embedded_broker(embedded).url, pid)}
    assert servers_in(embedded.broker_dir) == [pid]
    assert servers_started(embedded) == 1


def test_stop_stops_it_and_a_second_stop_finds_nothing(embedded: Settings) -> None:
    broker_url(embedded)
    broker = embedded_broker(embedded)
    pid = broker.pid()
    assert pid is not None

    assert stop_embedded(embedded) is True

    assert gone(pid)
    assert not embedded_running(embedded)
    assert not broker.socket_path.exists() and not broker.pid_file.exists()
    assert stop_embedded(embedded) is False


def test_queued_work_survives_a_stop_and_start(embedded: Settings) -> None:
    broker_url(embedded)
    client_for(embedded).rpush("queued", "first", "second", "third")
    first_pid = embedded_broker(embedded).pid()
    stop_embedded(embedded)

    broker_url(embedded)

    assert embedded_broker(embedded).pid() != first_pid
    assert client_for(embedded).lrange("queued", 0, -1) == [b"first", b"second", b"third"]
    # It came back from the append-only file: no RDB snapshot is ever written.
    assert not (embedded.broker_dir / "dump.rdb").exists()


def test_a_killed_server_is_started_again_over_its_stale_files(embedded: Settings) -> None:
    broker_url(embedded)
    broker = embedded_broker(embedded)
    pid = broker.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid))
    assert broker.socket_path.exists() and broker.pid_file.exists()  # left by the crash
    assert not embedded_running(embedded)

    broker_url(embedded)

    new_pid = broker.pid()
    assert new_pid is not None and new_pid != pid
    assert embedded_running(embedded)
    assert servers_in(broker.directory) == [new_pid]


def test_a_server_that_cannot_start_is_reported_with_its_reason_at_once(
    embedded: Settings,
) -> None:
    # Its append-only file (Redis 6: appendonly.aof, Redis 7: appendonlydir/) unusable.
    embedded.broker_dir.mkdir(parents=True)
    (embedded.broker_dir / "appendonly.aof").mkdir()
    (embedded.broker_dir / "appendonlydir").write_text("not a directory\n")
    started = time.monotonic()

    with pytest.raises(BrokerUnavailable) as raised:
        broker_url(embedded)

    assert time.monotonic() - started < START_TIMEOUT / 2  # seen exiting, not timed out
    message = str(raised.value)
    assert "stopped while starting" in message and "append-only" in message
    assert str(embedded_broker(embedded).log_file) in message


def test_a_var_dir_too_deep_for_a_unix_socket_is_a_configuration_error(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / ("d" * 120), database_url="sqlite:///unused.db")

    with pytest.raises(ConfigurationError, match="LABDISPATCH_VAR_DIR to a shorter path"):
        broker_url(settings)


# --- what Celery does with the URL ----------------------------------------------------------


def test_kombu_carries_messages_over_the_socket_url(embedded: Settings) -> None:
    url = broker_url(embedded)

    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("labdispatch-test")
        queue.put({"control_id": "CTRL-1"})
        message = queue.get(timeout=5)
        message.ack()
        queue.close()

    assert message.payload == {"control_id": "CTRL-1"}


def test_celery_publishes_tasks_to_the_embedded_broker(embedded: Settings) -> None:
    app = Celery("labdispatch-test", broker=broker_url(embedded))

    app.send_task("labdispatch.test.noop", args=[1], queue="labdispatch-test")

    assert client_for(embedded).llen("labdispatch-test") == 1


#: The app a real worker runs in the test below; its broker comes from CELERY_BROKER_URL.
probe_app = Celery("labdispatch-probe")


@probe_app.task(name="labdispatch.test.touch")
def touch(path: str) -> None:
    Path(path).write_text("done\n")


def test_a_celery_worker_process_consumes_tasks_over_the_socket(
    embedded: Settings, tmp_path: Path
) -> None:
    url = broker_url(embedded)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", f"{__name__}:probe_app", "worker",
         "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING"],
        env={**os.environ, "CELERY_BROKER_URL": url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        probe_app.conf.broker_url = url
        targets = [tmp_path / f"touched-{n}" for n in range(10)]
        for target in targets:
            touch.delay(str(target))
        wait_for(lambda: all(target.exists() for target in targets), timeout=30)
    finally:
        probe_app.close()
        worker.terminate()
        _, errors = worker.communicate(timeout=30)
    assert worker.returncode == 0, errors.decode(errors="replace")


# --- a named broker --------------------------------------------------------------------------


def test_a_configured_url_is_used_as_given_and_nothing_is_started(
    tmp_path: Path, redis_url: str
) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        database_url="sqlite:///unused.db",
        service=ServiceSettings(broker_url=redis_url),
    )

    assert broker_url(settings) == redis_url
    check(redis_url)
    assert not settings.broker_dir.exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@127.0.0.1:1/0", "does not answer: Error 111 connecting"),
        ("redis+socket://:s3cret@/nonexistent/redis.sock", "does not answer"),
        ("amqp://guest:s3cret@127.0.0.1:5672//", "is not a Redis URL"),
        ("redis://user:s3cret@127.0.0.1:notaport/0", "is not usable"),
    ],
)
def test_a_bad_broker_url_is_reported_without_its_password(url: str, expected: str) -> None:
    with pytest.raises(BrokerUnavailable) as raised:
        check(url, timeout=2.0)

    assert expected in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert not ping(url, timeout=2.0)


def test_credentials_a_real_redis_refuses_are_reported_without_the_password(
    redis_url: str,
) -> None:
    scheme, rest = redis_url.split("://", 1)
    wrong = f"{scheme}://nobody:s3cret@{rest.rpartition('@')[2]}"

    with pytest.raises(BrokerUnavailable) as raised:
        check(wrong)

    assert "nobody:***@" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_a_configured_url_that_is_not_redis_is_refused_when_asked_for(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        database_url="sqlite:///unused.db",
        service=ServiceSettings(broker_url="amqp://guest:s3cret@rabbit//"),
    )

    with pytest.raises(BrokerUnavailable, match="not a Redis URL") as raised:
        broker_url(settings)

    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:p@ss/w:rd@host/0", "redis://user:***@host/0"),
        ("rediss://user@host:6380/1", "rediss://user@host:6380/1"),
        (
            "redis://host/0?password=pw&ssl_cert_reqs=none",
            "redis://host/0?password=***&ssl_cert_reqs=none",
        ),
        ("redis+socket:///var/broker/redis.sock", "redis+socket:///var/broker/redis.sock"),
    ],
)
def test_redact_masks_passwords_only(url: str, shown: str) -> None:
    assert redact(url) == shown


# --- labdispatch broker ----------------------------------------------------------------------


@pytest.fixture
def broker_env(embedded: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("LABDISPATCH_VAR_DIR", str(embedded.var_dir))
    monkeypatch.delenv("LABDISPATCH_BROKER_URL", raising=False)
    return embedded


def test_broker_commands_start_report_and_stop_the_embedded_server(
    broker_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    url = embedded_broker(broker_env).url

    assert main(["broker", "status"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"broker: {url} (embedded)"
    assert "status: NOT ANSWERING" in out
    assert not embedded_running(broker_env)  # status never starts it

    assert main(["broker", "start"]) == 0
    pid = embedded_broker(broker_env).pid()
    assert f"(embedded, pid {pid}) answers" in capsys.readouterr().out

    assert main(["broker", "status"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"broker: {url} (embedded)",
        f"status: answers (pid {pid})",
    ]

    assert main(["broker", "stop"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert pid is not None and gone(pid)
    assert main(["broker", "stop"]) == 0
    assert "was not running" in capsys.readouterr().out


def test_broker_status_of_a_named_server_masks_its_password(
    broker_env: Settings,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LABDISPATCH_BROKER_URL", "redis://:s3cret@127.0.0.1:1/0")
    assert main(["broker", "status"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("broker: redis://:***@127.0.0.1:1/0 (LABDISPATCH_BROKER_URL)")
    assert "s3cret" not in captured.out + captured.err

    assert main(["broker", "start"]) == 2
    assert "can only start its embedded one" in capsys.readouterr().err

    monkeypatch.setenv("LABDISPATCH_BROKER_URL", redis_url)
    assert main(["broker", "status"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "status: answers"
    assert not broker_env.broker_dir.exists()
