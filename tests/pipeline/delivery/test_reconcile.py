"""Reconcile: the ledger says what the broker lost, and parked results resume."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.deliver import send_stage
from pipeline.delivery.reconcile import resume_unroutable, stalled_work
from pipeline.delivery.route import route_stage
from pipeline.delivery.seal import seal_stage
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery, Event, Message
from pipeline.recipients.directory_csv import import_directory
from pipeline.sealing.demo_pki import DemoPki
from tests.pipeline.delivery.conftest import ADAM_XCN, BERNARD, Clock, received, sealed
from tests.pipeline.delivery.scenario import MARTIN, directory_csv, oru
from tests.smtp_relay import Relay

REQUEUE_AFTER = timedelta(minutes=5)
MARTIN_MAIL = "sophie.martin@martin.mssante.example"


def to_adam(control_id: str) -> bytes:
    return oru(control_id, ordering=ADAM_XCN, copy_to="")


def delivery(ledger: sessionmaker[Session], delivery_id: int) -> Delivery:
    with ledger() as session:
        return session.get_one(Delivery, delivery_id)


def lease(ledger: sessionmaker[Session], delivery_id: int, clock: Clock) -> None:
    """As a worker's claim does."""
    with ledger.begin() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(leased_until=clock.now + timedelta(minutes=5))
        )


def test_results_left_received_go_back_to_the_route_stage(
    ledger: sessionmaker[Session], services: DeliveryServices, clock: Clock
) -> None:
    (lost,) = received(ledger, services, to_adam("RC-LOST"))
    received(ledger, services, to_adam("RC-TRAIN").replace(b"|P|2.5|", b"|T|2.5|"))  # held
    (routed,) = received(ledger, services, to_adam("RC-ROUTED"))
    clock.advance(REQUEUE_AFTER + timedelta(seconds=1))
    route_stage(ledger, [routed], services)
    (recent,) = received(ledger, services, to_adam("RC-RECENT"))  # its task is surely queued

    work = stalled_work(ledger, clock.now, requeue_after=REQUEUE_AFTER)

    assert work.route == [lost] and recent != lost
    assert work.send == [] and work.seal == []


def test_open_deliveries_not_queued_lately_are_found_once_unless_leased(
    ledger: sessionmaker[Session], services: DeliveryServices, clock: Clock
) -> None:
    routed = route_stage(
        ledger, received(ledger, services, *(to_adam(f"RC-{n}") for n in range(4))), services
    )
    unsealed, unsealed_leased, to_send, to_send_leased = routed.next_ids
    assert seal_stage(ledger, [to_send, to_send_leased], services).next_ids == [
        to_send,
        to_send_leased,
    ]

    clock.advance(REQUEUE_AFTER - timedelta(seconds=1))
    assert stalled_work(ledger, clock.now, requeue_after=REQUEUE_AFTER).total == 0

    clock.advance(timedelta(seconds=2))  # the broker has had them long enough: lost
    lease(ledger, unsealed_leased, clock)  # a worker has these in hand
    lease(ledger, to_send_leased, clock)
    work = stalled_work(ledger, clock.now, requeue_after=REQUEUE_AFTER)
    again = stalled_work(ledger, clock.now, requeue_after=REQUEUE_AFTER)

    assert (work.route, work.seal, work.send) == ([], [unsealed], [to_send])
    assert again.total == 0
    assert delivery(ledger, unsealed).queued_at == clock.now
    assert delivery(ledger, to_send).queued_at == clock.now


