"""One size limit for every intake: `LABDISPATCH_MAX_MESSAGE_BYTES`, read by the real
`mllp serve` and `api serve` processes (the folder watcher's side is in test_watch.py).
Each refuses a message over it with a reason naming the limit, and takes one under it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from pipeline.db import open_database
from pipeline.ledger.models import Message
from pipeline.settings import Settings
from tests.workers.api.conftest import HL7, LAB_A, result_of
from tests.workers.mllp.test_commands import _read_line
from tests.workers.test_api_cli import _wait_until_up
from workers.cli import main
from workers.mllp.client import MllpClient
from workers.stack import free_port

REPO = Path(__file__).resolve().parents[2]
LIMIT = 4000
DEADLINE = 60


def padded(message: bytes, size: int) -> bytes:
    """The message with a note segment making it `size` bytes long (still valid HL7)."""
    body = message.rstrip(b"\r\n") + b"\rNTE|1||"
    return body + b"x" * (size - len(body) - 1) + b"\r"


@pytest.fixture
def limited(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LABDISPATCH_MAX_MESSAGE_BYTES", str(LIMIT))
    return cli_env


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(DEADLINE)


@pytest.fixture
def mllp_port(limited: str) -> Iterator[int]:
    process = _start("mllp", "serve", "--host", "127.0.0.1", "--port=0")
    try:
        assert process.stdout is not None
        line = _read_line(process.stdout, DEADLINE)
        assert line.startswith("labdispatch: MLLP listener on 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        _stop(process)


def test_mllp_serve_refuses_a_message_over_the_configured_limit(mllp_port: int) -> None:
    under = padded(result_of(LAB_A, "UNDER-1"), LIMIT)
    over = padded(result_of(LAB_A, "OVER-1"), LIMIT + 1)

    with MllpClient("127.0.0.1", mllp_port, timeout=30) as client:
        taken = client.exchange(under)
        refused = client.exchange(over)

    assert taken.code == "AA"
    assert (refused.code, refused.control_id) == ("AR", "OVER-1")
    assert any(f"larger than this listener's limit of {LIMIT} bytes" in r for r in refused.reasons)


def test_api_serve_refuses_a_body_over_the_configured_limit(
    limited: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tokens", "create", "--lab", LAB_A]) == 0
    secret = capsys.readouterr().out.strip()
    port = free_port()
    process = _start("api", "serve", "--port", str(port))
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(process, f"{base}/healthz")
        headers = {**HL7, "Authorization": f"Bearer {secret}"}
        over = httpx.post(
            f"{base}/v1/results",
            content=padded(result_of(LAB_A, "OVER-1"), LIMIT + 1),
            headers=headers,
            timeout=30,
        )
        under = httpx.post(
            f"{base}/v1/results",
            content=padded(result_of(LAB_A, "UNDER-1"), LIMIT),
            headers=headers,
            timeout=30,
        )
    finally:
        _stop(process)

    assert over.status_code == 413
    assert f"body over {LIMIT} bytes" in over.json()["error"]
    assert under.status_code == 200, under.text
    with open_database(Settings.from_env())() as session:
        assert session.scalars(select(Message.control_id)).all() == ["UNDER-1"]


def test_a_limit_that_is_not_a_positive_number_is_refused_in_one_line(
    cli_env: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABDISPATCH_MAX_MESSAGE_BYTES", "16M")
    (tmp_path / "drop").mkdir()

    assert main(["watch", str(tmp_path / "drop"), "--once"]) == 2

    assert capsys.readouterr().err == (
        "labdispatch: LABDISPATCH_MAX_MESSAGE_BYTES must be a whole number, not '16M'\n"
    )
