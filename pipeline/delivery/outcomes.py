"""Recording what a pass did: every outcome of a group of sends in one transaction.

The common outcomes are written set-based: one multi-row INSERT for the attempts, one for
the events (sealed, sent, accepted, delivered, retried), and one executemany UPDATE of the
deliveries per shape of change (on PostgreSQL psycopg sends it pipelined). The rare ones
(given up, waiting for an open circuit, a sealed address that no longer opens) go through
the ORM and `notices.give_up`, the one failure path.

An envelope is written to the ledger only when it must be sent again (a transient failure,
an open circuit, a pass out of lease): a retry then sends the very same bytes. An accepted
delivery's envelope is not kept; a delivery given up is sealed again if an operator
replays it (same Message-ID: the ID comes from the ledger key, not from the envelope).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from pipeline.db import begin_write
from pipeline.delivery.circuits import save_circuits
from pipeline.delivery.notices import give_up
from pipeline.delivery.send import SENT, UNOPENABLE, UNSENT, WAITING, Prepared, Sent
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Attempt, Delivery, Event
from pipeline.ledger.states import ACCEPTED, DELIVERED, EVENT_KINDS, FAILED, PENDING, RETRYING
from pipeline.transports.base import Outcome

UNOPENED_ADDRESS = (
    "not sent: the patient's sealed address does not open with the storage key file (a "
    "previous key left out of it, or the row altered); import the directory again, then replay"
)


class _Rows:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        #: Delivery updates, grouped by the columns they set (one executemany each).
        self.updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def event(self, delivery: Delivery, kind: str, detail: str, at: datetime) -> None:
        assert kind in EVENT_KINDS
        self.events.append(
            {
                "message_id": delivery.message_id,
                "delivery_id": delivery.id,
                "kind": kind,
                "detail": detail,
                "at": at,
            }
        )

    def update(self, delivery: Delivery, **values: Any) -> None:
        values["id"] = delivery.id
        self.updates.setdefault(tuple(sorted(values)), []).append(values)


def record_outcomes(
    session: Session, outcomes: Sequence[Sent], services: DeliveryServices
) -> Counter[str]:
    """Write the outcomes of a group of sends (and the seals of this pass) in the session's
    next transaction, and the circuits they opened or closed; returns the count of new
    delivery states. The caller commits."""
    states: Counter[str] = Counter()
    rows = _Rows()
    rare: list[Sent] = []
    for sent in outcomes:
        item = sent.prepared
        delivery = item.delivery
        if item.sealed_at is not None:
            rows.event(delivery, "sealed", item.seal_detail, item.sealed_at)
        if sent.fate == UNSENT:
            # Out of lease: the next round (reconcile) sends it; its envelope is kept.
            rows.update(delivery, **_kept(item), leased_until=None, queued_at=None)
            states["left"] += 1
            continue
        if sent.fate != SENT:
            rare.append(sent)
            continue
        result, started, finished = sent.result, sent.started, sent.finished
        assert result is not None and started is not None and finished is not None
        kind = delivery.channel_kind or ""
        attempts = delivery.attempts + 1
        first = delivery.first_attempt_at or started
        rows.attempts.append(
            {
                "delivery_id": delivery.id,
                "number": attempts,
                "started_at": started,
                "finished_at": finished,
                "transport": kind,
                "destination": sent.destination[:500],
                "outcome": result.outcome.value,
                "evidence": result.evidence,
            }
        )
        sent_detail = f"attempt {attempts} via {kind} to {sent.destination}"
        rows.event(delivery, "sent", sent_detail, started)
        done = {
            "attempts": attempts,
            "first_attempt_at": first,
            "updated_at": finished,
            "leased_until": None,
        }
        if result.outcome is Outcome.ACCEPTED:
            state = DELIVERED if result.delivered else ACCEPTED
            rows.event(delivery, "accepted", result.evidence, finished)
            if result.delivered:
                rows.event(delivery, "delivered", f"into {sent.destination}", finished)
            if item.sealed_at is not None:
                done["sealed_at"] = item.sealed_at  # the envelope itself is not kept
            rows.update(
                delivery,
                **done,
                state=state,
                last_error="",
                next_attempt_at=None,
                accepted_at=finished,
                delivered_at=finished if result.delivered else None,
            )
            states[state] += 1
            continue
        policy = services.policy(kind)
        if policy.should_retry(result.outcome, attempts, first, finished):
            next_at = finished + policy.delay(attempts, services.rng)
            rows.event(
                delivery,
                "retried",
                f"attempt {attempts} {result.outcome.value}: {result.evidence}; "
                f"next try after {next_at.isoformat(timespec='seconds')}",
                finished,
            )
            rows.update(
                delivery,
                **done,
                state=RETRYING,
                last_error=result.evidence,
                next_attempt_at=next_at,
                **_kept(item),  # a retry sends these very bytes
            )
            states[RETRYING] += 1
            continue
        rare.append(sent)

    begin_write(session)
    # The bulk rows first: a delivery's `sent` comes before its `failed` in the timeline.
    if rows.attempts:
        session.execute(insert(Attempt), rows.attempts)
    if rows.events:
        session.execute(insert(Event), rows.events)
    for changes in rows.updates.values():
        session.execute(update(Delivery), changes)
    for sent in rare:
        states[_record_rare(session, sent, services)] += 1
    save_circuits(session, services.breaker)
    return states


def _kept(item: Prepared) -> dict[str, Any]:
    """The columns that keep an envelope sealed in this pass for the next one (an envelope
    that came from the ledger is there already)."""
    if item.sealed_at is None:
        return {}
    return {"envelope": item.envelope, "sealed_at": item.sealed_at}


def _record_rare(session: Session, sent: Sent, services: DeliveryServices) -> str:
    """The outcomes that go through the ORM: a give-up, a wait for a circuit."""
    item = sent.prepared
    delivery = item.delivery
    if item.sealed_at is not None:
        delivery.sealed_at = item.sealed_at
    delivery.leased_until = None
    if sent.fate == UNOPENABLE:
        give_up(session, delivery, UNOPENED_ADDRESS, services.clock(), services.notices_dir)
        return delivery.state
    if sent.fate == WAITING:
        delivery.envelope = item.envelope  # it must be sent again: the same bytes
        return wait_for_circuit(session, delivery, sent.destination, services)
    result, started, finished = sent.result, sent.started, sent.finished
    assert result is not None and started is not None and finished is not None
    delivery.attempts += 1
    delivery.first_attempt_at = delivery.first_attempt_at or started
    delivery.updated_at = finished
    reason = (
        f"refused: {result.evidence}"
        if result.outcome is Outcome.PERMANENT
        else f"gave up after {delivery.attempts} attempts: {result.evidence}"
    )
    give_up(session, delivery, reason, finished, services.notices_dir)
    return FAILED


#: Appended to the last real error while a delivery waits for its destination's circuit.
_CIRCUIT_OPEN = " [destination unavailable: circuit open, waiting for it to come back]"


def wait_for_circuit(
    session: Session, delivery: Delivery, destination: str, services: DeliveryServices
) -> str:
    """Reschedule a delivery whose destination's circuit is open, without trying it and
    without spending an attempt; past the channel's maximum age it is given up."""
    now = services.clock()
    policy = services.policy(delivery.channel_kind or "")
    if now - (delivery.first_attempt_at or delivery.created_at) >= policy.max_age:
        give_up(
            session,
            delivery,
            f"gave up: {destination} kept failing for {policy.max_age} "
            f"(last error: {delivery.last_error.removesuffix(_CIRCUIT_OPEN) or 'none recorded'})",
            now,
            services.notices_dir,
        )
        return delivery.state
    reopen = services.breaker.open_until(destination) or now
    jitter = timedelta(seconds=services.rng.uniform(0, 5))
    delivery.next_attempt_at = max(reopen, now) + jitter
    delivery.updated_at = now
    if delivery.state == PENDING and delivery.attempts:
        delivery.state = RETRYING
    if not delivery.last_error.endswith(_CIRCUIT_OPEN):
        # One event when it starts waiting, not one per sweep while the circuit stays open.
        record_event(
            session,
            delivery.message,
            "retried",
            f"not tried: {destination} failed repeatedly (circuit open); next try after "
            f"{delivery.next_attempt_at.isoformat(timespec='seconds')}",
            now,
            delivery,
        )
        delivery.last_error += _CIRCUIT_OPEN
    return delivery.state
