"""API tokens: what a caller presents, stored only as a hash.

A token is a long random secret shown once, at creation; the ledger keeps its SHA-256, so
a copy of the database lets nobody call the API. The secret has 256 bits of entropy, so a
fast hash is enough (a slow password hash protects guessable secrets, not these).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.db import Base, UTCDateTime, utcnow

#: lab: one laboratory's own results and statistics; ops: everything operational (traces,
#: replay, dashboard, metrics); billing: statistics of every laboratory; admin: all of it.
ROLES = ("lab", "ops", "billing", "admin")


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = (
        CheckConstraint("role IN ('lab', 'ops', 'billing', 'admin')", name="role"),
        CheckConstraint("(role = 'lab') = (laboratory IS NOT NULL)", name="lab_scope"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Lowercase hex SHA-256 of the secret; the lookup key.
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    #: MSH-4 of the laboratory a `lab` token belongs to; NULL for the other roles.
    laboratory: Mapped[str | None] = mapped_column(String(64))
    #: Words to recognise it by in `tokens list` ("LIS of lab X", "Grafana").
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
