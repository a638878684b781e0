"""The stages as workers run them: each idempotent, each delivery sent once.

A broker may hand the same task to two workers (redelivery after `visibility_timeout`, a
worker killed before its ack): the ledger, not the task, says what is left to do.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.breaker import CircuitBreaker
from pipeline.delivery.claims import StageReport, claim
from pipeline.delivery.deliver import send_stage
from pipeline.delivery.route import route_stage
from pipeline.delivery.seal import seal_stage
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Attempt, Delivery, Event
from pipeline.sealing.demo_pki import DemoPki
from tests.pipeline.delivery.conftest import (
    ADAM,
    ADAM_MAIL,
    ADAM_XCN,
    SHORT_LIVED,
    SHORT_LIVED_XCN,
    Clock,
    received,
    sealed,
)
from tests.pipeline.delivery.scenario import MARTIN, oru
from tests.pipeline.sealing.helpers import decrypt, verify
from tests.smtp_relay import Relay


def to_adam(control_id: str) -> bytes:
    return oru(control_id, ordering=ADAM_XCN, copy_to="")


def deliveries(ledger: sessionmaker[Session]) -> dict[int, Delivery]:
    with ledger() as session:
        return {d.id: d for d in session.scalars(select(Delivery))}


def event_count(ledger: sessionmaker[Session], kind: str) -> int:
    with ledger() as session:
        return session.scalar(select(func.count()).where(Event.kind == kind)) or 0


def set_delivery(ledger: sessionmaker[Session], delivery_id: int, **values: object) -> None:
    with ledger.begin() as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


def sent_message_ids(relay: Relay) -> list[str]:
    found = []
    for mail in relay.handler.messages:
        headers = mail.data.split(b"\r\n\r\n", 1)[0].decode()
        (line,) = [h for h in headers.split("\r\n") if h.lower().startswith("message-id:")]
        found.append(line.split(":", 1)[1].strip())
    return sorted(found)


def test_route_stage_creates_the_deliveries_once_and_hands_on_the_pending_ones(
    ledger: sessionmaker[Session], services: DeliveryServices, clock: Clock
) -> None:
    ids = received(
        ledger,
        services,
        oru("S-1", ordering=ADAM_XCN, copy_to=SHORT_LIVED_XCN),
        to_adam("S-2"),
        oru("S-3", ordering=MARTIN, copy_to=""),  # nobody the directory knows
    )

    report = route_stage(ledger, ids, services)
    routed_at = clock.now
    clock.advance(timedelta(minutes=1))
    again = route_stage(ledger, ids, services)

    rows = deliveries(ledger)
    pending = sorted(i for i, d in rows.items() if d.state == "pending")
    assert len(pending) == 3 and report.next_ids == pending
    assert dict(report.states) == {"routed": 2, "unroutable": 1}
    assert {rows[i].queued_at for i in pending} == {routed_at}
    assert [d.queued_at for d in rows.values() if d.state == "unroutable"] == [None]
    assert again.next_ids == [] and not again.states
    assert len(deliveries(ledger)) == 4 and event_count(ledger, "routed") == 3


def test_seal_stage_signs_a_result_once_for_all_its_recipients_and_only_once(
    ledger: sessionmaker[Session], services: DeliveryServices, pki: DemoPki
) -> None:
    routed = route_stage(
        ledger,
        received(ledger, services, oru("S-SIG", ordering=ADAM_XCN, copy_to=SHORT_LIVED_XCN)),
        services,
    )

    report = seal_stage(ledger, routed.next_ids, services)
    envelopes = {d.recipient_key: d.envelope for d in deliveries(ledger).values()}
    again = seal_stage(ledger, routed.next_ids, services)

    assert dict(report.states) == {"sealed": 2} and report.next_ids == routed.next_ids
    short_lived = (pki.directory / f"{SHORT_LIVED}.crt", pki.directory / f"{SHORT_LIVED}.key")
    keys = {ADAM: pki.recipients[ADAM], SHORT_LIVED: short_lived}
    inner = {}
    for key, (certificate, private_key) in keys.items():
        envelope = envelopes[key]
        assert envelope is not None
        opened = decrypt(envelope, certificate, private_key)
        assert opened.returncode == 0, opened.stderr.decode()
        inner[key] = opened.stdout
    # One signature, made once: each signing draws a fresh MIME boundary, so two signings
    # of the same result would never give identical signed entities.
    assert inner[ADAM] == inner[SHORT_LIVED]
    assert b"Verification successful" in verify(inner[ADAM], pki.ca_certificate).stderr
    # Run again (a redelivered task): nothing left to seal, nothing changed.
    assert again.next_ids == [] and not again.states
    assert {d.recipient_key: d.envelope for d in deliveries(ledger).values()} == envelopes
    assert event_count(ledger, "sealed") == 2


def test_the_same_batch_sent_by_two_workers_at_once_and_again_is_sent_once(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay
) -> None:
    ids = sealed(ledger, services, *(to_adam(f"S-RACE-{n}") for n in range(8)))
    # A second worker process: its own transports, breaker and sessions, the same ledger.
    other = dataclasses.replace(services, breaker=CircuitBreaker(), _open={})
    start = threading.Barrier(2)
    reports: list[StageReport] = []
    errors: list[BaseException] = []

    def worker(own: DeliveryServices) -> None:
        try:
            start.wait(timeout=10)
            reports.append(send_stage(ledger, ids, own))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (services, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    other.close()

    # And once more, later: the broker redelivered the task.
    again = send_stage(ledger, ids, services)

    assert errors == [] and len(reports) == 2
    assert sum((r.states for r in reports), Counter()) == Counter(accepted=8)
    assert not again.states
    rows = deliveries(ledger)
    assert sent_message_ids(relay) == sorted(str(d.envelope_message_id) for d in rows.values())
    assert all(mail.rcpt_tos == [ADAM_MAIL] for mail in relay.handler.messages)
    assert [(d.state, d.attempts, d.leased_until) for d in rows.values()] == [
        ("accepted", 1, None)
    ] * 8
    with ledger() as session:
        assert session.scalar(select(func.count()).select_from(Attempt)) == 8


def test_a_delivery_leased_by_another_worker_waits_for_the_lease_to_run_out(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    taken, free = sealed(ledger, services, to_adam("S-L1"), to_adam("S-L2"))
    set_delivery(ledger, taken, leased_until=clock.now + timedelta(minutes=5))

    assert claim(ledger, [taken], clock.now, services.lease, sealed=True) == []
    first = send_stage(ledger, [taken, free], services)
    clock.advance(timedelta(minutes=5, seconds=1))  # the other worker died: its lease ran out
    later = send_stage(ledger, [taken, free], services)

    assert dict(first.states) == {"accepted": 1} and dict(later.states) == {"accepted": 1}
    rows = deliveries(ledger)
    assert sent_message_ids(relay) == sorted(
        str(rows[i].envelope_message_id) for i in (taken, free)
    )
    assert rows[taken].accepted_at == clock.now and rows[free].accepted_at < clock.now  # type: ignore[operator]


def test_send_stage_leaves_what_is_not_due_not_sealed_or_no_longer_open(
    ledger: sessionmaker[Session], services: DeliveryServices, relay: Relay, clock: Clock
) -> None:
    later, dead, due = sealed(ledger, services, to_adam("S-N1"), to_adam("S-N2"), to_adam("S-N3"))
    routed = route_stage(
        ledger,
        received(ledger, services, to_adam("S-N4"), oru("S-N5", ordering=MARTIN, copy_to="")),
        services,
    )
    (unsealed,) = routed.next_ids
    (parked,) = [i for i, d in deliveries(ledger).items() if d.state == "unroutable"]
    set_delivery(ledger, later, state="retrying", next_attempt_at=clock.now + timedelta(minutes=9))
    set_delivery(ledger, dead, state="failed")
    everything = [later, dead, due, unsealed, parked]

    first = send_stage(ledger, everything, services)
    assert seal_stage(ledger, [dead, parked, due], services).next_ids == []
    clock.advance(timedelta(minutes=10))
    second = send_stage(ledger, everything, services)

    assert dict(first.states) == {"accepted": 1} and dict(second.states) == {"accepted": 1}
    rows = deliveries(ledger)
    assert sent_message_ids(relay) == sorted(str(rows[i].envelope_message_id) for i in (later, due))
    assert [rows[i].state for i in (dead, unsealed, parked)] == ["failed", "pending", "unroutable"]
    assert rows[unsealed].envelope is None and rows[parked].attempts == 0
