"""Shared fixtures: every database test runs on SQLite and on a real PostgreSQL.

PostgreSQL tests get a fresh database each (creating one takes ~40 ms here) and drop it
afterwards. An unreachable server fails those tests with the reason: a skipped
PostgreSQL run would let a SQLite-only bug through unnoticed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from pipeline.db import database_url as parse_database_url
from pipeline.db import make_engine, migrate, safe_url, session_factory
from pipeline.settings import Settings
from tests.smtp_relay import Relay, RelayFactory, RelayHandler
from workers.bench.scratch import scratch_database

POSTGRES_ADMIN_URL = os.environ.get(
    "LABDISPATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    engine = create_engine(
        parse_database_url(POSTGRES_ADMIN_URL),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        reason = str(error.orig or error).strip().splitlines()[0]
        pytest.fail(
            f"PostgreSQL is not reachable at {safe_url(POSTGRES_ADMIN_URL)} ({reason}). "
            "Start it, or point LABDISPATCH_TEST_POSTGRES_URL at a server where this user "
            "may create databases.",
            pytrace=False,
        )
    yield engine
    engine.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, reachable at the URL given."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'labdispatch.db'}"
        return
    with scratch_postgres(request.getfixturevalue("postgres_admin")) as url:
        yield url


def scratch_postgres(admin: Engine) -> contextlib.AbstractContextManager[str]:
    """A fresh PostgreSQL database on the admin connection's server, dropped afterwards."""
    return scratch_database(admin, "labdispatch_test")


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path / "var", database_url=database_url)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on a freshly migrated database."""
    migrate(engine)
    with session_factory(engine)() as session:
        yield session


@pytest.fixture
def cli_env(
    database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Point the command line at the test database and the test Redis, as an operator
    would with env vars."""
    monkeypatch.setenv("LABDISPATCH_DATABASE_URL", database_url)
    monkeypatch.setenv("LABDISPATCH_BROKER_URL", redis_url)
    monkeypatch.setenv("LABDISPATCH_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("LABDISPATCH_DEBUG", raising=False)
    if not database_url.startswith("sqlite"):
        # Beside PostgreSQL, an operator names the storage key (it is not made up in var/).
        key_file = tmp_path / "keys" / "storage.key"
        key_file.parent.mkdir()
        key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        key_file.chmod(0o600)  # as docs/delivery.md says (else: made so, with a warning)
        monkeypatch.setenv("LABDISPATCH_STORAGE_KEY_FILE", str(key_file))
    return database_url


# --- certificates and directory files --------------------------------------------------------

CertificateMaker = Callable[..., bytes]


@pytest.fixture(scope="session")
def _certificate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def make_certificate(_certificate_key: ec.EllipticCurvePrivateKey) -> CertificateMaker:
    """PEM bytes of a self-signed certificate for `common_name`, valid over the given days
    relative to now (negative = in the past)."""

    def make(common_name: str, *, valid_from_days: int = -1, valid_to_days: int = 365) -> bytes:
        now = datetime.now(UTC).replace(microsecond=0)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(_certificate_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + timedelta(days=valid_from_days))
            .not_valid_after(now + timedelta(days=valid_to_days))
            .sign(_certificate_key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    return make


@pytest.fixture
def directory_dir(tmp_path: Path, make_certificate: CertificateMaker) -> Path:
    """A folder with the directory CSV fixtures and the certificates they name."""
    folder = tmp_path / "directory"
    shutil.copytree(FIXTURES / "directory", folder)
    certs = folder / "certs"
    certs.mkdir()
    (certs / "dr-martin.pem").write_bytes(make_certificate("Dr Claire Martin"))
    (certs / "expired.pem").write_bytes(
        make_certificate("Dr Paul Bernard", valid_from_days=-400, valid_to_days=-35)
    )
    (certs / "not-a-certificate.pem").write_text("this is not PEM\n")
    return folder


# --- a real SMTP relay ------------------------------------------------------------------------


@pytest.fixture
def start_relay() -> Iterator[RelayFactory]:
    """Starts relays with aiosmtpd options (tls_context, authenticator, …); stops them all
    after the test."""
    relays: list[Relay] = []

    def start(handler: RelayHandler | None = None, **options: Any) -> Relay:
        relay = Relay(handler or RelayHandler(), **options)
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        relay.stop()


@pytest.fixture
def relay(start_relay: RelayFactory) -> Relay:
    """A plain relay: no TLS, no AUTH, no DSN."""
    return start_relay()


# --- a real Redis -----------------------------------------------------------------------------

#: Database 15, not 0: the suite may run beside a developer's own data in that Redis; tests
#: keep to this database and may empty it.
REDIS_TEST_URL = os.environ.get("LABDISPATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session", autouse=True)
def _celery_app_on_the_test_redis() -> None:
    """`workers.celery_app` makes its app at import, from the environment of that moment:
    imported first by a test that set no broker URL, it started an embedded Redis under the
    checkout's var/ and left it running after the suite. Import it once, on the test Redis
    (making the app connects to nothing); tests that need another broker make their own app."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LABDISPATCH_BROKER_URL", REDIS_TEST_URL)
        import workers.celery_app  # noqa: F401


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server the broker tests use (scripts/services starts one). An unreachable
    server fails those tests with the reason: skipping them would hide broker bugs."""
    from workers.broker import BrokerUnavailable, check

    try:
        check(REDIS_TEST_URL, timeout=5.0)
    except BrokerUnavailable as error:
        pytest.fail(
            f"Redis is not reachable for the tests ({error}). Run scripts/services (it starts "
            "one at 127.0.0.1:6379), or point LABDISPATCH_TEST_REDIS_URL at a server whose "
            "database the tests may use.",
            pytrace=False,
        )
    return REDIS_TEST_URL
