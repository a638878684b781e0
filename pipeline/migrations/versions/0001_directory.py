"""The recipient directory.

Laboratories, recipients, their identifiers, local codes, channels and certificates.

Revision ID: 0001_directory
Revises:
Create Date: 2025-01-01

Constraint and index names are spelled out (they follow `pipeline.db.NAMING_CONVENTION`)
so later revisions can refer to them on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_directory"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "laboratories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_laboratories"),
        sa.UniqueConstraint("code", name="uq_laboratories_code"),
    )
    op.create_table(
        "recipients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("specialty", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_recipients"),
        sa.UniqueConstraint("key", name="uq_recipients_key"),
        sa.CheckConstraint(
            "kind IN ('clinician', 'organisation', 'patient')", name="ck_recipients_kind"
        ),
    )
    op.create_table(
        "recipient_identifiers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("id_type", sa.String(16), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("authority", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_recipient_identifiers"),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["recipients.id"],
            name="fk_recipient_identifiers_recipient_id_recipients",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("id_type", "value", name="uq_recipient_identifiers_id_type_value"),
    )
    op.create_index(
        "ix_recipient_identifiers_recipient_id", "recipient_identifiers", ["recipient_id"]
    )
    op.create_table(
        "local_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("laboratory_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_local_codes"),
        sa.ForeignKeyConstraint(
            ["laboratory_id"],
            ["laboratories.id"],
            name="fk_local_codes_laboratory_id_laboratories",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["recipients.id"],
            name="fk_local_codes_recipient_id_recipients",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("laboratory_id", "code", name="uq_local_codes_laboratory_id_code"),
    )
    op.create_index("ix_local_codes_recipient_id", "local_codes", ["recipient_id"])
    op.create_table(
        "recipient_channels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("address", sa.String(500), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_recipient_channels"),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["recipients.id"],
            name="fk_recipient_channels_recipient_id_recipients",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "recipient_id",
            "kind",
            "address",
            name="uq_recipient_channels_recipient_id_kind_address",
        ),
        sa.CheckConstraint(
            "kind IN ('mail', 'mailbox', 'https')", name="ck_recipient_channels_kind"
        ),
    )
    op.create_index(
        "ix_recipient_channels_recipient_id_priority",
        "recipient_channels",
        ["recipient_id", "priority"],
    )
    op.create_table(
        "recipient_certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_recipient_certificates"),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["recipients.id"],
            name="fk_recipient_certificates_recipient_id_recipients",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "fingerprint_sha256", name="uq_recipient_certificates_fingerprint_sha256"
        ),
    )
    op.create_index(
        "ix_recipient_certificates_recipient_id", "recipient_certificates", ["recipient_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_recipient_certificates_recipient_id", table_name="recipient_certificates")
    op.drop_table("recipient_certificates")
    op.drop_index("ix_recipient_channels_recipient_id_priority", table_name="recipient_channels")
    op.drop_table("recipient_channels")
    op.drop_index("ix_local_codes_recipient_id", table_name="local_codes")
    op.drop_table("local_codes")
    op.drop_index("ix_recipient_identifiers_recipient_id", table_name="recipient_identifiers")
    op.drop_table("recipient_identifiers")
    op.drop_table("recipients")
    op.drop_table("laboratories")
