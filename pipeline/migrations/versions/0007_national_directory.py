"""National directory import: who keeps each recipient; MSSanté mailboxes and their
"Dématérialisation" flag.

`recipients.source` is `local` for every existing row (the laboratory's own entries: a
national import never touches them); `recipient_channels.accepts_results` is NULL for every
existing channel (nobody said); the channel kind `mssante` is allowed.

Revision ID: 0007_national_directory
Revises: 0006_hprim
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision: str = "0007_national_directory"
down_revision: str | None = "0006_hprim"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS_BEFORE = "kind IN ('mail', 'mailbox', 'https')"
_KINDS_AFTER = "kind IN ('mail', 'mailbox', 'https', 'mssante')"


def _drop_check(batch: BatchOperations, table: str, column: str) -> None:
    """Drop the CHECK on `column`, by the name the database has: 0001 named the channel
    kind's twice over (`ck_recipient_channels_ck_recipient_channels_kind`)."""
    for check in sa.inspect(op.get_bind()).get_check_constraints(table):
        name = check["name"] or ""
        if name.endswith(f"_{column}"):
            batch.drop_constraint(op.f(name), type_="check")


def upgrade() -> None:
    with op.batch_alter_table("recipients") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="local"))
        batch.create_check_constraint("source", "source IN ('local', 'national')")
    with op.batch_alter_table("recipient_channels") as batch:
        batch.add_column(sa.Column("accepts_results", sa.Boolean(), nullable=True))
        _drop_check(batch, "recipient_channels", "kind")
        batch.create_check_constraint("kind", _KINDS_AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM recipient_channels WHERE kind = 'mssante'")
    with op.batch_alter_table("recipient_channels") as batch:
        _drop_check(batch, "recipient_channels", "kind")
        batch.create_check_constraint("kind", _KINDS_BEFORE)
        batch.drop_column("accepts_results")
    with op.batch_alter_table("recipients") as batch:
        _drop_check(batch, "recipients", "source")
        batch.drop_column("source")
