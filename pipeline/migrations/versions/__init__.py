"""One hand-written revision per schema change; each must run on SQLite and PostgreSQL."""
