"""Circuits reported in the ledger: what each worker's breaker did, for ops and /metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, Transition
from pipeline.delivery.circuits import read_circuits, save_circuits, save_transitions
from pipeline.delivery.deliver import dispatch_due, send_stage
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Attempt, Circuit
from pipeline.transports.base import Outcome
from pipeline.transports.retry import RetryPolicy
from tests.pipeline.delivery.conftest import ADAM_XCN, Clock, sealed
from tests.pipeline.delivery.scenario import oru
from tests.smtp_relay import Relay

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
RELAY = "smtp.relay.example:25"
OPEN_FOR = timedelta(seconds=60)


def test_the_breaker_returns_and_keeps_only_its_transitions() -> None:
    breaker = CircuitBreaker(failures=2, open_for=OPEN_FOR)

    assert breaker.record(RELAY, Outcome.TRANSIENT, T0) is None
    opened = breaker.record(RELAY, Outcome.TRANSIENT, T0)
    later = T0 + OPEN_FOR
    assert breaker.allows(RELAY, later)
    reopened = breaker.record(RELAY, Outcome.TRANSIENT, later)
    assert breaker.allows(RELAY, later + OPEN_FOR)
    closed = breaker.record(RELAY, Outcome.ACCEPTED, later + OPEN_FOR)
    assert breaker.record(RELAY, Outcome.ACCEPTED, later + OPEN_FOR) is None  # no change

    assert opened == Transition(RELAY, OPEN, 2, T0, T0 + OPEN_FOR, T0)
    # Re-opened after a failed trial: the outage still began at T0.
    assert reopened == Transition(RELAY, OPEN, 3, T0, later + OPEN_FOR, later)
    assert closed == Transition(RELAY, CLOSED, 3, T0, None, later + OPEN_FOR)
    assert breaker.take_transitions() == [opened, reopened, closed]
    assert breaker.take_transitions() == []


def test_a_transition_is_upserted_and_an_older_report_never_overwrites_a_newer(
    session: Session,
) -> None:
    opened = Transition(RELAY, OPEN, 5, T0, T0 + OPEN_FOR, T0)
    closed = Transition(RELAY, CLOSED, 5, T0, None, T0 + timedelta(minutes=3))

    assert save_transitions(session, [opened]) == 1
    session.commit()
    assert [(c.state, c.failures, c.open_until) for c in read_circuits(session, T0)] == [
        (OPEN, 5, T0 + OPEN_FOR)
    ]

    save_transitions(session, [closed])
    session.commit()
    # Another worker's report of the opening, committed late: the closing stands.
    save_transitions(session, [opened])
    session.commit()

    (report,) = read_circuits(session, T0 + timedelta(minutes=5))
    assert (report.destination, report.state, report.opened_at, report.open_until) == (
        RELAY,
        CLOSED,
        T0,
        None,
    )
    assert report.updated_at == T0 + timedelta(minutes=3)
    assert session.scalar(select(func.count()).select_from(Circuit)) == 1


def test_an_open_circuit_whose_period_ran_out_reads_as_half_open(session: Session) -> None:
    save_transitions(
        session,
        [
            Transition("a.example:25", OPEN, 5, T0, T0 + OPEN_FOR, T0),
            Transition("b.example:443", OPEN, 5, T0, T0 + 10 * OPEN_FOR, T0),
        ],
    )
    session.commit()

    states = {c.destination: c.state for c in read_circuits(session, T0 + 2 * OPEN_FOR)}

    assert states == {"a.example:25": HALF_OPEN, "b.example:443": OPEN}


def test_nothing_is_written_without_a_transition(session: Session) -> None:
    statements: list[str] = []
    bind = session.get_bind()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(bind, "before_cursor_execute", listener)
    try:
        assert save_circuits(session, CircuitBreaker()) == 0
    finally:
        event.remove(bind, "before_cursor_execute", listener)
    assert statements == []


# --- through the send stage, with a relay that goes down and comes back ---------------------


def circuits(ledger: sessionmaker[Session], now: datetime) -> list[tuple[str, str, int]]:
    with ledger() as session:
        return [(c.destination, c.state, c.failures) for c in read_circuits(session, now)]


@pytest.fixture
def patient_policy(services: DeliveryServices) -> DeliveryServices:
    services.breaker = CircuitBreaker(failures=2, open_for=OPEN_FOR)
    services.policies = {
        "mail": RetryPolicy(
            max_attempts=10,
            max_age=timedelta(hours=1),
            min_backoff=timedelta(seconds=30),
            max_backoff=timedelta(seconds=30),
        )
    }
    return services


def test_the_send_stage_reports_opening_reopening_and_closing_with_its_outcomes(
    ledger: sessionmaker[Session], patient_policy: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    services = patient_policy
    ids = sealed(
        ledger, services, *(oru(f"CIR-{i}", ordering=ADAM_XCN, copy_to="") for i in range(4))
    )
    destination = f"smtp://127.0.0.1:{relay.port}"
    opened_at = clock.now

    send_stage(ledger, ids[:1], services)  # one success: nothing to report
    assert circuits(ledger, clock.now) == []

    relay.stop()
    send_stage(ledger, ids[1:], services)
    assert circuits(ledger, clock.now) == [(destination, OPEN, 2)]
    with ledger() as session:
        row = session.scalars(select(Circuit)).one()
        assert (row.opened_at, row.open_until) == (opened_at, opened_at + OPEN_FOR)
        # Written with the attempts that opened it.
        assert session.scalar(select(func.count()).select_from(Attempt)) == 3

    clock.advance(OPEN_FOR + timedelta(seconds=10))
    assert circuits(ledger, clock.now)[0][1] == HALF_OPEN  # waiting for its trial
    send_stage(ledger, ids[1:], services)  # the trial fails: open again
    assert circuits(ledger, clock.now) == [(destination, OPEN, 3)]
    with ledger() as session:
        row = session.scalars(select(Circuit)).one()
        assert (row.opened_at, row.open_until) == (opened_at, clock.now + OPEN_FOR)

    relay.start()
    clock.advance(OPEN_FOR + timedelta(seconds=10))
    report = send_stage(ledger, ids[1:], services)

    assert dict(report.states) == {"accepted": 3}
    assert circuits(ledger, clock.now) == [(destination, CLOSED, 3)]


def test_dispatch_due_reports_the_circuit_it_opens(
    ledger: sessionmaker[Session], patient_policy: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    services = patient_policy
    sealed(ledger, services, *(oru(f"DUE-{i}", ordering=ADAM_XCN, copy_to="") for i in range(3)))
    relay.stop()

    dispatch_due(ledger, services)

    assert circuits(ledger, clock.now) == [(f"smtp://127.0.0.1:{relay.port}", OPEN, 2)]
