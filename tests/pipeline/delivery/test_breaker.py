"""The circuit breaker: a dead destination costs a few attempts, not a queue's worth."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from pipeline.delivery.deliver import send_stage
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Attempt, Delivery, Event
from pipeline.transports.base import Envelope, Outcome, SendResult
from pipeline.transports.retry import RetryPolicy
from pipeline.transports.smtp import SmtpConfig, SmtpTransport
from tests.pipeline.delivery.conftest import ADAM_XCN, Clock, sealed
from tests.pipeline.delivery.scenario import LAB, oru
from tests.smtp_relay import Relay

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
RELAY = "smtp.relay.example:25"
OPEN_FOR = timedelta(seconds=60)


@pytest.fixture
def breaker() -> CircuitBreaker:
    return CircuitBreaker(failures=3, open_for=OPEN_FOR)


def fail(breaker: CircuitBreaker, times: int, at: datetime = T0) -> None:
    for _ in range(times):
        assert breaker.allows(RELAY, at)
        breaker.record(RELAY, Outcome.TRANSIENT, at)


def test_the_circuit_opens_after_n_transient_failures_in_a_row(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert breaker.state(RELAY, T0) == CLOSED and breaker.allows(RELAY, T0)

    fail(breaker, 1)

    assert breaker.state(RELAY, T0) == OPEN and not breaker.allows(RELAY, T0)
    assert breaker.open_until(RELAY) == T0 + OPEN_FOR
    assert breaker.opened() == {RELAY: T0 + OPEN_FOR}
    assert breaker.allows("other.relay:25", T0)  # per destination


def test_permanent_refusals_and_successes_do_not_count_towards_opening(
    breaker: CircuitBreaker,
) -> None:
    fail(breaker, 2)
    breaker.record(RELAY, Outcome.PERMANENT, T0)  # one recipient refused: the relay answers
    fail(breaker, 2)
    breaker.record(RELAY, Outcome.ACCEPTED, T0)
    fail(breaker, 2)
    for _ in range(10):
        breaker.record(RELAY, Outcome.PERMANENT, T0)

    assert breaker.state(RELAY, T0) == CLOSED and breaker.opened() == {}


def test_once_open_for_long_enough_one_trial_goes_through_and_a_failure_reopens(
    breaker: CircuitBreaker,
) -> None:
    fail(breaker, 3)
    assert not breaker.allows(RELAY, T0 + OPEN_FOR - timedelta(seconds=1))
    later = T0 + OPEN_FOR

    assert breaker.state(RELAY, later) == HALF_OPEN
    assert breaker.allows(RELAY, later)  # the trial
    assert not breaker.allows(RELAY, later)  # only one at a time
    breaker.record(RELAY, Outcome.TRANSIENT, later)

    assert breaker.state(RELAY, later) == OPEN  # one failed trial is enough to reopen
    assert breaker.open_until(RELAY) == later + OPEN_FOR


def test_a_successful_trial_closes_the_circuit(breaker: CircuitBreaker) -> None:
    fail(breaker, 3)
    later = T0 + OPEN_FOR
    assert breaker.allows(RELAY, later)

    breaker.record(RELAY, Outcome.ACCEPTED, later)

    assert breaker.state(RELAY, later) == CLOSED and breaker.opened() == {}
    assert breaker.allows(RELAY, later) and breaker.allows(RELAY, later)
    fail(breaker, 2, later)  # counting starts again from zero
    assert breaker.state(RELAY, later) == CLOSED


# --- through the send stage, with a relay that is down ---------------------------------------


def batch(ledger: sessionmaker[Session], services: DeliveryServices, n: int) -> list[int]:
    return sealed(
        ledger, services, *(oru(f"CB-{i}", ordering=ADAM_XCN, copy_to="") for i in range(n))
    )


def rows(ledger: sessionmaker[Session]) -> list[Delivery]:
    with ledger() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def circuit_events(ledger: sessionmaker[Session]) -> dict[int | None, int]:
    with ledger() as session:
        details = session.execute(
            select(Event.delivery_id, Event.detail).where(Event.kind == "retried")
        ).all()
    counts: dict[int | None, int] = {}
    for delivery_id, detail in details:
        if "circuit open" in detail:
            counts[delivery_id] = counts.get(delivery_id, 0) + 1
    return counts


def attempts_made(ledger: sessionmaker[Session]) -> int:
    with ledger() as session:
        return len(session.scalars(select(Attempt)).all())


def test_a_dead_relay_opens_the_circuit_and_the_batch_waits_without_spending_attempts(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    services.breaker = CircuitBreaker(failures=2, open_for=OPEN_FOR)
    services.policies = {
        "mail": RetryPolicy(
            max_attempts=10,
            max_age=timedelta(hours=1),
            min_backoff=timedelta(seconds=30),
            max_backoff=timedelta(seconds=30),
        )
    }
    ids = batch(ledger, services, 5)
    relay.stop()  # connections refused from now on

    first = send_stage(ledger, ids, services)

    assert dict(first.states) == {"retrying": 2, "pending": 3}
    tried, waiting = rows(ledger)[:2], rows(ledger)[2:]
    assert [(d.state, d.attempts) for d in tried] == [("retrying", 1)] * 2
    assert [(d.state, d.attempts) for d in waiting] == [("pending", 0)] * 3
    assert all(d.next_attempt_at >= clock.now + OPEN_FOR for d in waiting)  # type: ignore[operator]
    assert attempts_made(ledger) == 2
    assert circuit_events(ledger) == {d.id: 1 for d in waiting}

    # Still down when the circuit half-opens: one trial, the rest wait on, told only once.
    clock.advance(OPEN_FOR + timedelta(seconds=10))
    second = send_stage(ledger, ids, services)

    assert dict(second.states) == {"retrying": 2, "pending": 3}
    assert [d.attempts for d in rows(ledger)] == [2, 1, 0, 0, 0]
    assert circuit_events(ledger) == {d.id: 1 for d in rows(ledger)[1:]}

    # Back up: the trial succeeds, the circuit closes, everything goes, once.
    relay.start()
    clock.advance(OPEN_FOR + timedelta(seconds=10))
    third = send_stage(ledger, ids, services)

    assert dict(third.states) == {"accepted": 5}
    assert [d.attempts for d in rows(ledger)] == [3, 2, 1, 1, 1]
    assert len(relay.handler.messages) == 5
    assert attempts_made(ledger) == 8


def test_deliveries_waiting_on_an_open_circuit_past_the_maximum_age_fail_and_are_notified(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    relay: Relay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    services.notices_dir = tmp_path / "notices"
    services.breaker = CircuitBreaker(failures=1, open_for=OPEN_FOR)
    services.policies = {
        "mail": RetryPolicy(
            max_attempts=10,
            max_age=timedelta(minutes=10),
            min_backoff=timedelta(seconds=30),
            max_backoff=timedelta(seconds=30),
        )
    }
    ids = batch(ledger, services, 3)
    relay.stop()
    send_stage(ledger, ids, services)

    clock.advance(timedelta(minutes=11))
    report = send_stage(ledger, ids, services)

    assert dict(report.states) == {"failed": 3}
    trial, *waited = rows(ledger)
    assert (trial.attempts, trial.last_error[:21]) == (2, "gave up after 2 attem")
    for delivery in waited:
        assert delivery.attempts == 0 and delivery.failed_at == clock.now
        assert delivery.last_error.startswith(
            f"gave up: smtp://127.0.0.1:{relay.port} kept failing for 0:10:00"
        )
    assert all(d.notified_at == clock.now for d in rows(ledger))
    assert len(list((services.notices_dir / LAB).iterdir())) == 3


class BrokenSmtp(SmtpTransport):
    """An SMTP transport with a bug: it raises instead of answering with an outcome."""

    def send(self, envelope: Envelope) -> SendResult:
        raise RuntimeError("a bug in the transport")

    def send_many(self, envelopes: Sequence[Envelope]) -> list[SendResult]:
        raise RuntimeError("a bug in the transport")


def test_a_transport_bug_during_the_trial_does_not_leave_the_circuit_stuck_open(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    services.breaker = CircuitBreaker(failures=1, open_for=OPEN_FOR)
    ids = batch(ledger, services, 2)
    relay.stop()
    send_stage(ledger, ids, services)  # the first fails, the circuit opens, the second waits
    relay.start()
    working = services.factories["mail"]
    broken = iter([BrokenSmtp(SmtpConfig(host="127.0.0.1", port=relay.port, tls="none"))])
    services.factories = {**services.factories, "mail": lambda: next(broken, None) or working()}
    services.discard("mail")

    clock.advance(OPEN_FOR + timedelta(seconds=10))
    trial = send_stage(ledger, ids, services)  # the half-open trial meets the bug
    clock.advance(timedelta(minutes=5))
    later = send_stage(ledger, ids, services)  # the relay works: the next trial closes it

    assert dict(trial.states) == {"retrying": 1, "pending": 1}
    assert dict(later.states) == {"accepted": 2}
    assert len(relay.handler.messages) == 2
