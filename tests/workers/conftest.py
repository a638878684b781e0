"""What the in-process tests of the intakes share: a migrated ledger on the test's engine
(SQLite and PostgreSQL, see tests/conftest.py) and delivery services with a throwaway
storage key and no transports. Closer conftests (mllp/) define their own."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import migrate, session_factory
from pipeline.delivery.services import DeliveryServices, SignerRegistry
from pipeline.ledger.storage import StorageCipher
from pipeline.settings import SigningSettings


@pytest.fixture
def ledger(engine: Engine) -> sessionmaker[Session]:
    migrate(engine)
    return session_factory(engine)


@pytest.fixture
def services() -> Iterator[DeliveryServices]:
    with DeliveryServices(
        cipher=StorageCipher.from_key(os.urandom(32)),
        signers=SignerRegistry(SigningSettings()),
        factories={},
    ) as services:
        yield services
