"""The HTTP API over a real ledger (SQLite and PostgreSQL), called through FastAPI's
TestClient, with tokens of two laboratories and of every role.

The app's two exits to the broker are seams: `after_commit` (results to route) and
`requeue` (replayed deliveries) are replaced by collectors, so a test sees exactly what
would have been queued. Everything else is the real thing: ledger, intake, committer.

Results are the French fixture (`fr_prt_idnps_utf8.hl7`) with MSH-4 and MSH-10 rewritten,
so two laboratories send the same clinical content; its patient is DUPONT^Hélène, which
no log line may ever show.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from pipeline.access.tokens import create_token, revoke_token
from pipeline.db import make_engine, migrate, session_factory, utcnow
from pipeline.delivery.route import route_stage
from pipeline.delivery.seal import seal_stage
from pipeline.delivery.services import DeliveryServices
from pipeline.recipients.directory_csv import import_directory
from pipeline.settings import Settings
from tests.conftest import FIXTURES, scratch_postgres
from tests.pipeline.delivery.scenario import directory_csv
from tests.support import set_msh
from workers.api.app import create_app

LAB_A = "LABO-A"
LAB_B = "LABO-B"
RESULT = (FIXTURES / "hl7" / "fr_prt_idnps_utf8.hl7").read_bytes()
#: PID-5 of the fixture: the patient's name, which must never reach a log.
PATIENT_NAMES = ("DUPONT", "Hélène", "H\\u00e9l\\u00e8ne")
HL7 = {"Content-Type": "application/hl7-v2"}

#: Callers of the access tests: a token name (see `Api.tokens`), or None for no token.
CALLERS = ("lab_a", "lab_b", "ops", "billing", "admin", "revoked", None)


def result_of(laboratory: str, control_id: str, **msh: str) -> bytes:
    """The fixture as `laboratory` would send it under `control_id` (MSH-n as `msh_n=`)."""
    values = {4: laboratory, 10: control_id}
    values.update({int(name.removeprefix("msh_")): value for name, value in msh.items()})
    return set_msh(RESULT, values)


@dataclass
class Api:
    """A running app (its lifespan entered), its ledger, tokens and collectors."""

    client: TestClient
    sessions: sessionmaker[Session]
    settings: Settings
    #: Secrets by name: lab_a, lab_b, ops, billing, admin, revoked.
    tokens: dict[str, str]
    token_ids: dict[str, int]
    routed: list[int] = field(default_factory=list)
    requeued: list[tuple[list[int], list[int]]] = field(default_factory=list)
    #: Set to make the requeue seam fail as an unreachable broker does.
    broker_down: bool = False
    _routed_lock: threading.Lock = field(default_factory=threading.Lock)

    def auth(self, caller: str | None) -> dict[str, str]:
        return {} if caller is None else {"Authorization": f"Bearer {self.tokens[caller]}"}

    def post_result(self, data: bytes, caller: str | None, **headers: str) -> httpx.Response:
        response: httpx.Response = self.client.post(
            "/v1/results", content=data, headers={**HL7, **self.auth(caller), **headers}
        )
        return response

    def after_commit(self, message_ids: Sequence[int]) -> None:
        with self._routed_lock:
            self.routed.extend(message_ids)

    def requeue(self, seal: Sequence[int], send: Sequence[int]) -> None:
        if self.broker_down:
            raise ConnectionRefusedError("the broker does not answer")
        self.requeued.append((list(seal), list(send)))


def api_settings_for(settings: Settings, folder: Path, broker_url: str) -> Settings:
    """Settings as production has them: a named storage key, a broker (the test Redis)."""
    key_file = folder / "storage.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return replace(
        settings,
        storage_key_file=key_file,
        service=replace(settings.service, broker_url=broker_url),
    )


@contextlib.contextmanager
def running_api(settings: Settings, engine: Engine) -> Iterator[Api]:
    migrate(engine)
    sessions = session_factory(engine)
    tokens: dict[str, str] = {}
    token_ids: dict[str, int] = {}
    with sessions.begin() as session:
        for name, role, laboratory in (
            ("lab_a", "lab", LAB_A),
            ("lab_b", "lab", LAB_B),
            ("ops", "ops", None),
            ("billing", "billing", None),
            ("admin", "admin", None),
            ("revoked", "admin", None),
        ):
            token, secret = create_token(
                session, role=role, laboratory=laboratory, label=name, now=utcnow()
            )
            tokens[name], token_ids[name] = secret, token.id
        revoke_token(session, token_ids["revoked"], now=utcnow())
    holder: dict[str, Api] = {}
    app = create_app(
        settings,
        sessions=sessions,
        after_commit=lambda ids: holder["api"].after_commit(ids),
        requeue=lambda seal, send: holder["api"].requeue(seal, send),
    )
    with TestClient(app) as client:
        holder["api"] = Api(client, sessions, settings, tokens, token_ids)
        yield holder["api"]


@pytest.fixture
def api_settings(settings: Settings, tmp_path: Path, redis_url: str) -> Settings:
    return api_settings_for(settings, tmp_path, redis_url)


@pytest.fixture
def api(api_settings: Settings, engine: Engine) -> Iterator[Api]:
    """The API over an empty ledger (tokens only)."""
    with running_api(api_settings, engine) as running:
        yield running


def fail_deliveries(api: Api, message_ids: Sequence[int]) -> list[int]:
    """Route and seal messages as the workers would, with a directory that knows their
    recipients (Dr Martin by mail, Dr Leroy by mailbox) but holds no certificate for
    them: sealing fails, and the deliveries end `failed`. Returns their IDs."""
    folder = api.settings.var_dir / "directory"
    folder.mkdir(parents=True, exist_ok=True)
    with api.sessions.begin() as session:
        assert not import_directory(session, directory_csv(folder)).errors
    with DeliveryServices.from_settings(api.settings) as services:
        routed = route_stage(api.sessions, message_ids, services)
        seal_stage(api.sessions, routed.next_ids, services)
    return routed.next_ids


def posted_id(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    (entry,) = response.json()["messages"]
    message_id: int = entry["message_id"]
    return message_id


# --- one ledger for a whole module of access checks ----------------------------------------


@dataclass
class World:
    """Two laboratories' results, each with failed deliveries; see `world`."""

    api: Api
    ids: dict[str, int]  # control ID -> message ID


def _build_world(settings: Settings) -> Iterator[World]:
    engine = make_engine(settings)
    try:
        with running_api(settings, engine) as running:
            ids = {}
            for caller, laboratory in (("lab_a", LAB_A), ("lab_b", LAB_B)):
                for number in (1, 2, 3):
                    control_id = f"{laboratory}-{number}"
                    ids[control_id] = posted_id(
                        running.post_result(result_of(laboratory, control_id), caller)
                    )
            fail_deliveries(running, sorted(ids.values()))
            yield World(running, ids)
    finally:
        engine.dispose()


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[World]:
    """LABO-A and LABO-B have sent three results each (LABO-A-1..3, LABO-B-1..3), whose
    deliveries all failed. Shared by a module's tests: those that change it say how."""
    folder = tmp_path_factory.mktemp("api-world")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'var' / 'labdispatch.db'}"
        settings = api_settings_for(
            Settings(var_dir=folder / "var", database_url=url), folder, redis_url
        )
        yield from _build_world(settings)
        return
    with scratch_postgres(request.getfixturevalue("postgres_admin")) as url:
        settings = api_settings_for(
            Settings(var_dir=folder / "var", database_url=url), folder, redis_url
        )
        yield from _build_world(settings)
