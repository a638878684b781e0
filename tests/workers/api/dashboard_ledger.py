"""A small ledger whose dashboard figures are worked out by hand, for the dashboard tests.

Everything is placed relative to `now` (the moment of seeding), so the windows the
dashboard reads (the last 60 minutes, 24 hours, 30 days) hold it whenever the tests run.

Directory: Roux (mail, certificate), Roy (mailbox, certificate), Ray (https, certificate)
are equipped; Noel (mail, no certificate) is not.

    message          at      deliveries
    DASH-1 routed    -50 min Roux read (taken -49, read -10); Roy delivered (-45, MDN
                             displayed -44); Ray pending, sealed, created -29
    DASH-2 routed    -30 min Roux pending, not sealed, created -30; Ray retrying, sealed,
                             created -28; Noel failed -20
    DASH-3 unroutable -10 min one unroutable delivery
    DASH-4 received  -3 min  not routed yet
    DASH-0 routed    -2 days Roy delivered two days ago (outside every window)

Formats: DASH-2 is HPRIM Santé, DASH-3 HPRIM Médecins, DASH-0 HPRIM Santé (older than
24 h); the others HL7 v2.

Two rejects (-40 AE, -15 AR), one open circuit, one closed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from pipeline.access.tokens import create_token
from pipeline.ledger.models import Circuit, Delivery, Message, Receipt, Rejection
from pipeline.recipients.models import Certificate, Channel, Recipient

LAB = "LABO-DASH"
AE_REASON = "MSH-9 is ADT^A01: only ORU^R01 results are accepted"
AR_REASON = "PID-3 is empty: the result names no patient identifier"
OPEN_CIRCUIT = "smtp:relay.example.org:25"

#: The figures the dashboard must show for this ledger, worked out from the table above.
STATES = {
    "pending": 2,
    "retrying": 1,
    "accepted": 0,
    "delivered": 1,
    "read": 1,
    "failed": 1,
    "unroutable": 1,
}
#: (stage, waiting, oldest age in minutes)
STAGES = [("route", 1, 3), ("seal", 1, 30), ("send", 2, 29)]
RECEIVED_60MIN, DELIVERED_60MIN, FAILED_60MIN = 4, 2, 1
#: Messages received in the last 24 hours by format (DASH-0 is older).
FORMATS_24H = {"hl7v2": 2, "hprim-sante": 1, "hprim-medecins": 1}
EQUIPPED, ACTIVE = 3, 2
#: (destination, open, oldest age in minutes, failed in 24 h), slowest first.
DESTINATIONS = [("mail:example.org", 1, 30, 1), ("https:inbox.hopital.example", 2, 29, 0)]
#: Newest first.
REJECTS = [
    ("DASH-R2", "AR", AR_REASON),
    ("DASH-R1", "AE", AE_REASON),
]


@dataclass(frozen=True)
class Tokens:
    ops: str
    admin: str
    lab: str
    billing: str


def seed_dashboard_ledger(session: Session, now: datetime) -> Tokens:
    """Write the ledger above (committed) and return a token of each role."""

    def ago(**delta: float) -> datetime:
        return now - timedelta(**delta)

    roux = _recipient(session, "ana.roux", "mail", "ana.roux@example.org", now, certified=True)
    roy = _recipient(session, "ben.roy", "mailbox", "ben.roy", now, certified=True)
    ray = _recipient(
        session, "cy.ray", "https", "https://inbox.hopital.example/results", now, certified=True
    )
    noel = _recipient(session, "dee.noel", "mail", "dee.noel@example.org", now, certified=False)

    old = _message(session, "DASH-0", "routed", ago(days=2), fmt="hprim-sante")
    _delivery(session, old, roy, "delivered", ago(days=2), sealed=True, accepted_at=ago(days=2))

    first = _message(session, "DASH-1", "routed", ago(minutes=50))
    _delivery(
        session, first, roux, "read", ago(minutes=50), sealed=True,
        accepted_at=ago(minutes=49), delivered_at=ago(minutes=48), read_at=ago(minutes=10),
    )  # fmt: skip
    delivered = _delivery(
        session, first, roy, "delivered", ago(minutes=50), sealed=True,
        accepted_at=ago(minutes=45), delivered_at=ago(minutes=45),
    )  # fmt: skip
    _delivery(session, first, ray, "pending", ago(minutes=29), sealed=True)

    second = _message(session, "DASH-2", "routed", ago(minutes=30), fmt="hprim-sante")
    _delivery(session, second, roux, "pending", ago(minutes=30), sealed=False)
    _delivery(session, second, ray, "retrying", ago(minutes=28), sealed=True)
    _delivery(
        session, second, noel, "failed", ago(minutes=30), sealed=True, failed_at=ago(minutes=20)
    )

    unroutable = _message(session, "DASH-3", "unroutable", ago(minutes=10), fmt="hprim-medecins")
    session.add(
        Delivery(
            message=unroutable, recipient_id=None, recipient_key=None,
            wanted="RPPS:10009999999", state="unroutable", created_at=ago(minutes=10),
            updated_at=ago(minutes=10),
        )
    )  # fmt: skip
    _message(session, "DASH-4", "received", ago(minutes=3))
    session.flush()

    session.add(
        Receipt(
            delivery_id=delivered.id, received_at=ago(minutes=44), kind="mdn",
            disposition="displayed", report_message_id="<mdn-1@example.org>",
        )
    )  # fmt: skip
    _rejection(session, "DASH-R1", "AE", AE_REASON, ago(minutes=40))
    _rejection(session, "DASH-R2", "AR", AR_REASON, ago(minutes=15))
    session.add_all(
        [
            Circuit(
                destination=OPEN_CIRCUIT, state="open", failures=5, opened_at=ago(seconds=30),
                open_until=now + timedelta(seconds=30), updated_at=ago(seconds=30),
            ),
            Circuit(destination="smtp:other.example.org:25", state="closed", updated_at=now),
        ]
    )  # fmt: skip

    tokens = Tokens(
        ops=create_token(session, role="ops", laboratory=None, label="ops", now=now)[1],
        admin=create_token(session, role="admin", laboratory=None, label="admin", now=now)[1],
        lab=create_token(session, role="lab", laboratory=LAB, label="lab", now=now)[1],
        billing=create_token(session, role="billing", laboratory=None, label="b", now=now)[1],
    )
    session.commit()
    return tokens


def _recipient(
    session: Session, key: str, kind: str, address: str, now: datetime, *, certified: bool
) -> Recipient:
    recipient = Recipient(key=key, kind="clinician", name=key.upper(), specialty="biology")
    recipient.channels.append(Channel(kind=kind, address=address))
    if certified:
        recipient.certificates.append(
            Certificate(
                pem="-----BEGIN CERTIFICATE-----\n(not read by the statistics)\n",
                subject=f"CN={key}",
                fingerprint_sha256=hashlib.sha256(key.encode()).hexdigest(),
                not_before=now - timedelta(days=1),
                not_after=now + timedelta(days=365),
            )
        )
    session.add(recipient)
    session.flush()
    return recipient


def _message(
    session: Session, control_id: str, state: str, at: datetime, *, fmt: str = "hl7v2"
) -> Message:
    message = Message(
        format=fmt,
        laboratory=LAB, control_id=control_id, state=state,
        content_sha256=hashlib.sha256(control_id.encode()).hexdigest(), size=100,
        message_type="ORU^R01", version="2.5", source="api", raw_encrypted=b"\0",
        storage_key_id="test", received_at=at,
    )  # fmt: skip
    session.add(message)
    return message


def _delivery(
    session: Session,
    message: Message,
    recipient: Recipient,
    state: str,
    created_at: datetime,
    *,
    sealed: bool,
    **moments: datetime,
) -> Delivery:
    channel = recipient.channels[0]
    changed = max([created_at, *moments.values()])
    delivery = Delivery(
        message=message, recipient_id=recipient.id, recipient_key=recipient.key,
        channel_kind=channel.kind, channel_address=channel.address, state=state,
        envelope=b"sealed" if sealed else None, created_at=created_at, updated_at=changed,
        **moments,
    )  # fmt: skip
    session.add(delivery)
    return delivery


def _rejection(session: Session, control_id: str, ack: str, reason: str, at: datetime) -> None:
    session.add(
        Rejection(
            received_at=at, source="mllp", laboratory=LAB, control_id=control_id, ack_code=ack,
            error="test", reason=reason, content_sha256=hashlib.sha256(reason.encode()).hexdigest(),
            raw_encrypted=b"\0", storage_key_id="test",
        )
    )  # fmt: skip
