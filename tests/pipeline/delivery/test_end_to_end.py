"""A corpus result from intake to the recipients' hands, without workers or a broker.

The SMTP relay and the Maildir are real; each envelope is opened the way a recipient
would, with the stock `openssl` binary (decrypt, then verify against the test CA), and
what comes out is compared byte for byte with what the laboratory sent.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.deliver import dispatch_due
from pipeline.delivery.intake import accept_bytes
from pipeline.delivery.services import DeliveryServices
from pipeline.delivery.trace import render_trace, trace_result
from pipeline.ledger.models import Delivery
from pipeline.receipts.record import collect_receipts
from pipeline.receipts.sources import MaildirSource
from pipeline.sealing.demo_pki import DemoPki
from tests.pipeline.delivery.conftest import (
    ADAM,
    ADAM_MAIL,
    CORPUS_RESULT,
    MAIL_FROM,
    PATIENT,
    Clock,
)
from tests.pipeline.sealing.helpers import attachments, open_envelope
from tests.smtp_relay import Relay
from tests.support import CORPUS

CONTROL_ID = "015"  # MSH-10 of the ANS sample


def mdn(original_message_id: str, disposition: str = "displayed") -> bytes:
    """A read receipt as Thunderbird sends it when the reader agrees to."""
    return (
        f"From: {ADAM_MAIL}\r\n"
        f"To: {MAIL_FROM}\r\n"
        "Subject: Return Receipt (displayed) - result\r\n"
        "Message-ID: <mdn-42@hoda.mssante.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=disposition-notification;\r\n"
        ' boundary="mdn-boundary"\r\n'
        "\r\n"
        "--mdn-boundary\r\n"
        "Content-Type: text/plain; charset=UTF-8\r\n"
        "\r\n"
        "This is a Return Receipt for the mail that you sent.\r\n"
        "--mdn-boundary\r\n"
        "Content-Type: message/disposition-notification\r\n"
        "\r\n"
        "Reporting-UA: hoda.mssante.example; Thunderbird 128.0\r\n"
        f"Final-Recipient: rfc822;{ADAM_MAIL}\r\n"
        f"Original-Message-ID: {original_message_id}\r\n"
        f"Disposition: manual-action/MDN-sent-manually; {disposition}\r\n"
        "--mdn-boundary--\r\n"
    ).encode()


def hl7_attachment(message_parts: dict[str, tuple[str, bytes]]) -> bytes:
    (hl7,) = [data for name, (_, data) in message_parts.items() if name.endswith(".hl7")]
    return hl7


def test_corpus_result_is_sealed_delivered_opened_and_traced(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    relay: Relay,
    pki: DemoPki,
    mailboxes: Path,
    clock: Clock,
    tmp_path: Path,
) -> None:
    sent = (CORPUS / CORPUS_RESULT).read_bytes()

    with ledger.begin() as session:
        (accepted,) = accept_bytes(
            session, sent, services, source="file", source_name=CORPUS_RESULT
        )
    assert accepted.recorded is not None and accepted.recorded.control_id == CONTROL_ID
    report = dispatch_due(ledger, services)

    assert dict(report.states) == {"accepted": 1, "delivered": 1}
    # Dr Hoda's copy went through the SMTP relay, addressed to him alone, DSN-free.
    (mail,) = relay.handler.messages
    assert mail.rcpt_tos == [ADAM_MAIL] and mail.mail_from == MAIL_FROM
    adam_cert, adam_key = pki.recipients[ADAM]
    opened = open_envelope(mail.data, adam_cert, adam_key, pki.ca_certificate)
    assert hl7_attachment(attachments(opened)) == sent
    # The patient's copy sits in their Maildir, complete (new/, nothing left in tmp/).
    (dropped,) = (mailboxes / "dominique" / "new").iterdir()
    assert not any((mailboxes / "dominique" / "tmp").iterdir())
    patient_cert, patient_key = pki.recipients[PATIENT]
    opened = open_envelope(dropped.read_bytes(), patient_cert, patient_key, pki.ca_certificate)
    assert hl7_attachment(attachments(opened)) == sent
    # What the outside sees names the lab and the control ID, and no clinical data.
    headers = mail.data.split(b"\r\n\r\n", 1)[0].decode()
    assert CONTROL_ID in headers and "PAT-TROIS" not in headers
    assert f"Disposition-Notification-To: {MAIL_FROM}" in headers

    # Dr Hoda opens it: his client's read receipt comes back to the return Maildir.
    with ledger() as session:
        adam = session.scalars(select(Delivery).where(Delivery.recipient_key == ADAM)).one()
        message_id = adam.envelope_message_id
    assert message_id is not None and f"Message-ID: {message_id}" in headers
    receipts = tmp_path / "receipts"
    for folder in ("tmp", "new", "cur"):
        (receipts / folder).mkdir(parents=True)
    (receipts / "new" / "1.mdn").write_bytes(mdn(message_id))
    with MaildirSource(receipts) as source:
        (recorded,) = collect_receipts(
            ledger, source, now=clock(), notices_dir=services.notices_dir
        )
    assert recorded.matched and recorded.disposition == "displayed"

    with ledger() as session:
        (trace,) = trace_result(session, CONTROL_ID)
    states = {d.recipient: d.state for d in trace.deliveries}
    assert states == {ADAM: "read", PATIENT: "delivered", None: "unroutable"}
    steps = {
        d.recipient: [e.kind for e in trace.events if e.delivery == d.id] for d in trace.deliveries
    }
    assert steps[ADAM] == ["routed", "sealed", "sent", "accepted", "read"]
    assert steps[PATIENT] == ["routed", "sealed", "sent", "accepted", "delivered"]
    assert steps[None] == ["unroutable"]
    assert [e.kind for e in trace.events if e.delivery is None] == ["received", "parsed"]
    (adam_view,) = [d for d in trace.deliveries if d.recipient == ADAM]
    assert adam_view.attempts[0].evidence.startswith("250 ")
    text = render_trace(trace)
    assert "READ" in text and "BLUE" not in text  # the unroutable doctor shows as an ID only
