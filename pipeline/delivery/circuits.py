"""The circuits ops see: each worker's breaker transitions, reported in the ledger.

Breakers live in the worker processes (`pipeline.delivery.breaker`); `/metrics` and the
dashboard run elsewhere, so a process that opens, re-opens or closes a destination's
circuit leaves one row per destination in `circuits`. It is written only on transitions
(nothing while destinations answer) and in the transaction that commits the outcomes
which caused them, so the report and the attempts never disagree.

Several workers may report the same destination at once: the write is an upsert on the
destination (no unique-key race can fail the outcomes' transaction), and an older report
never overwrites a newer one. The row says what the last reporting process saw; a process
whose breaker is still open while another's closed shows again at its next transition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pipeline.delivery.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, Transition
from pipeline.ledger.models import Circuit

_DESTINATION_LENGTH = 500


@dataclass(frozen=True)
class CircuitReport:
    """A destination's circuit as last reported, with its state as of the reading."""

    destination: str
    #: closed / open / half-open: an open circuit whose period ran out is half-open (its
    #: next delivery is the trial), whether or not a worker has tried yet.
    state: str
    failures: int
    opened_at: datetime | None
    open_until: datetime | None
    updated_at: datetime


def save_circuits(session: Session, breaker: CircuitBreaker) -> int:
    """Write the breaker's transitions since the last call; the caller commits. Returns the
    number of destinations written (0, and no statement, when nothing changed)."""
    return save_transitions(session, breaker.take_transitions())


def save_transitions(session: Session, transitions: Iterable[Transition]) -> int:
    latest: dict[str, Transition] = {}
    for transition in transitions:
        latest[transition.destination[:_DESTINATION_LENGTH]] = transition
    # One order for every writer: two transactions upserting the same rows never deadlock.
    for destination in sorted(latest):
        _upsert(session, destination, latest[destination])
    return len(latest)


def _upsert(session: Session, destination: str, transition: Transition) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(Circuit).values(
        destination=destination,
        state=transition.state,
        failures=transition.failures,
        opened_at=transition.opened_at,
        open_until=transition.open_until,
        updated_at=transition.at,
    )
    excluded = statement.excluded
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[Circuit.destination],
            set_={
                "state": excluded.state,
                "failures": excluded.failures,
                "opened_at": excluded.opened_at,
                "open_until": excluded.open_until,
                "updated_at": excluded.updated_at,
            },
            where=Circuit.updated_at <= excluded.updated_at,
        )
    )


def read_circuits(session: Session, now: datetime) -> list[CircuitReport]:
    """Every reported circuit, by destination; closed ones too (a destination that came back
    is worth seeing, and its series must go to 0 rather than vanish)."""
    return [
        CircuitReport(
            destination=row.destination,
            state=_state_at(row.state, row.open_until, now),
            failures=row.failures,
            opened_at=row.opened_at,
            open_until=row.open_until,
            updated_at=row.updated_at,
        )
        for row in session.scalars(select(Circuit).order_by(Circuit.destination))
    ]


def _state_at(state: str, open_until: datetime | None, now: datetime) -> str:
    if state == OPEN and open_until is not None and now >= open_until:
        return HALF_OPEN
    return state if state in (OPEN, HALF_OPEN) else CLOSED
