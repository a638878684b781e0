"""Statistics: each delivery carries its message's laboratory and reception time; indexes
for the reports and the dashboard.

The backfill copies the two values from `messages` (they never change), then the columns
become NOT NULL.

Revision ID: 0005_stats
Revises: 0004_api
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_stats"
down_revision: str | None = "0004_api"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What the statistics read of a delivery (`pipeline.ledger.models.STATS_COLUMNS`), carried
#: by the (laboratory, message_received_at) index on PostgreSQL (SQLite ignores INCLUDE).
_STATS_COLUMNS = [
    "state",
    "attempts",
    "accepted_at",
    "delivered_at",
    "read_at",
    "message_id",
    "channel_kind",
    "recipient_id",
    "recipient_key",
    "wanted",
]
_DELIVERY_INDEXES: dict[str, tuple[list[str], list[str]]] = {
    "ix_deliveries_laboratory_message_received_at": (
        ["laboratory", "message_received_at"],
        _STATS_COLUMNS,
    ),
    "ix_deliveries_read_at": (["read_at"], ["laboratory", "recipient_id"]),
    "ix_deliveries_updated_at": (["updated_at"], []),
}


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("laboratory", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("message_received_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.execute(
        "UPDATE deliveries SET"
        " laboratory = (SELECT m.laboratory FROM messages m WHERE m.id = deliveries.message_id),"
        " message_received_at ="
        " (SELECT m.received_at FROM messages m WHERE m.id = deliveries.message_id)"
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column("laboratory", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column(
            "message_received_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )
        for name, (columns, carried) in _DELIVERY_INDEXES.items():
            batch_op.create_index(name, columns, unique=False, postgresql_include=carried)
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_received_at_laboratory", ["received_at", "laboratory"], unique=False
        )
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_receipts_received_at",
            ["received_at"],
            unique=False,
            postgresql_include=["kind", "disposition", "delivery_id"],
        )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_kind_at", ["kind", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_kind_at")
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.drop_index("ix_receipts_received_at")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_received_at_laboratory")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        for name in reversed(list(_DELIVERY_INDEXES)):
            batch_op.drop_index(name)
        batch_op.drop_column("message_received_at")
        batch_op.drop_column("laboratory")
