"""Reports read back and applied to deliveries: matched, recorded, never taken backwards."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.deliver import dispatch_due
from pipeline.delivery.intake import accept_bytes
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery, Event, Receipt
from pipeline.receipts.record import collect_receipts, record_report
from pipeline.receipts.reports import parse_report
from pipeline.receipts.sources import MaildirSource
from tests.pipeline.delivery.conftest import ADAM_XCN, Clock
from tests.pipeline.delivery.scenario import LAB, oru

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "receipts"


@pytest.fixture
def accepted(ledger: sessionmaker[Session], services: DeliveryServices, relay: object) -> Delivery:
    """A delivery the relay accepted: waiting for its DSN and MDN."""
    with ledger.begin() as session:
        accept_bytes(session, oru("RCPT-1", ordering=ADAM_XCN, copy_to=""), services, source="t")
    assert dict(dispatch_due(ledger, services).states) == {"accepted": 1}
    return current(ledger)


def current(ledger: sessionmaker[Session]) -> Delivery:
    with ledger() as session:
        return session.scalars(select(Delivery)).one()


def report_for(fixture: str, delivery: Delivery | None) -> bytes:
    """A fixture as it would come back for `delivery` (its IDs put in the fixture's place)."""
    text = (FIXTURES / fixture).read_bytes()
    if delivery is None:
        return text
    assert delivery.envelope_message_id is not None and delivery.envelope_id is not None
    text = re.sub(
        rb"<3f2a[0-9a-f]+@labdispatch\.localhost>", delivery.envelope_message_id.encode(), text
    )
    return re.sub(
        rb"(?i)(Original-Envelope-Id:\s*)[0-9a-f]+", rb"\g<1>" + delivery.envelope_id.encode(), text
    )


def apply(
    ledger: sessionmaker[Session],
    data: bytes,
    clock: Clock,
    source: str = "t",
    notices_dir: Path | None = None,
) -> None:
    with ledger.begin() as session:
        record_report(
            session, parse_report(data), source=source, now=clock(), notices_dir=notices_dir
        )


def test_dsn_delivered_moves_an_accepted_delivery_to_delivered(
    ledger: sessionmaker[Session], accepted: Delivery, clock: Clock
) -> None:
    apply(ledger, report_for("postfix-dsn-delivered.eml", accepted), clock)

    delivery = current(ledger)
    assert delivery.state == "delivered" and delivery.delivered_at == clock.now


def test_dsn_failure_after_acceptance_fails_the_delivery_with_the_diagnostic(
    ledger: sessionmaker[Session], accepted: Delivery, clock: Clock
) -> None:
    apply(ledger, report_for("postfix-dsn-failed-5.1.1.eml", accepted), clock)

    delivery = current(ledger)
    assert delivery.state == "failed"
    assert "5.1.1" in delivery.last_error and "550" in delivery.last_error


def test_dsn_delayed_is_noted_and_changes_nothing(
    ledger: sessionmaker[Session], accepted: Delivery, clock: Clock
) -> None:
    apply(ledger, report_for("postfix-dsn-delayed.eml", accepted), clock)

    assert current(ledger).state == "accepted"
    with ledger() as session:
        (receipt,) = session.scalars(select(Receipt)).all()
        assert (receipt.kind, receipt.disposition) == ("dsn", "delayed")
        assert session.scalars(select(Event.kind).order_by(Event.id.desc())).first() == "receipt"


def test_mdn_processed_then_displayed_ends_read_and_a_late_dsn_does_not_undo_it(
    ledger: sessionmaker[Session], accepted: Delivery, clock: Clock
) -> None:
    apply(ledger, report_for("gateway-mdn-processed-crlf.eml", accepted), clock)
    assert current(ledger).state == "delivered"
    apply(ledger, report_for("thunderbird-mdn-displayed.eml", accepted), clock)
    assert current(ledger).state == "read"

    apply(ledger, report_for("postfix-dsn-delivered.eml", accepted), clock)
    apply(ledger, report_for("postfix-dsn-failed-5.1.1.eml", accepted), clock)

    delivery = current(ledger)
    assert delivery.state == "read" and delivery.read_at is not None


def test_a_report_read_twice_is_recorded_once(
    ledger: sessionmaker[Session], accepted: Delivery, clock: Clock
) -> None:
    data = report_for("thunderbird-mdn-displayed.eml", accepted)
    apply(ledger, data, clock)
    apply(ledger, data, clock)

    with ledger() as session:
        assert len(session.scalars(select(Receipt)).all()) == 1


def test_garbage_unmatched_and_foreign_mail_are_recorded_and_the_reader_goes_on(
    ledger: sessionmaker[Session], accepted: Delivery, clock: Clock, tmp_path: Path
) -> None:
    inbox = tmp_path / "returns"
    for folder in ("tmp", "new", "cur"):
        (inbox / folder).mkdir(parents=True)
    (inbox / "new" / "1").write_bytes(report_for("garbage.eml", None))
    (inbox / "new" / "2").write_bytes(report_for("exchange-out-of-office.eml", None))
    (inbox / "new" / "3").write_bytes(report_for("postfix-dsn-failed-5.1.1.eml", None))
    (inbox / "new" / "4").write_bytes(report_for("thunderbird-mdn-displayed.eml", accepted))

    with MaildirSource(inbox) as source:
        recorded = collect_receipts(ledger, source, now=clock(), notices_dir=None)
    with MaildirSource(inbox) as source:
        again = collect_receipts(ledger, source, now=clock(), notices_dir=None)

    assert sorted((r.kind, r.matched) for r in recorded) == [
        ("dsn", False),  # about an envelope we never sent
        ("mdn", True),
        ("unrecognised", False),
        ("unrecognised", False),
    ]
    assert again == []  # each was marked done at the source once recorded
    assert current(ledger).state == "read"
    with ledger() as session:
        receipts = session.scalars(select(Receipt).order_by(Receipt.id)).all()
        assert len(receipts) == 4
        assert all(r.source.startswith("new/") for r in receipts)
        unrecognised = [r for r in receipts if r.kind == "unrecognised"]
        assert all(r.delivery_id is None and r.detail for r in unrecognised)


def queue_lifetime_expired(delivery: Delivery) -> bytes:
    """Postfix giving up after `maximal_queue_lifetime`: `Action: failed`, `Status: 4.4.1`
    (the 5.1.1 bounce with the status and diagnostic Postfix writes then)."""
    data = report_for("postfix-dsn-failed-5.1.1.eml", delivery)
    data = data.replace(b"Status: 5.1.1", b"Status: 4.4.1")
    return re.sub(
        rb"Diagnostic-Code: smtp; 550 5\.1\.1[^\n]*\n[^\n]*\n",
        b"Diagnostic-Code: X-Postfix; delivery temporarily suspended: connect to\n"
        b"    mx.cabinet-leroy.example[203.0.113.7]:25: Connection timed out\n",
        data,
    )


@pytest.mark.parametrize(
    ("report", "status"),
    [
        (lambda d: report_for("postfix-dsn-failed-5.1.1.eml", d), "DSN failed 5.1.1"),
        (queue_lifetime_expired, "DSN failed 4.4.1"),
        (lambda d: report_for("gateway-mdn-failed-error.eml", d), "MDN failed"),
    ],
    ids=["dsn-unknown-user", "dsn-queue-lifetime", "mdn-cannot-decrypt"],
)
def test_a_failure_report_fails_the_delivery_and_tells_its_laboratory(
    ledger: sessionmaker[Session],
    accepted: Delivery,
    clock: Clock,
    tmp_path: Path,
    report: Callable[[Delivery], bytes],
    status: str,
) -> None:
    """Behind a real relay a recipient's failure arrives as a report, not at RCPT time: the
    laboratory is told just the same (docs/service.md), once, through the one failure path."""
    notices = tmp_path / "notices"
    inbox = tmp_path / "returns"
    for folder in ("tmp", "new", "cur"):
        (inbox / folder).mkdir(parents=True)
    (inbox / "new" / "1").write_bytes(report(accepted))
    clock.advance(timedelta(hours=1))

    with MaildirSource(inbox) as source:
        (recorded,) = collect_receipts(ledger, source, now=clock(), notices_dir=notices)
    apply(ledger, report(accepted), clock, notices_dir=notices)  # read again: nothing more

    assert (recorded.matched, recorded.disposition) == (True, "failed")
    delivery = current(ledger)
    assert (delivery.state, delivery.failed_at, delivery.notified_at) == (
        "failed",
        clock.now,
        clock.now,
    )
    assert delivery.last_error.startswith(status)
    with ledger() as session:
        kinds = session.scalars(
            select(Event.kind).where(Event.delivery_id == delivery.id).order_by(Event.id)
        ).all()
        notified = session.scalars(select(Event.detail).where(Event.kind == "notified")).all()
    assert kinds[-2:] == ["failed", "notified"] and kinds.count("failed") == 1
    (notice,) = (notices / LAB).iterdir()
    assert notified == [f"laboratory told: {LAB}/{notice.name}"]
    text = notice.read_text(encoding="utf-8")
    assert "Control ID:     RCPT-1 (revision 1)" in text
    assert f"Reason:         {status}" in text
