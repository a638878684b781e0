"""Recording receipts: MDNs and DSNs read back, matched to the delivery they speak of.

A report is matched by the SMTP envelope ID it echoes (Original-Envelope-Id), else by the
envelope's Message-ID (Original-Message-ID, or the returned headers). A report never takes
a delivery backwards (a late "delivered" DSN after a "displayed" MDN leaves it read). A
report that matches nothing, or is not a report at all, is still recorded, as unmatched or
unrecognised, so ops can see what came back; reading the same report twice records it once.
A report of failure fails the delivery the one way every failure does (`notices.give_up`):
its laboratory is told, as when the far side refuses at RCPT time. Behind a real relay
almost every recipient failure arrives this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.notices import give_up, scrub_mail_addresses
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Delivery, Receipt
from pipeline.ledger.states import DELIVERED, DELIVERY_RANK, FAILED, READ
from pipeline.ledger.storage import is_sealed
from pipeline.receipts.reports import Report, parse_report
from pipeline.receipts.sources import ReportSource

#: MDN dispositions and DSN actions → (delivery state they prove, event kind).
MDN_EFFECTS = {
    "processed": (DELIVERED, "processed"),
    "displayed": (READ, "read"),
    "failed": (FAILED, "failed"),
}
DSN_EFFECTS = {
    "delivered": (DELIVERED, "delivered"),
    "relayed": ("", "receipt"),
    "expanded": ("", "receipt"),
    "delayed": ("", "receipt"),
    "failed": (FAILED, "failed"),
}


@dataclass(frozen=True)
class ReceiptRecorded:
    receipt_id: int | None  # None: already recorded before
    matched: bool
    kind: str
    disposition: str


def record_report(
    session: Session, report: Report, *, source: str, now: datetime, notices_dir: Path | None
) -> ReceiptRecorded:
    """Record one parsed report and apply it to its delivery; the caller commits. A failure
    report tells the delivery's laboratory through `notices_dir` (see `notices.give_up`)."""
    if report.report_message_id is not None:
        known = session.scalar(
            select(Receipt.id).where(Receipt.report_message_id == report.report_message_id)
        )
        if known is not None:
            return ReceiptRecorded(None, False, report.kind, "")
    delivery = _match(session, report)
    disposition, detail = _describe(report)
    if delivery is not None and is_sealed(delivery.channel_address):
        detail = scrub_mail_addresses(detail)  # a patient's address may carry the INS
    receipt = Receipt(
        delivery_id=delivery.id if delivery is not None else None,
        received_at=now,
        kind=report.kind,
        disposition=disposition[:32],
        original_message_id=(report.original_message_id or None),
        original_envelope_id=(report.original_envelope_id or "")[:64] or None,
        report_message_id=report.report_message_id,
        source=source[:500],
        detail=detail,
    )
    session.add(receipt)
    session.flush()
    if delivery is not None:
        _apply(session, delivery, report.kind, disposition, detail, now, notices_dir)
    return ReceiptRecorded(receipt.id, delivery is not None, report.kind, disposition)


def collect_receipts(
    sessions: sessionmaker[Session],
    source: ReportSource,
    *,
    now: datetime,
    notices_dir: Path | None,
    limit: int = 500,
) -> list[ReceiptRecorded]:
    """Read what the source holds, record each report, then mark it done at the source:
    a crash in between re-reads it, and the report's Message-ID keeps it recorded once."""
    recorded = []
    for incoming in source.pending(limit=limit):
        report = parse_report(incoming.data)
        with sessions.begin() as session:
            recorded.append(
                record_report(
                    session, report, source=incoming.source_id, now=now, notices_dir=notices_dir
                )
            )
        source.mark_done(incoming.source_id)
    return recorded


def _match(session: Session, report: Report) -> Delivery | None:
    if report.original_envelope_id:
        found = session.scalar(
            select(Delivery).where(Delivery.envelope_id == report.original_envelope_id)
        )
        if found is not None:
            return found
    if report.original_message_id:
        return session.scalar(
            select(Delivery).where(Delivery.envelope_message_id == report.original_message_id)
        )
    return None


def _describe(report: Report) -> tuple[str, str]:
    if report.kind == "mdn":
        disposition = report.disposition or ""
        return disposition, f"MDN {disposition} {report.disposition_mode or ''}".strip()
    if report.kind == "dsn":
        action = report.outcome or ""
        status = next((r for r in report.recipients if r.action == action), None)
        if status is None:
            return "", "DSN without a per-recipient part"
        text = f"DSN {action} {status.status or ''}".strip()
        if status.diagnostic_code:
            text += f": {status.diagnostic_code}"
        return action, text
    return "", f"not a delivery report: {report.reason}"


def _apply(
    session: Session,
    delivery: Delivery,
    kind: str,
    disposition: str,
    detail: str,
    now: datetime,
    notices_dir: Path | None,
) -> None:
    effects = MDN_EFFECTS if kind == "mdn" else DSN_EFFECTS if kind == "dsn" else {}
    state, event = effects.get(disposition, ("", "receipt"))
    moves = bool(state) and DELIVERY_RANK[state] > DELIVERY_RANK[delivery.state]
    if state == FAILED:
        if moves and delivery.state not in (DELIVERED, READ):
            # The failed event, the notice and the `notified` event, as for every failure.
            give_up(session, delivery, detail, now, notices_dir)
        else:
            # Already failed, or a failure report about a copy that was already delivered:
            # noted, changes nothing.
            record_event(session, delivery.message, "receipt", detail, now, delivery)
        return
    record_event(session, delivery.message, event, detail, now, delivery)
    if not moves:
        return
    delivery.state = state
    delivery.updated_at = now
    if state == DELIVERED:
        delivery.delivered_at = delivery.delivered_at or now
    elif state == READ:
        delivery.read_at = now
        delivery.delivered_at = delivery.delivered_at or now
