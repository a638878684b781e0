"""The seal step: each result signed once as its laboratory, an envelope per recipient.

A delivery is enveloped for its recipient's current certificate, signed by the
laboratory's key (`pipeline.sealing`): any recipient with stock `openssl cms` can decrypt
and verify. `SignedResults` signs each result once however many recipients it has (the
signature covers the content, not the per-recipient headers), reading the stored result
once (`record.load_stored`) unless routing already read it in this pass.

`seal_for` writes nothing: the one pass (`deliver`) writes the envelope only when it must
be sent again. `seal_delivery` and `seal_stage` keep the envelope in the ledger before the
first send (the seal task, replay, the one-at-a-time pass), so a retry sends the very same
bytes under the same Message-ID. A delivery that cannot be sealed (no valid recipient
certificate, no signing key) is given up with the reason (`notices.give_up`), never sent
in clear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from pipeline.db import begin_write
from pipeline.delivery.claims import StageReport, claim, load_claimed, log_step_error, mark_queued
from pipeline.delivery.notices import give_up
from pipeline.delivery.record import StoredResult, load_stored
from pipeline.delivery.services import DeliveryServices
from pipeline.errors import LabdispatchError
from pipeline.hl7.documents import extract_documents, message_charset, mime_charset
from pipeline.hprim.intake import HprimResult
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Delivery, Message
from pipeline.ledger.states import OPEN_STATES
from pipeline.ledger.storage import is_sealed
from pipeline.recipients.models import Recipient
from pipeline.sealing.content import HPRIM_EXTENSION, HPRIM_TYPE, ResultSummary, build_content
from pipeline.sealing.keys import Signer, check_signer, recipient_certificate
from pipeline.sealing.smime import EnvelopeHeaders, envelope, sign, subject_for


class SignedResults:
    """Each result signed once as its laboratory, however many recipients it has: the
    signature covers the content, not the per-recipient headers (`smime.envelope`)."""

    def __init__(
        self, services: DeliveryServices, loaded: Mapping[int, StoredResult] | None = None
    ) -> None:
        self.services = services
        self._signed: dict[int, tuple[bytes, str, Signer]] = {}
        #: Results already read in this pass (by message ID): not read again.
        self._loaded = dict(loaded or {})

    def signed(self, message: Message, now: datetime) -> tuple[bytes, str, Signer]:
        """The signed entity, the result status (for the subject) and the signer."""
        known = self._signed.get(message.id)
        if known is not None:
            return known
        signer = self.services.signers.for_laboratory(message.laboratory)
        check_signer(signer, now)
        stored = self._loaded.pop(message.id, None) or load_stored(message, self.services.cipher)
        data, result = stored.data, stored.result
        if result.facts is None:  # it was accepted once: a bug
            raise LabdispatchError(f"stored message no longer reads: {result.error}")
        facts = result.facts
        if isinstance(result, HprimResult):  # the HPRIM file as sent, for practice software
            content = build_content(
                data,
                mime_charset(result.codec),
                facts.control_id,
                ResultSummary.from_facts(facts),
                [],
                media_type=HPRIM_TYPE,
                extension=HPRIM_EXTENSION,
            )
        else:
            if result.message is None:  # pragma: no cover - facts come with the message
                raise LabdispatchError(f"stored message no longer reads: {result.error}")
            content = build_content(
                data,
                message_charset(result.message),
                facts.control_id,
                ResultSummary.from_facts(facts),
                extract_documents(result.message),
            )
        known = (sign(content, signer), facts.result_status, signer)
        self._signed[message.id] = known
        return known


def seal_delivery(
    session: Session,
    delivery: Delivery,
    services: DeliveryServices,
    signed_results: SignedResults | None = None,
) -> None:
    """Sign the message as its laboratory and envelope it for the recipient."""
    now = services.clock()
    recipient = session.get(Recipient, delivery.recipient_id) if delivery.recipient_id else None
    sealed, detail = seal_for(
        delivery, recipient, services, signed_results or SignedResults(services), now
    )
    delivery.envelope = sealed
    delivery.sealed_at = now
    delivery.updated_at = now
    record_event(session, delivery.message, "sealed", detail, now, delivery)


def seal_for(
    delivery: Delivery,
    recipient: Recipient | None,
    services: DeliveryServices,
    signed_results: SignedResults,
    now: datetime,
) -> tuple[bytes, str]:
    """The envelope of one delivery (signed once per result by `signed_results`, encrypted
    for the recipient's certificate) and the words of its `sealed` event. Writes nothing.
    Raises LabdispatchError when it cannot be sealed (no usable certificate, no signer)."""
    message = delivery.message
    if recipient is None:
        raise LabdispatchError(f"recipient {delivery.recipient_key} left the directory")
    certificate = recipient_certificate(recipient.key, [c.pem for c in recipient.certificates], now)
    signed, result_status, signer = signed_results.signed(message, now)
    assert delivery.envelope_message_id is not None and delivery.channel_address is not None
    headers = EnvelopeHeaders(
        message_id=delivery.envelope_message_id,
        from_address=services.mail_from,
        to_address=_to_header(delivery),
        subject=subject_for(message.laboratory, message.control_id, result_status),
        disposition_notification_to=services.mail_from,
        date=now,
    )
    detail = (
        f"for {recipient.key}: signed by {signer.certificate.subject.rfc4514_string()}, "
        f"encrypted for certificate serial {certificate.serial_number:x}"
    )
    return envelope(signed, certificate, headers), detail


def _to_header(delivery: Delivery) -> str:
    """The envelope's To: the mail address, but never a patient's sealed one (the envelope
    is stored in the ledger as it is sent): an empty group instead, as RFC 5322 allows."""
    if delivery.channel_kind != "mail":
        return ""
    if is_sealed(delivery.channel_address):
        return "undisclosed-recipients:;"
    return delivery.channel_address or ""


def seal_stage(
    sessions: sessionmaker[Session], delivery_ids: Sequence[int], services: DeliveryServices
) -> StageReport:
    """Sign and envelope claimed deliveries; returns the sealed ones (to send)."""
    report = StageReport()
    now = services.clock()
    claimed = claim(sessions, delivery_ids, now, services.lease, sealed=False)
    if not claimed:
        return report
    with sessions() as session:
        deliveries = load_claimed(session, claimed)
        recipient_ids = {d.recipient_id for d in deliveries if d.recipient_id is not None}
        # Into the identity map in one query (and held here: the map keeps only objects
        # referenced elsewhere), so `seal_delivery` finds them there.
        recipients = session.scalars(
            select(Recipient)
            .where(Recipient.id.in_(recipient_ids))
            .options(selectinload(Recipient.certificates))
        ).all()
        session.commit()  # nothing written yet: end the read transaction before the crypto

        signed = SignedResults(services)
        for delivery in deliveries:
            try:
                seal_delivery(session, delivery, services, signed)
            except LabdispatchError as error:
                give_up(
                    session,
                    delivery,
                    f"not sealed: {error}",
                    services.clock(),
                    services.notices_dir,
                )
            except Exception as error:
                log_step_error("sealing delivery", delivery.id, error)
                give_up(
                    session,
                    delivery,
                    f"not sealed: internal error ({type(error).__name__}); see the logs, "
                    "then replay",
                    services.clock(),
                    services.notices_dir,
                )
            delivery.leased_until = None
            report.states["sealed" if delivery.state in OPEN_STATES else delivery.state] += 1
            if delivery.state in OPEN_STATES:
                report.next_ids.append(delivery.id)
        begin_write(session)
        mark_queued(session, report.next_ids, services.clock())
        session.commit()
        del recipients
    return report
