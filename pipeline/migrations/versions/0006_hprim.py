"""HPRIM intake: each message's format; each laboratory's character set.

`messages.format` says what the laboratory sent (existing rows are HL7 v2);
`laboratories.charset` is read when a message declares no character set.

Revision ID: 0006_hprim
Revises: 0005_stats
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_hprim"
down_revision: str | None = "0005_stats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("format", sa.String(16), nullable=False, server_default="hl7v2"))
    with op.batch_alter_table("laboratories") as batch:
        batch.add_column(sa.Column("charset", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("laboratories") as batch:
        batch.drop_column("charset")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("format")