def test_a_retry_that_came_due_after_it_was_queued_is_handed_out_again(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    relay.handler.mail_replies = ["421 4.3.2 Service shutting down"]
    (retry,) = sealed(ledger, services, to_adam("RC-RETRY"))
    assert dict(send_stage(ledger, [retry], services).states) == {"retrying": 1}
    due = delivery(ledger, retry).next_attempt_at
    assert due is not None and due - clock.now < REQUEUE_AFTER

    assert stalled_work(ledger, clock.now, requeue_after=REQUEUE_AFTER).total == 0  # not due
    clock.advance(due - clock.now + timedelta(seconds=1))
    work = stalled_work(ledger, clock.now, requeue_after=REQUEUE_AFTER)
    again = stalled_work(ledger, clock.now, requeue_after=REQUEUE_AFTER)
    sent = send_stage(ledger, work.send, services)

    assert work.send == [retry] and again.total == 0
    assert dict(sent.states) == {"accepted": 1} and len(relay.handler.messages) == 1


def test_a_backlogged_stage_keeps_its_late_work_but_due_retries_still_go_out(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    """In a peak, work queued long ago is still in the queue: queueing it again would only
    grow the backlog. A retry whose time came is not a backlog: it goes out."""
    relay.handler.mail_replies = ["421 4.3.2 Service shutting down"]
    (retry,) = sealed(ledger, services, to_adam("RC-BL-RETRY"))
    send_stage(ledger, [retry], services)
    (late_route,) = received(ledger, services, to_adam("RC-BL-ROUTE"))
    (late_seal,) = route_stage(
        ledger, received(ledger, services, to_adam("RC-BL-SEAL")), services
    ).next_ids
    (late_send,) = sealed(ledger, services, to_adam("RC-BL-SEND"))
    clock.advance(REQUEUE_AFTER + timedelta(seconds=1))
    everything = frozenset({"route", "seal", "send"})

    backlog = stalled_work(ledger, clock.now, requeue_after=REQUEUE_AFTER, backlogged=everything)
    drained = stalled_work(ledger, clock.now, requeue_after=REQUEUE_AFTER)

    assert (backlog.route, backlog.seal, backlog.send) == ([], [], [retry])
    assert (drained.route, drained.seal, drained.send) == ([late_route], [late_seal], [late_send])


def test_an_unroutable_result_resumes_once_the_directory_learns_its_recipient(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    relay: Relay,
    pki: DemoPki,
    clock: Clock,
    tmp_path: Path,
) -> None:
    (message_id,) = received(ledger, services, oru("RC-UNKNOWN", ordering=MARTIN, copy_to=""))
    routed = route_stage(ledger, [message_id], services)
    assert routed.next_ids == [] and dict(routed.states) == {"unroutable": 1}
    assert resume_unroutable(ledger, services) == []  # still nobody the directory knows

    clock.advance(timedelta(hours=2))
    folder = tmp_path / "update"
    folder.mkdir()
    with ledger.begin() as session:
        csv = directory_csv(folder, {"sophie.martin": str(pki.recipients[BERNARD][0])})
        assert not import_directory(session, csv).errors
    resumed = resume_unroutable(ledger, services)
    again = resume_unroutable(ledger, services)

    (parked_id,) = resumed
    assert again == []
    parked = delivery(ledger, parked_id)
    assert (parked.state, parked.recipient_key) == ("pending", "sophie.martin")
    assert (parked.channel_kind, parked.channel_address) == ("mail", MARTIN_MAIL)
    assert re.fullmatch(r"<[0-9a-f]{32}@labdispatch\.test>", parked.envelope_message_id or "")
    assert re.fullmatch(r"[0-9a-f]{40}", parked.envelope_id or "")
    assert parked.queued_at == clock.now and parked.last_error == ""
    with ledger() as session:
        assert session.get_one(Message, message_id).state == "routed"
        details = session.scalars(
            select(Event.detail).where(Event.delivery_id == parked_id, Event.kind == "resumed")
        ).all()
    assert details == ["the directory now knows RPPS:10001234567: sophie.martin via mail"]

    # From here it is an ordinary delivery.
    sent = send_stage(ledger, seal_stage(ledger, resumed, services).next_ids, services)
    assert dict(sent.states) == {"accepted": 1}
    (mail,) = relay.handler.messages
    assert mail.rcpt_tos == [MARTIN_MAIL]
    assert f"Message-ID: {parked.envelope_message_id}".encode() in mail.data
