from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.db import (
    DatabaseUnavailable,
    alembic_config,
    all_metadata,
    make_engine,
    migrate,
    open_database,
    session_factory,
)
from pipeline.recipients.models import Laboratory, LocalCode
from pipeline.settings import Settings

LEDGER_TABLES = {"messages", "deliveries", "attempts", "events", "receipts"}
DIRECTORY_TABLES = {
    "laboratories",
    "recipients",
    "recipient_identifiers",
    "local_codes",
    "recipient_channels",
    "recipient_certificates",
}


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_upgrade_creates_the_directory_and_ledger_tables_at_head(engine: Engine) -> None:
    migrate(engine)

    assert set(inspect(engine).get_table_names()) >= DIRECTORY_TABLES | LEDGER_TABLES
    assert _current(engine) == _head()


def test_second_upgrade_is_a_no_op_and_keeps_data(engine: Engine) -> None:
    migrate(engine)
    with session_factory(engine).begin() as session:
        session.add(Laboratory(code="LABO-NORD", name="Laboratoire du Nord"))

    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.strip().split()[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        migrate(engine)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    changes = [s for s in statements if s in {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE"}]
    assert changes == []
    with session_factory(engine)() as session:
        assert session.scalars(select(Laboratory.code)).all() == ["LABO-NORD"]


def test_models_and_migrations_agree(engine: Engine) -> None:
    """What `alembic check` does: autogenerate against the migrated schema finds nothing."""
    migrate(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "render_as_batch": True}
        )
        differences = compare_metadata(context, all_metadata())
    assert differences == []


def test_downgrade_to_base_then_upgrade_again(engine: Engine) -> None:
    migrate(engine)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert not DIRECTORY_TABLES & set(inspect(engine).get_table_names())

    migrate(engine)
    assert _current(engine) == _head()


def test_foreign_keys_are_enforced(session: Session) -> None:
    session.add(LocalCode(laboratory_id=999, code="DR9", recipient_id=999))
    with pytest.raises(IntegrityError):
        session.flush()


def test_open_database_works_with_zero_set_up(tmp_path: Path) -> None:
    var_dir = tmp_path / "fresh" / "var"
    settings = Settings.from_env({"LABDISPATCH_VAR_DIR": str(var_dir)})

    sessions = open_database(settings)

    assert (var_dir / "labdispatch.db").is_file()
    with sessions() as session:
        assert session.scalars(select(Laboratory)).all() == []
        journal = session.execute(text("PRAGMA journal_mode")).scalar()
        assert journal == "wal"
    engine = sessions.kw["bind"]
    engine.dispose()


def test_unreachable_database_is_one_readable_error_without_the_password() -> None:
    settings = Settings(
        var_dir=Path("var"), database_url="postgresql://ops:s3cret@127.0.0.1:1/labdispatch"
    )
    with pytest.raises(DatabaseUnavailable) as raised:
        open_database(settings)
    message = str(raised.value)
    assert "s3cret" not in message
    assert "127.0.0.1:1" in message
    assert "\n" not in message


def _migrate_in_child(settings: Settings) -> str:
    """Runs in a forked process: what went wrong, or "" (exceptions may not pickle)."""
    engine = make_engine(settings)
    try:
        migrate(engine)
    except Exception as error:
        return repr(error)
    finally:
        engine.dispose()
    return ""


def test_processes_starting_together_migrate_once(settings: Settings) -> None:
    # Processes, not threads: that is how workers and commands start, and Alembic's
    # environment is process-global.
    with multiprocessing.get_context("fork").Pool(3) as pool:
        failures = pool.map(_migrate_in_child, [settings] * 3)

    assert failures == ["", "", ""]
    engine = make_engine(settings)
    try:
        assert _current(engine) == _head()
    finally:
        engine.dispose()


def test_unusable_url_is_described_without_echoing_it() -> None:
    settings = Settings(var_dir=Path("var"), database_url="nosuchdb://ops:s3cret@host/db")
    with pytest.raises(DatabaseUnavailable, match="not a usable database URL") as raised:
        open_database(settings)
    assert "s3cret" not in str(raised.value)
