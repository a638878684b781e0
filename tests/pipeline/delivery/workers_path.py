"""The path the workers take a recorded result through, for tests that must not care how
many tasks it takes (`test_trace_unchanged`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.services import DeliveryServices
from pipeline.delivery.stages import route_stage, seal_stage, send_stage


def deliver_as_workers_do(
    ledger: sessionmaker[Session], message_ids: Sequence[int], services: DeliveryServices
) -> None:
    routed = route_stage(ledger, message_ids, services)
    sealed = seal_stage(ledger, routed.next_ids, services)
    send_stage(ledger, sealed.next_ids, services)
