"""A small ledger whose statistics are worked out by hand in the tests.

November 2026, two laboratories. Times are UTC. Latencies (first of accepted/delivered/
read, minus the message's reception) are chosen so the percentiles are easy to check.

LABA
  A0  2026-10-31 23:59:59  (October: outside)   d9  r-card   https    read (read_at 11-05)
  A1  2026-11-01 00:00:00  (first instant: in)  d1  r-gp1    mail     read       att 1  10 s
                                                d2  r-gp2    mailbox  delivered  att 2  20 s
  A2  2026-11-03 12:00:00                        d3  r-card   https    accepted   att 3  30 s
                                                d4  unknown RPPS:10000000001  unroutable
  A2 revision 2, 2026-11-04 09:00:00 (held, no delivery)
  A3  2026-11-03 13:00:00                        d5  r-unk    mail     read (read_at 12-05) 100 s
                                                d6  r-nocert mail     failed     att 5
  A4  2026-11-30 23:59:59  (last second: in)     d7  r-gp2    mailbox  pending    att 0
  A5  2026-12-01 00:00:00  (December: outside)   d8  r-gp1    mail     delivered  att 1  5 s
  duplicates: of A1 at 11-01 00:05, of A0 at 11-02 10:00, of A2 at 12-01 00:00
  rejected:   11-03 09:00 (AE), 11-30 23:00 (AR), 12-01 00:00 (AE)
LABB
  B1  2026-11-15 10:00:00                        e1  r-gp1    mail     accepted   att 1  40 s
                                                e2  r-card   https    failed     att 4
  B2  2026-11-15 11:00:00                        e3  r-gp2    mailbox  retrying   att 2
  rejected:   11-15 08:00 (AE)

HPRIM results (`seed_hprim`, added on top of the above for the grouping by format; every
message above is "hl7v2"):
LABA
  H1  2026-11-10 08:00:00  hprim-sante     f1  r-gp1    mail     delivered  att 1  50 s
                                           f2  unknown ADELI:751234567  unroutable
  H2  2026-11-20 09:00:00  hprim-medecins  f3  r-card   https    read       att 2   8 s
  H5  2026-12-01 00:00:00  hprim-sante     (December: outside)  f5 r-gp1 mail delivered 3 s
  duplicates: of H1 at 11-12 10:00, of H5 at 12-01 00:10 (outside)
LABB
  H3  2026-11-25 07:00:00  hprim-medecins  f4  r-gp2    mailbox  failed     att 3

Receipts: MDN processed on e1 at 11-16 (counts), DSN delivered on d2 at 11-02 (a DSN: does
not count), MDN failed on e3 at 11-20 (not an acknowledgement), MDN displayed on d7 at
12-02 (December), MDN displayed with no delivery (unmatched).

Directory (`now` = 2026-12-10): r-gp1, r-gp2 (general practice), r-card (cardiology) and
r-unk (no specialty) have a channel and a valid certificate; r-nocert (cardiology) has only
an expired one; r-nochan has a certificate but no channel.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from pipeline.ledger.models import Delivery, Event, Message, Receipt, Rejection
from pipeline.recipients.models import Certificate, Channel, Recipient

NOW = datetime(2026, 12, 10, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def message(
    lab: str,
    control_id: str,
    received: datetime,
    *,
    revision: int = 1,
    state: str = "routed",
    format: str = "hl7v2",
) -> Message:
    return Message(
        laboratory=lab,
        control_id=control_id,
        revision=revision,
        state=state,
        content_sha256=hashlib.sha256(f"{lab}{control_id}{revision}".encode()).hexdigest(),
        size=100,
        message_type="ORU^R01",
        version="2.5",
        format=format,
        source="mllp",
        raw_encrypted=b"\0",
        storage_key_id="test",
        received_at=received,
    )


def delivery(
    msg: Message,
    recipient: Recipient | None,
    kind: str | None,
    address: str | None,
    state: str,
    *,
    attempts: int = 0,
    wanted: str = "",
    created: datetime | None = None,
    updated: datetime | None = None,
    accepted: datetime | None = None,
    delivered: datetime | None = None,
    read: datetime | None = None,
    failed: datetime | None = None,
    envelope: bytes | None = None,
) -> Delivery:
    created = created or msg.received_at + timedelta(seconds=1)
    return Delivery(
        message=msg,
        recipient_id=recipient.id if recipient else None,
        recipient_key=recipient.key if recipient else None,
        wanted=wanted,
        channel_kind=kind,
        channel_address=address,
        state=state,
        attempts=attempts,
        created_at=created,
        updated_at=updated or max(t for t in (created, accepted, delivered, read, failed) if t),
        accepted_at=accepted,
        delivered_at=delivered,
        read_at=read,
        failed_at=failed,
        envelope=envelope,
    )


def recipient(
    session: Session,
    key: str,
    specialty: str | None,
    channel: tuple[str, str] | None,
    certificate: tuple[datetime, datetime] | None,
) -> Recipient:
    person = Recipient(key=key, kind="clinician", name=key.upper(), specialty=specialty)
    if channel:
        person.channels.append(Channel(kind=channel[0], address=channel[1]))
    if certificate:
        person.certificates.append(
            Certificate(
                pem="PEM",
                subject=f"CN={key}",
                fingerprint_sha256=hashlib.sha256(key.encode()).hexdigest(),
                not_before=certificate[0],
                not_after=certificate[1],
            )
        )
    session.add(person)
    return person


VALID = (at("2000-01-01T00:00:00"), at("2100-01-01T00:00:00"))
EXPIRED = (at("2025-01-01T00:00:00"), at("2026-06-30T00:00:00"))


def seed_november(session: Session) -> None:
    gp1 = recipient(session, "r-gp1", "general practice", ("mail", "gp1@alpha.example"), VALID)
    gp2 = recipient(session, "r-gp2", "general practice", ("mailbox", "gp2"), VALID)
    card = recipient(session, "r-card", "cardiology", ("https", "https://portal.example/in"), VALID)
    unk = recipient(session, "r-unk", None, ("mail", "unk@beta.example"), VALID)
    nocert = recipient(session, "r-nocert", "cardiology", ("mail", "nc@beta.example"), EXPIRED)
    recipient(session, "r-nochan", "oncology", None, VALID)
    session.flush()

    a0 = message("LABA", "A0", at("2026-10-31T23:59:59"))
    a1 = message("LABA", "A1", at("2026-11-01T00:00:00"))
    a2 = message("LABA", "A2", at("2026-11-03T12:00:00"))
    a2b = message("LABA", "A2", at("2026-11-04T09:00:00"), revision=2, state="held")
    a3 = message("LABA", "A3", at("2026-11-03T13:00:00"))
    a4 = message("LABA", "A4", at("2026-11-30T23:59:59"))
    a5 = message("LABA", "A5", at("2026-12-01T00:00:00"))
    b1 = message("LABB", "B1", at("2026-11-15T10:00:00"))
    b2 = message("LABB", "B2", at("2026-11-15T11:00:00"))
    session.add_all([a0, a1, a2, a2b, a3, a4, a5, b1, b2])
    session.flush()

    def plus(msg: Message, seconds: int) -> datetime:
        return msg.received_at + timedelta(seconds=seconds)

    mail, mailbox, https = "mail", "mailbox", "https"
    gp1_at, gp2_at, card_at = "gp1@alpha.example", "gp2", "https://portal.example/in"
    d2 = delivery(a1, gp2, mailbox, gp2_at, "delivered", attempts=2, delivered=plus(a1, 20))
    d7 = delivery(a4, gp2, mailbox, gp2_at, "pending")
    e1 = delivery(b1, gp1, mail, gp1_at, "accepted", attempts=1, accepted=plus(b1, 40))
    e3 = delivery(b2, gp2, mailbox, gp2_at, "retrying", attempts=2)
    session.add_all(
        [
            delivery(a0, card, https, card_at, "read", attempts=1, accepted=plus(a0, 3),
                     read=at("2026-11-05T08:00:00")),
            delivery(a1, gp1, mail, gp1_at, "read", attempts=1, accepted=plus(a1, 10),
                     delivered=plus(a1, 15), read=at("2026-11-02T08:00:00")),
            d2,
            delivery(a2, card, https, card_at, "accepted", attempts=3, accepted=plus(a2, 30)),
            delivery(a2, None, None, None, "unroutable", wanted="RPPS:10000000001"),
            delivery(a3, unk, mail, "unk@beta.example", "read", attempts=1,
                     accepted=plus(a3, 100), read=at("2026-12-05T08:00:00")),
            delivery(a3, nocert, mail, "nc@beta.example", "failed", attempts=5,
                     failed=plus(a3, 3600)),
            d7,
            delivery(a5, gp1, mail, gp1_at, "delivered", attempts=1, accepted=plus(a5, 5),
                     delivered=plus(a5, 6)),
            e1,
            delivery(b1, card, https, card_at, "failed", attempts=4, failed=plus(b1, 600)),
            e3,
        ]
    )  # fmt: skip
    session.flush()

    for msg, when in (
        (a1, "2026-11-01T00:05:00"),
        (a0, "2026-11-02T10:00:00"),
        (a2, "2026-12-01T00:00:00"),
    ):
        session.add(Event(message_id=msg.id, kind="duplicate", at=at(when), detail="sent again"))
    for lab, when, code in (
        ("LABA", "2026-11-03T09:00:00", "AE"),
        ("LABA", "2026-11-30T23:00:00", "AR"),
        ("LABA", "2026-12-01T00:00:00", "AE"),
        ("LABB", "2026-11-15T08:00:00", "AE"),
    ):
        session.add(rejection(lab, at(when), code))
    for target, kind, disposition, when in (
        (e1, "mdn", "processed", "2026-11-16T09:00:00"),
        (d2, "dsn", "delivered", "2026-11-02T09:00:00"),
        (e3, "mdn", "failed", "2026-11-20T09:00:00"),
        (d7, "mdn", "displayed", "2026-12-02T09:00:00"),
        (None, "mdn", "displayed", "2026-11-10T09:00:00"),
    ):
        session.add(
            Receipt(
                delivery_id=target.id if target else None,
                received_at=at(when),
                kind=kind,
                disposition=disposition,
            )
        )
    session.commit()


def seed_hprim(session: Session) -> None:
    """The HPRIM results of the module's table, on a ledger seeded by `seed_november`."""
    by_key = {r.key: r for r in session.query(Recipient)}
    gp1, gp2, card = by_key["r-gp1"], by_key["r-gp2"], by_key["r-card"]
    h1 = message("LABA", "H1", at("2026-11-10T08:00:00"), format="hprim-sante")
    h2 = message("LABA", "H2", at("2026-11-20T09:00:00"), format="hprim-medecins")
    h5 = message("LABA", "H5", at("2026-12-01T00:00:00"), format="hprim-sante")
    h3 = message("LABB", "H3", at("2026-11-25T07:00:00"), format="hprim-medecins")
    session.add_all([h1, h2, h5, h3])
    session.flush()

    def plus(msg: Message, seconds: int) -> datetime:
        return msg.received_at + timedelta(seconds=seconds)

    session.add_all(
        [
            delivery(h1, gp1, "mail", "gp1@alpha.example", "delivered", attempts=1,
                     accepted=plus(h1, 50), delivered=plus(h1, 55)),
            delivery(h1, None, None, None, "unroutable", wanted="ADELI:751234567"),
            delivery(h2, card, "https", "https://portal.example/in", "read", attempts=2,
                     accepted=plus(h2, 8), read=at("2026-11-21T08:00:00")),
            delivery(h5, gp1, "mail", "gp1@alpha.example", "delivered", attempts=1,
                     accepted=plus(h5, 3)),
            delivery(h3, gp2, "mailbox", "gp2", "failed", attempts=3, failed=plus(h3, 900)),
        ]
    )  # fmt: skip
    for msg, when in ((h1, "2026-11-12T10:00:00"), (h5, "2026-12-01T00:10:00")):
        session.add(Event(message_id=msg.id, kind="duplicate", at=at(when), detail="sent again"))
    session.commit()


def rejection(lab: str, when: datetime, code: str, control_id: str = "X1") -> Rejection:
    return Rejection(
        received_at=when,
        source="mllp",
        laboratory=lab,
        control_id=control_id,
        ack_code=code,
        error="structure",
        reason="OBR segment missing",
        content_sha256="0" * 64,
        raw_encrypted=b"\0",
        storage_key_id="test",
    )
