"""Fewer bytes written per result: indexes nobody reads dropped, message bytes stored as is.

Each index is written with every row (and, for `deliveries` and `messages`, again on every
update that changes a state): at ~10 events, 2 deliveries and one message per result, an
index no query needs costs the ledger's writes more than it ever saves.

- `ix_messages_received_at`: `ix_messages_received_at_laboratory` starts with the column.
- `ix_deliveries_message_id`: the unique key (message, recipient, channel) starts with it.
- `ix_events_delivery_id`: events are read by message (the trace) or by ID (the metrics).
- `ix_events_kind_at` becomes `ix_events_duplicate_at`, partial: the statistics ask only
  for the resends of a period, so the other kinds write no entry.

On PostgreSQL the encrypted message bytes are stored EXTERNAL (out of line, not
compressed): ciphertext does not compress (the application compresses before encrypting,
`pipeline.ledger.storage`), so trying was wasted work; and a `toast_tuple_target` of 512
keeps them out of line even when small, so a message's state change copies a pointer,
not its bytes.

Revision ID: 0008_lean_writes
Revises: 0007_national_directory
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_lean_writes"
down_revision: str | None = "0007_national_directory"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DUPLICATES = sa.text("kind = 'duplicate'")


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_received_at")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_message_id")
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_delivery_id")
        batch.drop_index("ix_events_kind_at")
        batch.create_index(
            "ix_events_duplicate_at",
            ["at"],
            unique=False,
            postgresql_where=_DUPLICATES,
            sqlite_where=_DUPLICATES,
        )
    if op.get_bind().dialect.name == "postgresql":
        for table in ("messages", "rejections"):
            op.execute(f"ALTER TABLE {table} ALTER COLUMN raw_encrypted SET STORAGE EXTERNAL")
            op.execute(f"ALTER TABLE {table} SET (toast_tuple_target = 512)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("messages", "rejections"):
            op.execute(f"ALTER TABLE {table} RESET (toast_tuple_target)")
            op.execute(f"ALTER TABLE {table} ALTER COLUMN raw_encrypted SET STORAGE EXTENDED")
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_duplicate_at")
        batch.create_index("ix_events_kind_at", ["kind", "at"], unique=False)
        batch.create_index("ix_events_delivery_id", ["delivery_id"], unique=False)
    with op.batch_alter_table("deliveries") as batch:
        batch.create_index("ix_deliveries_message_id", ["message_id"], unique=False)
    with op.batch_alter_table("messages") as batch:
        batch.create_index("ix_messages_received_at", ["received_at"], unique=False)
