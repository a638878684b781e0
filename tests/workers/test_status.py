"""`labdispatch status`: queue depths from the real Redis, everything else from the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from tests.pipeline.delivery.scenario import directory_csv, oru
from workers.cli import main

SEND_QUEUE = "labdispatch.send"  # written out: importing the Celery app would start a broker


def test_status_shows_queue_depths_deliveries_by_state_and_the_last_hour(
    cli_env: str, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["directory", "import", str(directory_csv(tmp_path))]) == 0
    results = tmp_path / "results.hl7"
    results.write_bytes(b"PID|this is not a message\r" + oru("ST-1") + oru("ST-2"))
    main(["deliver", "--no-send", str(results)])  # 2 recorded and routed, 1 refused
    client = redis.Redis.from_url(redis_url)
    client.delete(SEND_QUEUE)
    client.lpush(SEND_QUEUE, b"{}", b"{}", b"{}")  # three tasks waiting for a worker
    capsys.readouterr()

    try:
        status = main(["status", "--json"])
    finally:
        client.delete(SEND_QUEUE)
    report = json.loads(capsys.readouterr().out)

    assert status == 0
    assert report["broker"]["answering"] is True and report["queues"][SEND_QUEUE] == 3
    assert report["messages"]["routed"] == 2
    assert report["deliveries"]["pending"] == 4  # two recipients each (Martin, Leroy)
    assert report["oldest_open_delivery_seconds"] is not None
    assert report["last_hour"] == {"received": 2, "rejected": 1, "failed": 0}


def test_status_without_a_running_embedded_broker_says_so_and_starts_nothing(
    cli_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("LABDISPATCH_BROKER_URL")

    status = main(["status"])
    out = capsys.readouterr().out

    assert status == 1
    assert "embedded broker is not running" in out and "labdispatch broker start" in out
    assert "deliveries  pending 0" in out
    assert not (tmp_path / "var" / "broker" / "redis.pid").exists()


def test_queue_reader_names_the_celery_apps_queues() -> None:
    from workers import celery_app, queues

    assert queues.STAGE_QUEUES == celery_app.QUEUES
    assert queues.PRIORITY_SUFFIXES == celery_app.PRIORITY_SUFFIXES
