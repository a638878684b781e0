"""`labdispatch api serve` as a real process: a result posted over real HTTP is in the
ledger when the answer comes, its route task is in the broker, SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine, create_engine, select, text

from pipeline.db import open_database
from pipeline.ledger.models import Message
from pipeline.settings import Settings
from tests.support import eventually
from tests.workers.api.conftest import HL7, LAB_A, PATIENT_NAMES, result_of
from workers.cli import main
from workers.stack import free_port

REPO = Path(__file__).resolve().parents[2]
ROUTE_QUEUE = "labdispatch.route"  # written out: importing the Celery app would start a broker


def test_api_settings_are_read_from_the_environment() -> None:
    default = Settings.from_env({}).service
    given = Settings.from_env(
        {"LABDISPATCH_API_HOST": "0.0.0.0", "LABDISPATCH_API_PORT": "9443"}
    ).service

    assert (default.api_host, default.api_port) == ("127.0.0.1", 8080)
    assert (given.api_host, given.api_port) == ("0.0.0.0", 9443)


@pytest.fixture
def route_queue(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.delete(ROUTE_QUEUE)
    yield client
    client.delete(ROUTE_QUEUE)
    client.close()


def test_serve_takes_a_result_over_http_commits_it_and_stops_on_sigterm(
    cli_env: str, route_queue: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tokens", "create", "--lab", LAB_A]) == 0
    secret = capsys.readouterr().out.strip()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "api", "serve", "--port", str(port)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(process, f"{base}/healthz")
        response = httpx.post(
            f"{base}/v1/results",
            content=result_of(LAB_A, "SERVED-1"),
            headers={**HL7, "Authorization": f"Bearer {secret}"},
            timeout=30,
        )
        with open_database(Settings.from_env())() as session:
            stored = session.scalars(select(Message)).all()  # committed before the answer
        deadline = time.monotonic() + 30
        while not route_queue.llen(ROUTE_QUEUE) and time.monotonic() < deadline:
            time.sleep(0.02)
        queued = [json.loads(raw) for raw in route_queue.lrange(ROUTE_QUEUE, 0, -1)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read().decode(), process.stderr.read().decode()

    assert response.status_code == 200, response.text
    (entry,) = response.json()["messages"]
    assert [(m.id, m.laboratory, m.control_id, m.source) for m in stored] == [
        (entry["message_id"], LAB_A, "SERVED-1", "api")
    ]
    assert [q["headers"]["task"] for q in queued] == ["labdispatch.deliver"]
    assert queued[0]["headers"]["argsrepr"] == f"[[{entry['message_id']}]]"
    assert out == f"labdispatch: HTTP API on http://127.0.0.1:{port}\n"
    # One access line per call, the caller by number; no patient, no secret, no traceback.
    assert "POST /v1/results 200" in err and "token #1 (lab LABO-A)" in err
    assert "GET /healthz 200" in err
    assert secret not in err and "Traceback" not in err
    assert not any(name in err for name in PATIENT_NAMES)


def test_serve_on_a_port_in_use_says_so_in_one_line(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["api", "serve", "--port", str(port)])

    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"labdispatch: cannot listen for HTTP on 127.0.0.1:{port}: ")
    assert err.count("\n") == 1


def _wait_until_up(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            raise AssertionError(f"api serve exited: {process.stderr.read().decode()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("api serve did not answer /healthz within 60 s")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sigterm_stops_serve_promptly_while_a_report_is_still_running(
    cli_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report blocked in the database (here: on a lock another session holds) must not
    hold the stop: uvicorn cuts the call after LABDISPATCH_API_SHUTDOWN_TIMEOUT and the
    report's thread does not keep the process alive (it took ~15 s, or as long as the
    query ran)."""
    monkeypatch.setenv("LABDISPATCH_API_SHUTDOWN_TIMEOUT", "2")
    assert main(["tokens", "create", "--role", "billing"]) == 0
    secret = capsys.readouterr().out.strip()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "api", "serve", "--port", str(port)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    engine = create_engine(cli_env)
    holder = engine.connect()
    answers: list[httpx.Response | Exception] = []
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(process, f"{base}/healthz")
        holder.execute(text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))

        def ask() -> None:
            try:
                answers.append(
                    httpx.get(
                        f"{base}/v1/stats/deliveries?group_by=day",
                        headers={"Authorization": f"Bearer {secret}"},
                        timeout=60,
                    )
                )
            except httpx.HTTPError as error:
                answers.append(error)

        caller = threading.Thread(target=ask)
        caller.start()
        eventually(lambda: _waiting_on_a_lock(engine))  # the report is in the database
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = process.wait(20)
        took = time.monotonic() - stopping
        caller.join(30)
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
        if process.poll() is None:
            process.kill()
            process.wait(30)

    assert status == 0 and took < 8, took
    assert len(answers) == 1  # cut by the server, or answered 503: never left hanging


def _waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        waiting = connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
        )
    return bool(waiting)
