"""Creating, checking and revoking API tokens.

The secret is shown once, when created; only its SHA-256 is stored. A presented token is
looked up by that hash (an index, one round trip); an unknown or revoked one is simply not
a caller, and the API answers 401 without saying which.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.access.models import ROLES, ApiToken
from pipeline.errors import LabdispatchError

#: Prefix of every secret: a leaked token is recognisable by secret scanners and people.
TOKEN_PREFIX = "ldt_"


class TokenError(LabdispatchError):
    """A token cannot be created or revoked as asked."""


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the API needs to know it: never the secret itself."""

    token_id: int
    role: str
    #: The laboratory a `lab` token is bound to; None for ops, billing and admin.
    laboratory: str | None

    def sees(self, laboratory: str) -> bool:
        """May this caller read data of `laboratory`?"""
        return self.laboratory is None or self.laboratory == laboratory

    def describe(self) -> str:
        """For logs and audit events: the token's number and role, never the secret."""
        scope = f" {self.laboratory}" if self.laboratory else ""
        return f"token #{self.token_id} ({self.role}{scope})"


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_token(
    session: Session, *, role: str, laboratory: str | None, label: str, now: datetime
) -> tuple[ApiToken, str]:
    """Add a token and return it with its secret (shown once); the caller commits."""
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if (role == "lab") != bool(laboratory):
        raise TokenError("a laboratory token names its laboratory (--lab), other roles do not")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        token_sha256=token_digest(secret),
        role=role,
        laboratory=laboratory or None,
        label=label[:200],
        created_at=now,
    )
    session.add(token)
    session.flush()
    return token, secret


def authenticate(session: Session, secret: str) -> Caller | None:
    """The caller a presented secret stands for, or None if it is unknown or revoked."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    row = session.execute(
        select(ApiToken.id, ApiToken.role, ApiToken.laboratory).where(
            ApiToken.token_sha256 == token_digest(secret), ApiToken.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    return Caller(token_id=row.id, role=row.role, laboratory=row.laboratory)


def revoke_token(session: Session, token_id: int, *, now: datetime) -> None:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise TokenError(f"no token #{token_id}")
    if token.revoked_at is None:
        token.revoked_at = now


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))
