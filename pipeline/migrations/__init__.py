"""Alembic migrations for every labdispatch table; `pipeline.db.migrate` runs them."""
