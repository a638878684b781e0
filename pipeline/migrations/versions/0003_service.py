"""Running as a service: delivery leases, re-queue and notice times, the quarantine.

Revision ID: 0003_service
Revises: 0002_ledger
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_service"
down_revision: str | None = "0002_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_state"), ["state"], unique=False)
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_name", sa.String(length=500), nullable=False),
        sa.Column("laboratory", sa.String(length=64), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("error", sa.String(length=64), nullable=False),
        sa.Column("hl7_code", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("raw_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("storage_key_id", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejections")),
    )
    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rejections_received_at"), ["received_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_rejections_laboratory_received_at"),
            ["laboratory", "received_at"],
            unique=False,
        )
    if op.get_bind().dialect.name == "postgresql":
        # Ciphertext does not compress: spare PostgreSQL the attempt on every row it stores
        # out of line (it tries by default), which cost as much as the write itself.
        for table, column in (
            ("messages", "raw_encrypted"),
            ("deliveries", "envelope"),
            ("rejections", "raw_encrypted"),
        ):
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("rejections")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_state"))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("notified_at")
        batch_op.drop_column("queued_at")
        batch_op.drop_column("leased_until")
