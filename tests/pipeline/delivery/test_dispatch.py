"""What the dispatcher does when the far side or the directory says no."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.deliver import dispatch_due
from pipeline.delivery.intake import accept_bytes
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Attempt, Delivery, Event
from pipeline.transports.base import Envelope, SendResult
from pipeline.transports.mailbox import MailboxTransport
from pipeline.transports.retry import RetryPolicy
from tests.pipeline.delivery.conftest import (
    ADAM_MAIL,
    ADAM_XCN,
    SHORT_LIVED_XCN,
    UNEQUIPPED_XCN,
    Clock,
)
from tests.pipeline.delivery.scenario import oru
from tests.smtp_relay import Relay


def accept(ledger: sessionmaker[Session], services: DeliveryServices, data: bytes) -> None:
    with ledger.begin() as session:
        (accepted,) = accept_bytes(session, data, services, source="file", source_name="t.hl7")
        assert accepted.recorded is not None, accepted.result.error


def only_delivery(ledger: sessionmaker[Session]) -> Delivery:
    with ledger() as session:
        delivery = session.scalars(select(Delivery)).one()
        _ = delivery.attempt_log, delivery.message
        return delivery


def events(ledger: sessionmaker[Session]) -> list[str]:
    with ledger() as session:
        return list(session.scalars(select(Event.kind).order_by(Event.id)))


def test_relay_421_is_retried_after_backoff_and_the_result_sent_once(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    relay.handler.mail_replies = ["421 4.3.2 Service shutting down"]
    accept(ledger, services, oru("R-421", ordering=ADAM_XCN, copy_to=""))

    first = dispatch_due(ledger, services)
    waiting = only_delivery(ledger)
    assert dict(first.states) == {"retrying": 1}
    assert waiting.next_attempt_at is not None and waiting.next_attempt_at > clock.now
    assert "421 4.3.2" in waiting.last_error
    assert dispatch_due(ledger, services).handled == 0  # not due yet: nothing is hammered

    clock.advance(waiting.next_attempt_at - clock.now)
    second = dispatch_due(ledger, services)

    delivery = only_delivery(ledger)
    assert dict(second.states) == {"accepted": 1}
    assert [a.outcome for a in delivery.attempt_log] == ["transient", "accepted"]
    assert delivery.attempt_log[0].evidence.startswith("MAIL: 421 4.3.2")
    (mail,) = relay.handler.messages
    assert mail.data == delivery.envelope  # the retry sent the very envelope sealed first
    assert events(ledger).count("sealed") == 1
    assert "retried" in events(ledger)


def test_relay_550_fails_the_delivery_with_the_reply_kept(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    relay.handler.rcpt_replies = {ADAM_MAIL: "550 5.1.1 <adam.hoda@...>: user unknown"}
    accept(ledger, services, oru("R-550", ordering=ADAM_XCN, copy_to=""))

    report = dispatch_due(ledger, services)
    clock.advance(timedelta(days=1))
    later = dispatch_due(ledger, services)

    delivery = only_delivery(ledger)
    assert dict(report.states) == {"failed": 1} and later.handled == 0
    assert delivery.state == "failed" and delivery.failed_at is not None
    assert "550 5.1.1" in delivery.last_error
    (attempt,) = delivery.attempt_log
    assert (attempt.outcome, attempt.evidence[:14]) == ("permanent", "RCPT: 550 5.1.")
    assert relay.handler.messages == []
    assert events(ledger)[-1] == "failed"


def test_expired_recipient_certificate_means_no_send_and_a_clear_error(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    accept(ledger, services, oru("R-EXP", ordering=SHORT_LIVED_XCN, copy_to=""))
    clock.advance(timedelta(days=3))  # the recipient's one-day certificate has run out

    report = dispatch_due(ledger, services)

    delivery = only_delivery(ledger)
    assert dict(report.states) == {"failed": 1}
    assert "short.lived" in delivery.last_error and "expired" in delivery.last_error
    assert delivery.envelope is None and delivery.attempt_log == []
    assert relay.handler.connections == 0 and relay.handler.messages == []


def test_recipient_without_a_certificate_is_never_sent_in_clear(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay
) -> None:
    accept(ledger, services, oru("R-NOCERT", ordering=UNEQUIPPED_XCN, copy_to=""))

    dispatch_due(ledger, services)

    delivery = only_delivery(ledger)
    assert delivery.state == "failed" and "no.certificate" in delivery.last_error
    assert "certificate" in delivery.last_error
    assert relay.handler.messages == []


def test_resent_control_id_is_not_dispatched_twice(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay
) -> None:
    data = oru("R-TWICE", ordering=ADAM_XCN, copy_to="")
    accept(ledger, services, data)
    dispatch_due(ledger, services)
    accept(ledger, services, data)  # the LIS lost our ACK and sends again
    dispatch_due(ledger, services)

    assert len(relay.handler.messages) == 1
    with ledger() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 1
    assert events(ledger).count("duplicate") == 1


def test_transient_failures_give_up_when_the_policy_says_so(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    services.policies = {
        "mail": RetryPolicy(
            max_attempts=2,
            max_age=timedelta(hours=1),
            min_backoff=timedelta(seconds=10),
            max_backoff=timedelta(seconds=10),
        )
    }
    relay.handler.mail_replies = ["451 4.7.1 try later", "451 4.7.1 try later"]
    accept(ledger, services, oru("R-GIVEUP", ordering=ADAM_XCN, copy_to=""))

    dispatch_due(ledger, services)
    clock.advance(timedelta(seconds=11))
    dispatch_due(ledger, services)

    delivery = only_delivery(ledger)
    assert delivery.state == "failed"
    assert delivery.last_error.startswith("gave up after 2 attempts")
    with ledger() as session:
        assert session.scalar(select(func.count()).select_from(Attempt)) == 2


def test_a_channel_without_transport_settings_waits_instead_of_crashing(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay
) -> None:
    services.factories = {}  # e.g. HTTPS with no client certificate configured
    accept(ledger, services, oru("R-NOTRANSPORT", ordering=ADAM_XCN, copy_to=""))

    report = dispatch_due(ledger, services)

    delivery = only_delivery(ledger)
    assert dict(report.states) == {"retrying": 1}
    assert "no transport for channel kind 'mail'" in delivery.last_error


class ExplodingTransport(MailboxTransport):
    """A transport with a bug: raises instead of answering with an outcome."""

    def send(self, envelope: Envelope) -> SendResult:
        raise RuntimeError("DUPONT Hélène K+ 5.9")  # as if a message's data leaked into it


def test_a_bug_in_a_transport_does_not_stop_the_other_deliveries(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, tmp_path: Path
) -> None:
    working = services.factories["mail"]
    made = iter([ExplodingTransport(tmp_path), working()])
    services.factories = {**services.factories, "mail": lambda: next(made)}
    accept(ledger, services, oru("R-BUG-1", ordering=ADAM_XCN, copy_to=""))
    accept(ledger, services, oru("R-BUG-2", ordering=ADAM_XCN, copy_to=""))

    report = dispatch_due(ledger, services)

    # The broken transport was thrown away; the next delivery went out on a fresh one.
    assert dict(report.states) == {"retrying": 1, "accepted": 1}
    assert len(relay.handler.messages) == 1
    with ledger() as session:
        broken = session.scalars(select(Delivery).where(Delivery.state == "retrying")).one()
        assert broken.last_error == "not sent: internal error in the mail transport (RuntimeError)"
        assert "DUPONT" not in " ".join(session.scalars(select(Event.detail)))


def test_a_training_message_is_recorded_and_held_never_delivered(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay
) -> None:
    training = oru("R-TRAIN", ordering=ADAM_XCN, copy_to="").replace(b"|P|2.5|", b"|T|2.5|")
    accept(ledger, services, training)

    dispatch_due(ledger, services)

    assert relay.handler.messages == []
    with ledger() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        (held,) = session.scalars(select(Event).where(Event.kind == "held")).all()
        assert held.detail.startswith("processing ID T (training): not delivered here")


def test_a_test_platform_may_deliver_training_messages(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay
) -> None:
    services.processing_ids = ("P", "T")
    training = oru("R-TRAIN", ordering=ADAM_XCN, copy_to="").replace(b"|P|2.5|", b"|T|2.5|")
    accept(ledger, services, training)

    dispatch_due(ledger, services)

    assert len(relay.handler.messages) == 1
