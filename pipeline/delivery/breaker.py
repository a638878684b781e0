"""A circuit breaker per destination: one dead relay must not eat the workers' time.

After `failures` transient failures in a row towards one destination (an SMTP relay, an
HTTPS host, a mailbox root), its circuit opens: deliveries bound there are rescheduled for
when it closes again, without trying and without spending one of their attempts. Once the
open period is over, one delivery goes through as a trial (half-open): success closes the
circuit, failure opens it again. Permanent refusals say something about one recipient, not
the destination, so they do not count.

The state lives in each worker process: every process learns of a dead destination on its
own after a few failures, which costs a few attempts, not a queue's worth. What ops see is
the report each process leaves in the ledger when one of its circuits opens, opens again
or closes (`record` returns that `Transition` and keeps it until `take_transitions`;
`pipeline.delivery.circuits` writes it with the outcomes that caused it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipeline.transports.base import Outcome

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


@dataclass(frozen=True)
class Transition:
    """A circuit that opened (again) or closed, as of `at`."""

    destination: str
    #: OPEN (opened, or re-opened after a failed trial) or CLOSED.
    state: str
    #: Transient failures in a row that opened it (kept when it closes).
    failures: int
    #: When this outage began: the first opening, kept through re-openings.
    opened_at: datetime | None
    open_until: datetime | None
    at: datetime


@dataclass
class _Circuit:
    failures: int = 0
    open_until: datetime | None = None
    trial: bool = False  # a half-open trial is under way
    opened_at: datetime | None = None


@dataclass
class CircuitBreaker:
    failures: int = 5
    open_for: timedelta = timedelta(seconds=60)
    _circuits: dict[str, _Circuit] = field(default_factory=dict)
    _transitions: list[Transition] = field(default_factory=list)

    def state(self, destination: str, now: datetime) -> str:
        circuit = self._circuits.get(destination)
        if circuit is None or circuit.open_until is None:
            return CLOSED
        return OPEN if now < circuit.open_until else HALF_OPEN

    def allows(self, destination: str, now: datetime) -> bool:
        """May a delivery to `destination` be tried now? Claims the trial when half-open."""
        circuit = self._circuits.get(destination)
        if circuit is None or circuit.open_until is None:
            return True
        if now < circuit.open_until or circuit.trial:
            return False
        circuit.trial = True
        return True

    def open_until(self, destination: str) -> datetime | None:
        circuit = self._circuits.get(destination)
        return circuit.open_until if circuit is not None else None

    def record(self, destination: str, outcome: Outcome, now: datetime) -> Transition | None:
        """Count an outcome; returns the transition it caused, if any (most cause none)."""
        if outcome is not Outcome.TRANSIENT:
            # Accepted, or refused for reasons of one recipient: the destination answers.
            gone = self._circuits.pop(destination, None)
            if gone is None or gone.open_until is None:
                return None
            return self._note(
                Transition(destination, CLOSED, gone.failures, gone.opened_at, None, now)
            )
        circuit = self._circuits.setdefault(destination, _Circuit())
        circuit.failures += 1
        opens = circuit.trial or circuit.failures >= self.failures
        circuit.trial = False
        if not opens:
            return None
        circuit.open_until = now + self.open_for
        circuit.opened_at = circuit.opened_at or now
        return self._note(
            Transition(
                destination, OPEN, circuit.failures, circuit.opened_at, circuit.open_until, now
            )
        )

    def take_transitions(self) -> list[Transition]:
        """The transitions since the last call, oldest first, for the ledger's report."""
        taken, self._transitions = self._transitions, []
        return taken

    def _note(self, transition: Transition) -> Transition:
        self._transitions.append(transition)
        return transition

    def opened(self) -> dict[str, datetime]:
        """Destinations whose circuit is open or half-open, with the time it (re)opened."""
        return {
            destination: circuit.open_until
            for destination, circuit in self._circuits.items()
            if circuit.open_until is not None
        }
