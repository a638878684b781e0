"""The path the workers take a recorded result through, for tests that must not care how
many tasks it takes (`test_trace_unchanged`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.deliver import deliver_stage
from pipeline.delivery.services import DeliveryServices


def deliver_as_workers_do(
    ledger: sessionmaker[Session], message_ids: Sequence[int], services: DeliveryServices
) -> None:
    deliver_stage(ledger, message_ids, services)
