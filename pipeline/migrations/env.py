"""Alembic's entry point, used both by `pipeline.db.migrate` and by developers' `alembic`.

`migrate` hands over an open connection (in `config.attributes`), so the upgrade runs in
the caller's transaction. From the command line the URL comes from alembic.ini's
`sqlalchemy.url` if set, else from `LABDISPATCH_DATABASE_URL` like every other command.
Batch mode is on so the same revision can alter tables on SQLite, which can't ALTER most
things in place.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from pipeline.db import all_metadata, make_engine
from pipeline.settings import Settings

config = context.config
if config.config_file_name is not None:  # a developer's `alembic` run, not `migrate`
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = all_metadata()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    settings = Settings.from_env()
    url = config.get_main_option("sqlalchemy.url")
    if url:
        settings = Settings(var_dir=settings.var_dir, database_url=url)
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
