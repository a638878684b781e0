"""One way to reach the database, whichever it is.

The same models and migrations run on PostgreSQL (production) and on a SQLite file (the
embedded default, so a fresh checkout works with no set-up). The differences that would
otherwise leak into every caller are settled here:

- constraint names come from one naming convention, so Alembic can find, alter and drop
  them on both engines (SQLite can only alter a table by copying it, which needs names);
- SQLite enforces foreign keys and uses WAL only when asked on each connection, and the
  stock `sqlite3` driver neither opens a transaction before DDL nor scopes SAVEPOINTs
  correctly, so we take over BEGIN ourselves (SQLAlchemy's documented recipe);
- timestamps are stored and returned as timezone-aware UTC, never naive local times.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from pipeline.errors import LabdispatchError
from pipeline.ledger.files import private_sqlite_file
from pipeline.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Every module that declares tables; imported before Alembic compares models and schema.
MODEL_MODULES = ("pipeline.recipients.models", "pipeline.ledger.models", "pipeline.access.models")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Execution option naming SQLite's BEGIN mode (DEFERRED, IMMEDIATE, EXCLUSIVE) for a
#: connection; IMMEDIATE takes the write lock at BEGIN instead of at the first write.
SQLITE_BEGIN = "labdispatch_sqlite_begin"

#: Held while migrating PostgreSQL, so two processes starting at once don't race on DDL.
_MIGRATION_LOCK_ID = 0x1AB_D15_0001


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DatabaseUnavailable(LabdispatchError):
    """The configured database cannot be opened or migrated."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on every engine.

    SQLite has no time zones and hands back naive datetimes; PostgreSQL hands back the
    session's zone. Naive input is refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def database_url(url: str) -> URL:
    """Parse a database URL; plain `postgresql://` means psycopg 3, the driver we ship."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str | URL) -> str:
    """The URL as it may appear in a message or a log: never with its password."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(settings: Settings) -> Engine:
    url = database_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        # The ledger readable by the service alone, journals included (`ledger.files`).
        private_sqlite_file(Path(url.database).expanduser(), settings.var_dir)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # The driver's own transaction handling is off; `_on_begin` emits BEGIN instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # Wait for a busy database rather than fail, from the very first statement.
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, connection_record: Any) -> None:
        # A COMMIT that fails (a deferred constraint, a full disk) leaves SQLite inside the
        # transaction, and SQLAlchemy, having issued the COMMIT, does not roll back when the
        # connection returns to the pool: every later BEGIN on it would fail.
        if dbapi_connection is not None and dbapi_connection.in_transaction:
            dbapi_connection.rollback()

    return engine


def all_metadata() -> MetaData:
    """The metadata of every model, for Alembic: models register on import."""
    for module in MODEL_MODULES:
        importlib.import_module(module)
    return Base.metadata


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic config built in code, so running needs no alembic.ini or working directory."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; a no-op when it is already there."""
    from alembic import command

    # Processes starting together (a worker and a command) must not both find an empty
    # schema and both create it: each engine serialises the upgrade its own way.
    with (
        engine.connect().execution_options(**{SQLITE_BEGIN: "IMMEDIATE"}) as connection,
        connection.begin(),
    ):
        if connection.dialect.name == "postgresql":
            # Transactional DDL: the lock and the whole upgrade commit together.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
            )
        command.upgrade(alembic_config(connection), "head")


def begin_write(session: Session) -> None:
    """Start the session's next transaction as a writer.

    On SQLite a transaction that reads, then writes after another process committed is
    refused at once (WAL snapshot), whatever the busy timeout; taking the write lock at
    BEGIN (IMMEDIATE) makes it wait its turn instead. PostgreSQL needs nothing here."""
    if not session.in_transaction():
        session.connection(execution_options={SQLITE_BEGIN: "IMMEDIATE"})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # Objects stay readable after commit: commands print what they just wrote.
    return sessionmaker(engine, expire_on_commit=False)


def open_database(settings: Settings) -> sessionmaker[Session]:
    """Connect and migrate: what a command does before touching the directory or ledger.

    Raises DatabaseUnavailable, with a one-line reason and never the password.
    """
    try:
        engine = make_engine(settings)
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        # The URL itself may hold a password: describe it, don't echo it.
        raise DatabaseUnavailable(
            f"LABDISPATCH_DATABASE_URL is not a usable database URL ({type(error).__name__}); "
            "use postgresql+psycopg://user@host/db or sqlite:///path.db"
        ) from error
    except ImportError as error:
        raise DatabaseUnavailable(
            f"the database driver is not installed ({error.name}); "
            "for PostgreSQL install labdispatch[postgres]"
        ) from error
    try:
        migrate(engine)
    except OperationalError as error:
        engine.dispose()
        raise DatabaseUnavailable(
            f"cannot open the database {safe_url(engine.url)}: {first_line(error.orig or error)}"
        ) from error
    return session_factory(engine)


def first_line(error: BaseException) -> str:
    """Driver errors run over several lines (hints, the SQL); a message needs one."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
