"""The ledger's figures for /metrics, on a ledger seeded by hand (every figure worked out).

Counters start at 0 at a process's first reading and then advance by exactly what was
added; gauges read what is open; certificate horizons follow what sealing would pick.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import session_factory
from pipeline.delivery.breaker import OPEN, Transition
from pipeline.delivery.circuits import save_transitions
from pipeline.ledger.models import Delivery, Event, Message, Rejection
from pipeline.recipients.models import CHANNEL_KINDS, Certificate, Channel, Laboratory, Recipient
from pipeline.settings import SigningSettings
from pipeline.stats.metrics import (
    LATENCY_BUCKETS,
    UNKNOWN_LABORATORY,
    LedgerMeter,
    MetricsReading,
    RetryBacklog,
)
from tests.conftest import CertificateMaker

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
LAB_A, LAB_B = "LABO-A", "LABO-B"
_numbers = itertools.count(1)
K = TypeVar("K")


# --- seeding ---------------------------------------------------------------------------------


def message(session: Session, lab: str, at: datetime, state: str = "routed") -> Message:
    """A result as intake records it: the row and its `received` event."""
    row = Message(
        laboratory=lab,
        control_id=f"CTRL-{next(_numbers)}",
        state=state,
        content_sha256="0" * 64,
        size=100,
        message_type="ORU^R01",
        version="2.5",
        source="mllp",
        raw_encrypted=b"ciphertext",
        storage_key_id="k1",
        received_at=at,
    )
    session.add(row)
    session.flush()
    event(session, row, "received", at)
    return row


def event(
    session: Session, row: Message, kind: str, at: datetime, delivery: Delivery | None = None
) -> None:
    session.add(Event(message_id=row.id, delivery=delivery, kind=kind, at=at, detail=""))
    session.flush()


def delivery(
    session: Session,
    row: Message,
    channel: str,
    *,
    state: str = "pending",
    sealed: bool = False,
    next_attempt_at: datetime | None = None,
) -> Delivery:
    made = Delivery(
        message=row,
        recipient_key=f"r{next(_numbers)}",
        channel_kind=channel,
        channel_address="someone@example.org",
        state=state,
        envelope=b"sealed" if sealed else None,
        next_attempt_at=next_attempt_at,
        created_at=row.received_at,
        updated_at=row.received_at,
    )
    session.add(made)
    session.flush()
    return made


def handed_over(session: Session, made: Delivery, at: datetime) -> None:
    made.state, made.accepted_at, made.envelope = "accepted", at, b"sealed"
    event(session, made.message, "accepted", at, made)


def failed(session: Session, made: Delivery, at: datetime) -> None:
    made.state, made.failed_at = "failed", at
    event(session, made.message, "failed", at, made)


def read(session: Session, made: Delivery, at: datetime) -> None:
    made.state, made.read_at = "read", at
    event(session, made.message, "read", at, made)


def rejection(session: Session, lab: str, at: datetime) -> None:
    session.add(
        Rejection(
            received_at=at,
            source="mllp",
            laboratory=lab,
            control_id="X",
            ack_code="AE",
            error="NotHL7",
            content_sha256="0" * 64,
            raw_encrypted=b"ciphertext",
            storage_key_id="k1",
        )
    )
    session.flush()


@pytest.fixture
def sessions(session: Session, engine: Engine) -> sessionmaker[Session]:
    """The migrated database (`session` migrates it) as the meter opens it."""
    return session_factory(engine)


def reading(meter: LedgerMeter, sessions: sessionmaker[Session], now: datetime) -> MetricsReading:
    return meter.read(sessions, now)


def nonzero(counter: Mapping[K, int]) -> dict[K, int]:
    return {key: value for key, value in counter.items() if value}


# --- counters --------------------------------------------------------------------------------


def test_counters_start_at_zero_and_advance_by_exactly_what_was_added(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    # Before the process looks: 2 results of lab A (one delivered by mail), 1 rejection.
    old = message(session, LAB_A, T0)
    handed_over(session, delivery(session, old, "mail"), T0 + timedelta(seconds=3))
    message(session, LAB_A, T0 + timedelta(minutes=1))
    rejection(session, LAB_A, T0)
    session.commit()
    meter = LedgerMeter()

    first = reading(meter, sessions, T0 + timedelta(minutes=10))

    counters = first.counters
    assert counters.started_at == T0 + timedelta(minutes=10)
    assert nonzero(counters.received) == {} and nonzero(counters.delivered) == {}
    assert nonzero(counters.rejected) == {}
    # Every known laboratory and channel has its series, at 0, from the first scrape.
    assert counters.received == {LAB_A: 0}
    assert counters.rejected == {LAB_A: 0, UNKNOWN_LABORATORY: 0}
    assert set(counters.delivered) == {(LAB_A, kind) for kind in CHANNEL_KINDS}
    assert counters.last_received == {LAB_A: T0 + timedelta(minutes=1)}

    # Then: lab A sends 2, lab B (new) sends 1; deliveries go out, fail, are read.
    t1 = T0 + timedelta(minutes=20)
    a1 = message(session, LAB_A, t1)
    a2 = message(session, LAB_A, t1 + timedelta(seconds=1))
    b1 = message(session, LAB_B, t1 + timedelta(seconds=2))
    event(session, a1, "duplicate", t1 + timedelta(seconds=5))
    mail_fast = delivery(session, a1, "mail")
    handed_over(session, mail_fast, t1 + timedelta(seconds=4))  # 4 s: bucket <= 5
    mailbox = delivery(session, a1, "mailbox")
    handed_over(session, mailbox, t1 + timedelta(minutes=50))  # 3000 s: bucket <= 3600
    read(session, mailbox, t1 + timedelta(minutes=55))
    https = delivery(session, a2, "https")
    event(session, a2, "retried", t1 + timedelta(minutes=2), https)
    failed(session, https, t1 + timedelta(minutes=5))
    unknown = delivery(session, b1, "mail", state="unroutable")
    event(session, b1, "unroutable", t1 + timedelta(seconds=2), unknown)
    b_mail = delivery(session, b1, "mail")
    handed_over(session, b_mail, t1 + timedelta(seconds=2, milliseconds=500))  # 0.5 s: <= 1
    # A late failure report about a delivery already delivered changes nothing: not counted.
    event(session, mail_fast.message, "failed", t1 + timedelta(hours=1), mail_fast)
    rejection(session, LAB_A, t1)
    rejection(session, "GARBAGE\x07", t1)  # not a laboratory we know: not a label
    rejection(session, "", t1)
    session.commit()

    second = reading(meter, sessions, t1 + timedelta(hours=2))

    counters = second.counters
    assert nonzero(counters.received) == {LAB_A: 2, LAB_B: 1}
    assert nonzero(counters.duplicates) == {LAB_A: 1}
    assert nonzero(counters.unroutable) == {LAB_B: 1}
    assert nonzero(counters.delivered) == {
        (LAB_A, "mail"): 1,
        (LAB_A, "mailbox"): 1,
        (LAB_B, "mail"): 1,
    }
    assert nonzero(counters.read) == {(LAB_A, "mailbox"): 1}
    assert nonzero(counters.failed) == {(LAB_A, "https"): 1}
    assert nonzero(counters.retried) == {(LAB_A, "https"): 1}
    assert nonzero(counters.rejected) == {LAB_A: 1, UNKNOWN_LABORATORY: 2}
    assert counters.last_received == {
        LAB_A: t1 + timedelta(seconds=1),
        LAB_B: t1 + timedelta(seconds=2),
    }
    mail = counters.latency["mail"]
    assert mail.cumulative()[:2] == [(1.0, 1), (5.0, 2)]
    assert mail.count == 2 and mail.total_seconds == pytest.approx(4.5, abs=0.01)
    mailbox_latency = counters.latency["mailbox"]
    assert mailbox_latency.counts[LATENCY_BUCKETS.index(3600.0)] == 1
    assert mailbox_latency.total_seconds == pytest.approx(3000.0, abs=0.01)
    assert counters.latency["https"].count == 0

    # Nothing new: nothing moves.
    third = reading(meter, sessions, t1 + timedelta(hours=3))
    assert third.counters.received == counters.received
    assert third.counters.delivered == counters.delivered
    assert third.counters.latency["mail"].counts == mail.counts


def test_a_row_committed_after_a_later_one_is_counted_once(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    """IDs are handed out at insert but become visible at commit: a reading can see ID n+1
    before n. Placed by hand here (SQLite has one writer); see the PostgreSQL test below
    for two real transactions."""
    first = message(session, LAB_A, T0)
    session.commit()
    meter = LedgerMeter()
    reading(meter, sessions, T0 + timedelta(minutes=1))
    skipped = first.id + 10
    late = first.id + 11
    session.add(Event(id=late, message_id=first.id, kind="received", at=T0, detail=""))
    session.commit()

    assert reading(meter, sessions, T0 + timedelta(minutes=2)).counters.received[LAB_A] == 1

    session.add(Event(id=skipped, message_id=first.id, kind="received", at=T0, detail=""))
    session.commit()
    assert reading(meter, sessions, T0 + timedelta(minutes=3)).counters.received[LAB_A] == 2
    assert reading(meter, sessions, T0 + timedelta(minutes=4)).counters.received[LAB_A] == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_event_of_a_transaction_still_open_is_counted_when_it_commits(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    base = message(session, LAB_A, T0)
    session.commit()
    meter = LedgerMeter()
    reading(meter, sessions, T0 + timedelta(minutes=1))

    with sessions() as slow, sessions() as quick:
        event(slow, slow.get_one(Message, base.id), "received", T0)  # takes ID n, not committed
        event(quick, quick.get_one(Message, base.id), "received", T0)  # takes n + 1
        quick.commit()
        assert reading(meter, sessions, T0 + timedelta(minutes=2)).counters.received[LAB_A] == 1
        slow.commit()

    assert reading(meter, sessions, T0 + timedelta(minutes=3)).counters.received[LAB_A] == 2


def test_holes_are_forgotten_after_their_time(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    first = message(session, LAB_A, T0)
    session.commit()
    meter = LedgerMeter()
    reading(meter, sessions, T0)
    session.add(Event(id=first.id + 5, message_id=first.id, kind="parsed", at=T0, detail=""))
    session.commit()
    reading(meter, sessions, T0 + timedelta(minutes=1))
    assert len(meter._events.holes) == 4  # the bookkeeping is the point

    reading(meter, sessions, T0 + timedelta(minutes=17))

    assert meter._events.holes == {}


# --- gauges ----------------------------------------------------------------------------------


def test_gauges_read_what_is_open(session: Session, sessions: sessionmaker[Session]) -> None:
    now = T0 + timedelta(hours=1)
    message(session, LAB_A, T0 + timedelta(minutes=50), state="received")  # route, 10 min
    routed = message(session, LAB_A, T0 + timedelta(minutes=20))
    delivery(session, routed, "mail")  # seal, 40 min
    delivery(session, routed, "https", state="retrying", sealed=True, next_attempt_at=now)
    older = message(session, LAB_A, T0)
    delivery(
        session, older, "https", state="retrying", sealed=True, next_attempt_at=now.replace(hour=23)
    )
    delivery(session, older, "mail", state="retrying", sealed=True, next_attempt_at=T0)
    handed_over(session, delivery(session, older, "mailbox"), T0)
    save_transitions(
        session,
        [Transition("smtp://relay.example:25", OPEN, 5, T0, now + timedelta(seconds=30), now)],
    )
    session.commit()

    got = LedgerMeter().read(sessions, now)

    assert [(s.stage, s.waiting, s.oldest_age_seconds) for s in got.stages] == [
        ("route", 1, 600.0),
        ("seal", 1, 2400.0),
        ("send", 3, 3600.0),
    ]
    assert got.retries == {
        "mail": RetryBacklog(retrying=1, due=1),
        "mailbox": RetryBacklog(0, 0),
        "mssante": RetryBacklog(0, 0),
        "https": RetryBacklog(retrying=2, due=1),
    }
    assert [(c.destination, c.state, c.failures) for c in got.circuits] == [
        ("smtp://relay.example:25", OPEN, 5)
    ]


def test_certificate_horizons_follow_what_sealing_would_use(
    session: Session,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    make_certificate: CertificateMaker,
) -> None:
    now = T0

    def recipient(key: str, *ends_in_days: int, channel: bool = True) -> None:
        row = Recipient(key=key, kind="clinician", name=key)
        session.add(row)
        session.flush()
        if channel:
            session.add(Channel(recipient_id=row.id, kind="mail", address=f"{key}@example.org"))
        for days in ends_in_days:
            session.add(
                Certificate(
                    recipient_id=row.id,
                    pem="(not read here)",
                    subject=f"CN={key}",
                    fingerprint_sha256=f"{key}-{days}".ljust(64, "0")[:64],
                    not_before=now - timedelta(days=365),
                    not_after=now + timedelta(days=days),
                )
            )
        session.flush()

    recipient("renewed", 10, 400)  # the renewal covers the old one's end
    recipient("ending", 20)
    recipient("also.ending", 25)
    recipient("lapsed", -3)  # nothing valid: not in use (sealing fails it, with the reason)
    recipient("no.channel", 5, channel=False)  # receives nothing
    session.add(Laboratory(code=LAB_A))
    session.commit()
    signing_dir = tmp_path / "signing"
    signing_dir.mkdir()
    (signing_dir / f"{LAB_A}.crt").write_bytes(make_certificate(LAB_A, valid_to_days=15))
    (signing_dir / f"{LAB_B}.p12").write_bytes(b"never opened")
    default = tmp_path / "default.crt"
    default.write_bytes(make_certificate("default", valid_to_days=100))
    signing = SigningSettings(
        certificate=default, key=tmp_path / "absent.key", directory=signing_dir
    )

    got = LedgerMeter(signing).read(sessions, now).certificates

    recipients, signers = got.horizons
    assert (recipients.kind, recipients.earliest, recipients.expiring) == (
        "recipient",
        now + timedelta(days=20),
        2,
    )
    ends = {s.laboratory: s.not_after for s in got.signing}
    assert set(ends) == {"default", LAB_A}
    real_now = datetime.now(UTC)
    assert timedelta(days=14) < ends[LAB_A] - real_now <= timedelta(days=15)
    assert (signers.kind, signers.earliest, signers.expiring) == ("signing", ends[LAB_A], 1)


def test_the_first_reading_finds_each_laboratorys_latest_result(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    for lab, minutes in ((LAB_A, 0), (LAB_B, 5), (LAB_A, 30), (LAB_B, 10), ("LABO-C", 1)):
        message(session, lab, T0 + timedelta(minutes=minutes))
    session.commit()

    got = LedgerMeter().read(sessions, T0 + timedelta(hours=1)).counters.last_received

    assert got == {
        LAB_A: T0 + timedelta(minutes=30),
        LAB_B: T0 + timedelta(minutes=10),
        "LABO-C": T0 + timedelta(minutes=1),
    }
