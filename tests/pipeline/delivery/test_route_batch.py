"""Routing in the deliver pass, set-based (issue 12): a batch's deliveries in one multi-row
INSERT … RETURNING (claimed as they are written), their events in one INSERT, the messages'
states in one UPDATE; one message tripping a bug still leaves the others routed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import begin_write
from pipeline.delivery.claims import StageReport
from pipeline.delivery.route import route_locked
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery, Event, Message
from tests.pipeline.delivery.conftest import (
    ADAM,
    ADAM_MAIL,
    ADAM_XCN,
    SHORT_LIVED_XCN,
    UNEQUIPPED_XCN,
    received,
)
from tests.pipeline.delivery.scenario import LAB, MARTIN, oru

LEASE = timedelta(minutes=10)


def batch(prefix: str, size: int) -> list[bytes]:
    """A mix: two recipients; one the directory does not know; one named twice (one
    delivery); nobody the directory knows (the message is unroutable)."""
    mix = [
        lambda n: oru(f"{prefix}-{n}", ordering=ADAM_XCN, copy_to=SHORT_LIVED_XCN),
        lambda n: oru(f"{prefix}-{n}", ordering=MARTIN, copy_to=ADAM_XCN),
        lambda n: oru(f"{prefix}-{n}", ordering=UNEQUIPPED_XCN, copy_to=UNEQUIPPED_XCN),
        lambda n: oru(f"{prefix}-{n}", ordering=MARTIN, copy_to=""),
    ]
    return [mix[n % len(mix)](n) for n in range(size)]


def route_in_deliver_pass(
    ledger: sessionmaker[Session], services: DeliveryServices, ids: list[int]
) -> tuple[list[int], StageReport]:
    report = StageReport()
    with ledger() as session:
        begin_write(session)
        messages, _ = route_locked(
            session, ids, services, services.clock(), report, claim_until=services.clock() + LEASE
        )
        routed = [message.id for message in messages]
        session.commit()
    return routed, report


def test_a_batch_is_routed_with_a_fixed_number_of_statements_whatever_its_size(
    ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    engine = ledger.kw["bind"]
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        words = statement.split()
        statements.append(" ".join(words[:3]).upper())

    def run(prefix: str, size: int) -> list[str]:
        ids = received(ledger, services, *batch(prefix, size))
        statements.clear()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            routed, report = route_in_deliver_pass(ledger, services, ids)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        assert sorted(routed) == sorted(ids)
        assert sum(report.states.values()) == size
        return list(statements)

    small, large = run("S", 4), run("L", 40)
    assert small == large, (small, large)
    assert sum(s.startswith("INSERT INTO DELIVERIES") for s in large) == 1, large
    assert sum(s.startswith("INSERT INTO EVENTS") for s in large) == 1, large
    assert sum(s.startswith("UPDATE MESSAGES") for s in large) == 1, large
    # The claim is written with the rows, not by a second statement.
    assert not [s for s in large if s.startswith("UPDATE DELIVERIES")], large

    with ledger() as session:
        rows = list(session.scalars(select(Delivery).order_by(Delivery.id)))
        pending = [d for d in rows if d.state == "pending"]
        others = [d for d in rows if d.state != "pending"]
        assert pending and others
        assert {(d.leased_until, d.queued_at) for d in pending} == {
            (services.clock() + LEASE, services.clock())
        }
        assert {(d.leased_until, d.queued_at) for d in others} == {(None, None)}
        # Each delivery has exactly its one event, about it.
        events = list(session.scalars(select(Event).where(Event.delivery_id.is_not(None))))
        assert sorted(e.delivery_id for e in events) == [d.id for d in rows]
        for e in events:
            delivery = session.get_one(Delivery, e.delivery_id)
            assert e.message_id == delivery.message_id
            assert e.kind == ("routed" if delivery.state == "pending" else "unroutable")
            if delivery.recipient_key:
                assert e.detail.startswith(delivery.recipient_key)
        states = dict(
            session.execute(
                select(Message.control_id, Message.state).where(Message.control_id.like("L-%"))
            ).all()
        )
        assert [states[f"L-{n}"] for n in range(4)] == ["routed"] * 3 + ["unroutable"]


def test_a_message_whose_routing_fails_in_the_database_leaves_the_others_routed(
    ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    ids = received(
        ledger, services, *[oru(f"F-{n}", ordering=ADAM_XCN, copy_to="") for n in range(3)]
    )
    # A stray row holding the unique key the second message's delivery will need: its
    # INSERT fails, so the batch's does, and it is routed one by one.
    with ledger.begin() as session:
        message = session.scalars(select(Message).where(Message.control_id == "F-1")).one()
        session.execute(
            insert(Delivery).values(
                message_id=message.id,
                laboratory=LAB,
                message_received_at=message.received_at,
                recipient_key=ADAM,
                channel_kind="mail",
                channel_address=ADAM_MAIL,
                state="unroutable",
            )
        )
    routed, report = route_in_deliver_pass(ledger, services, ids)
    assert sorted(routed) == sorted([ids[0], ids[2]])
    assert dict(report.states) == {"routed": 2, "error": 1}
    with ledger() as session:
        states = dict(session.execute(select(Message.control_id, Message.state)).all())
        assert states == {"F-0": "routed", "F-1": "received", "F-2": "routed"}
        assert session.scalars(select(Event.kind).where(Event.kind == "routed")).all() == [
            "routed",
            "routed",
        ]
