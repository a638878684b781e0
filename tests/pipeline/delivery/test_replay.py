"""Replay: a failed delivery, once its cause is fixed, sent again as if new, and recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.deliver import send_stage
from pipeline.delivery.replay import (
    SEAL,
    SEND,
    ReplayRefused,
    UnknownDelivery,
    replay,
    stage_of,
)
from pipeline.delivery.route import route_stage
from pipeline.delivery.seal import seal_stage
from pipeline.delivery.services import DeliveryServices
from pipeline.delivery.trace import UnknownResult
from pipeline.ledger.models import Delivery, Event
from pipeline.sealing.demo_pki import DemoPki
from pipeline.sealing.smime import sealed_for
from tests.pipeline.delivery.conftest import (
    ADAM,
    ADAM_MAIL,
    ADAM_XCN,
    PATIENT,
    SHORT_LIVED_XCN,
    UNEQUIPPED_XCN,
    Clock,
    received,
)
from tests.pipeline.delivery.scenario import oru
from tests.smtp_relay import Relay

WHO = "token #7 (ops)"


def _failed_at_send(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, result: bytes
) -> Delivery:
    """The result's one delivery, sealed, then refused for good by the relay (550)."""
    relay.handler.rcpt_replies = {ADAM_MAIL: "550 5.1.1 <adam.hoda@...>: user unknown"}
    routed = route_stage(ledger, received(ledger, services, result), services)
    sealed = seal_stage(ledger, routed.next_ids, services).next_ids
    assert dict(send_stage(ledger, sealed, services).states) == {"failed": 1}
    relay.handler.rcpt_replies = {}
    return _delivery(ledger, sealed[0])


def _delivery(ledger: sessionmaker[Session], delivery_id: int) -> Delivery:
    with ledger() as session:
        return session.get_one(Delivery, delivery_id)


def _replay(
    ledger: sessionmaker[Session], message_id: int, clock: Clock, delivery_id: int | None = None
) -> list[tuple[int, str]]:
    with ledger.begin() as session:
        return [
            (d.id, stage_of(d))
            for d in replay(session, message_id, delivery_id=delivery_id, caller=WHO, now=clock.now)
        ]


def _replayed_events(ledger: sessionmaker[Session]) -> list[str]:
    with ledger() as session:
        return list(session.scalars(select(Event.detail).where(Event.kind == "replayed")))


def test_a_refused_delivery_replayed_sends_the_same_envelope_again_as_new(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    failed = _failed_at_send(ledger, services, relay, oru("RP-1", ordering=ADAM_XCN, copy_to=""))
    clock.advance(timedelta(hours=2))  # ops had the relay's address book fixed

    assert _replay(ledger, failed.message_id, clock) == [(failed.id, SEND)]

    reopened = _delivery(ledger, failed.id)
    assert (reopened.state, reopened.attempts, reopened.last_error) == ("pending", 0, "")
    assert reopened.failed_at is None and reopened.first_attempt_at is None
    assert reopened.notified_at is None and reopened.next_attempt_at == clock.now
    assert reopened.envelope == failed.envelope
    assert _replayed_events(ledger) == [f"replayed by {WHO}: its sealed envelope is sent again"]

    assert dict(send_stage(ledger, [failed.id], services).states) == {"accepted": 1}
    (mail,) = relay.handler.messages
    assert mail.data == failed.envelope  # the very bytes sealed first, same Message-ID
    assert _delivery(ledger, failed.id).attempts == 1  # a fresh count


def test_an_envelope_for_a_certificate_no_longer_valid_is_sealed_again(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    relay.handler.rcpt_replies = {
        "pierre.court@court.mssante.example": "550 5.1.1 <pierre.court@...>: user unknown"
    }
    routed = route_stage(
        ledger,
        received(ledger, services, oru("RP-2", ordering=SHORT_LIVED_XCN, copy_to="")),
        services,
    )
    sealed = seal_stage(ledger, routed.next_ids, services).next_ids
    assert dict(send_stage(ledger, sealed, services).states) == {"failed": 1}
    clock.advance(timedelta(days=3))  # the one-day certificate it was sealed for ran out
    failed = _delivery(ledger, sealed[0])

    assert _replay(ledger, failed.message_id, clock) == [(failed.id, SEAL)]

    reopened = _delivery(ledger, failed.id)
    assert (reopened.state, reopened.envelope, reopened.sealed_at) == ("pending", None, None)
    assert _replayed_events(ledger) == [
        f"replayed by {WHO}: to be sealed again: its envelope was not for the recipient's "
        "current certificate"
    ]
    # The seal stage takes it up, and says why it cannot be sealed today.
    assert dict(seal_stage(ledger, [failed.id], services).states) == {"failed": 1}
    assert "expired" in _delivery(ledger, failed.id).last_error


def test_a_delivery_that_failed_at_sealing_goes_back_to_the_seal_stage(
    ledger: sessionmaker[Session], services: DeliveryServices, clock: Clock
) -> None:
    routed = route_stage(
        ledger,
        received(ledger, services, oru("RP-3", ordering=ADAM_XCN, copy_to=UNEQUIPPED_XCN)),
        services,
    )
    report = seal_stage(ledger, routed.next_ids, services)
    (failed_id,) = set(routed.next_ids) - set(report.next_ids)  # no certificate: failed
    message_id = _delivery(ledger, failed_id).message_id

    assert _replay(ledger, message_id, clock) == [(failed_id, SEAL)]  # only the failed one
    assert _replayed_events(ledger) == [f"replayed by {WHO}: to be sealed"]
    assert {d: _delivery(ledger, d).state for d in report.next_ids} == dict.fromkeys(
        report.next_ids, "pending"
    )


def test_what_is_not_failed_is_not_replayed_and_the_reason_says_why(
    ledger: sessionmaker[Session], services: DeliveryServices, clock: Clock
) -> None:
    routed = route_stage(
        ledger, received(ledger, services, oru("RP-4", ordering=ADAM_XCN, copy_to="")), services
    )
    (pending_id,) = routed.next_ids
    message_id = _delivery(ledger, pending_id).message_id

    with pytest.raises(ReplayRefused) as one:
        _replay(ledger, message_id, clock, pending_id)
    with pytest.raises(ReplayRefused) as every:
        _replay(ledger, message_id, clock)
    with pytest.raises(UnknownDelivery) as foreign:
        _replay(ledger, message_id, clock, pending_id + 1000)
    with pytest.raises(UnknownResult) as missing:
        _replay(ledger, message_id + 1000, clock)

    assert str(one.value) == f"delivery {pending_id} is pending, not failed: nothing to replay"
    assert str(every.value) == f"message {message_id} has no failed delivery: nothing to replay"
    assert str(foreign.value) == f"message {message_id} has no delivery {pending_id + 1000}"
    assert str(missing.value) == f"no message {message_id + 1000} in the ledger"
    assert _delivery(ledger, pending_id).state == "pending" and _replayed_events(ledger) == []


def test_an_envelope_names_the_one_certificate_it_was_made_for(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, pki: DemoPki
) -> None:
    failed = _failed_at_send(ledger, services, relay, oru("RP-5", ordering=ADAM_XCN, copy_to=""))
    assert failed.envelope is not None

    def certificate(key: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate(pki.recipients[key][0].read_bytes())

    assert sealed_for(failed.envelope, certificate(ADAM))
    assert not sealed_for(failed.envelope, certificate(PATIENT))
    assert not sealed_for(b"Subject: no body", certificate(ADAM))
    assert not sealed_for(b"A: b\r\n\r\n!!not base64!!", certificate(ADAM))
