"""A delivery given up is reported to its laboratory: one notice, no patient data in it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.deliver import send_delivery, send_stage
from pipeline.delivery.route import route_stage
from pipeline.delivery.seal import seal_stage
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery, Event
from tests.pipeline.delivery.conftest import (
    ADAM,
    ADAM_MAIL,
    ADAM_XCN,
    UNEQUIPPED,
    UNEQUIPPED_XCN,
    Clock,
    received,
)
from tests.pipeline.delivery.scenario import LAB, oru
from tests.smtp_relay import Relay

#: What the `oru` result says of its patient and results: none of it may be in a notice.
PATIENT_DATA = ("DUPONT", "Hélène", "248125612345678", "Potassium", "Sodium", "mmol")


def test_a_refused_delivery_is_failed_and_its_laboratory_told_once_without_patient_data(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    relay: Relay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    services.notices_dir = tmp_path / "notices"
    relay.handler.rcpt_replies = {ADAM_MAIL: "550 5.1.1 <adam.hoda@...>: user unknown"}
    routed = route_stage(
        ledger,
        received(ledger, services, oru("N-1", ordering=ADAM_XCN, copy_to=UNEQUIPPED_XCN)),
        services,
    )
    # Dr Sans Certificat has no certificate: failed at sealing, never sent in clear.
    (adam,) = seal_stage(ledger, routed.next_ids, services).next_ids

    # A worker fails Dr Hoda's delivery, writes the notice, then dies before its commit...
    with ledger() as session:
        lost = session.get_one(Delivery, adam)
        assert send_delivery(session, lost, services) == "failed"
        session.rollback()
    # ...so after the lease another worker sends it again, and is refused again.
    relay.handler.rcpt_replies = {ADAM_MAIL: "550 5.7.1 <adam.hoda@...>: relaying denied"}
    report = send_stage(ledger, [adam], services)

    assert dict(report.states) == {"failed": 1}
    with ledger() as session:
        by_key = {d.recipient_key: d for d in session.scalars(select(Delivery))}
        notified = session.execute(
            select(Event.delivery_id, Event.detail).where(Event.kind == "notified")
        ).all()
    refused, unsealable = by_key[ADAM], by_key[UNEQUIPPED]
    assert (refused.state, refused.attempts, refused.notified_at) == ("failed", 1, clock.now)
    assert unsealable.state == "failed" and unsealable.notified_at == clock.now
    folder = services.notices_dir / LAB
    notices = {path.name: path.read_text(encoding="utf-8") for path in folder.iterdir()}
    assert sorted(notices) == sorted(
        [f"failed-N-1-{refused.id}.txt", f"failed-N-1-{unsealable.id}.txt"]
    )  # one per failed delivery: the lost run's notice was rewritten, not doubled
    assert sorted(notified) == sorted(
        (d.id, f"laboratory told: {LAB}/failed-N-1-{d.id}.txt") for d in (refused, unsealable)
    )
    text = notices[f"failed-N-1-{refused.id}.txt"]
    assert "Control ID:     N-1 (revision 1)" in text
    assert f"Recipient:      {ADAM} (ordering)" in text and f"mail:{ADAM_MAIL}" in text
    assert "550 5.7.1" in text and "5.1.1" not in text  # the outcome that was committed
    assert "Attempts:       1" in text
    assert "no.certificate" in notices[f"failed-N-1-{unsealable.id}.txt"]
    for notice in notices.values():
        assert not [datum for datum in PATIENT_DATA if datum in notice]
