"""/healthz and /readyz: no token, no URL in the answer, the embedded broker never started."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from pipeline.db import make_engine, session_factory
from pipeline.settings import Settings
from tests.workers.api.conftest import Api
from workers.api.app import create_app
from workers.stack import free_port


@contextmanager
def client_for(settings: Settings) -> Iterator[TestClient]:
    """The app over whatever ledger the settings name, reachable or not."""
    engine = make_engine(settings)
    try:
        app = create_app(settings, sessions=session_factory(engine), after_commit=lambda ids: None)
        with TestClient(app) as client:
            yield client
    finally:
        engine.dispose()


def test_healthz_answers_up_to_anyone(api: Api) -> None:
    response = api.client.get("/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "up"})


def test_readyz_is_ready_when_the_ledger_and_the_broker_answer(api: Api) -> None:
    response = api.client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "ledger": "up", "broker": "up"}


def test_readyz_names_a_broker_that_does_not_answer_and_logs_no_password(
    api_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    broker = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    settings = replace(api_settings, service=replace(api_settings.service, broker_url=broker))

    with client_for(settings) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "ledger": "up", "broker": "down"}
    assert "does not answer" in caplog.text and "redis://:***@127.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text + response.text


def test_readyz_looks_at_the_embedded_broker_and_never_starts_it(
    api_settings: Settings, tmp_path: Path
) -> None:
    settings = replace(
        api_settings,
        var_dir=tmp_path / "embedded",
        service=replace(api_settings.service, broker_url=""),
    )

    with client_for(settings) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["broker"] == "down"
    assert not (settings.broker_dir / "redis.pid").exists()
    assert not (settings.broker_dir / "redis.sock").exists()


def test_readyz_names_a_ledger_that_cannot_be_reached(
    api_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_url(api_settings.database_url)
    if url.get_backend_name() == "sqlite":
        broken = url.set(database=str(tmp_path))  # a directory: SQLite cannot open it
    else:
        broken = url.set(password="hunter2", database=f"missing_{uuid.uuid4().hex[:12]}")
    settings = replace(api_settings, database_url=broken.render_as_string(hide_password=False))
    caplog.set_level(logging.WARNING, logger="labdispatch.api")

    with client_for(settings) as client:
        ready = client.get("/readyz")
        traced = client.get("/v1/messages/1", headers={"Authorization": "Bearer ldt_x"})

    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready", "ledger": "down", "broker": "up"}
    assert "readiness: the ledger" in caplog.text and "hunter2" not in caplog.text
    # A route that needs the ledger (to read the token) says to try again: 503, not 500.
    assert traced.status_code == 503
    assert traced.json() == {"error": "the result ledger is unavailable; try again later"}
