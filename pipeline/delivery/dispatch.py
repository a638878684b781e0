"""Seal and send what is due, and record every attempt.

A delivery is sealed once (signed as the laboratory, enveloped for the recipient) and the
envelope kept in the ledger, so every retry sends the very same bytes under the same
Message-ID. The sealed state is committed before the first send: a crash after it re-sends
the stored envelope, never a differently sealed copy.

Outcomes come from the transport as values (`pipeline.transports.base`): accepted moves the
delivery on, transient schedules the next try by the channel's `RetryPolicy` (or fails it
when the policy gives up), permanent fails it with the far side's reply kept. A delivery
that cannot be sealed (no valid recipient certificate, no signing key) is failed with the
reason and never sent in clear.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.circuits import save_circuits
from pipeline.delivery.notices import give_up, scrub_address
from pipeline.delivery.record import StoredResult, load_stored
from pipeline.delivery.services import DeliveryServices
from pipeline.errors import LabdispatchError
from pipeline.hl7.documents import extract_documents, message_charset, mime_charset
from pipeline.hprim.intake import HprimResult
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Attempt, Delivery, Message
from pipeline.ledger.states import OPEN_STATES
from pipeline.ledger.storage import StoredMessageUnreadable, is_sealed
from pipeline.logsafe import log_failure
from pipeline.recipients.identifiers import address_context
from pipeline.recipients.models import Recipient
from pipeline.sealing.content import HPRIM_EXTENSION, HPRIM_TYPE, ResultSummary, build_content
from pipeline.sealing.keys import Signer, check_signer, recipient_certificate
from pipeline.sealing.smime import EnvelopeHeaders, envelope, sign, subject_for
from pipeline.transports.base import Envelope, Outcome, SendResult, TransportConfigurationError

logger = logging.getLogger(__name__)


@dataclass
class DispatchReport:
    """What one pass did, by resulting delivery state."""

    states: Counter[str] = field(default_factory=Counter)

    @property
    def handled(self) -> int:
        return sum(self.states.values())


def due_deliveries(session: Session, now: datetime, limit: int) -> list[Delivery]:
    return list(
        session.scalars(
            select(Delivery)
            .where(
                Delivery.state.in_(OPEN_STATES),
                or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            )
            .order_by(Delivery.id)
            .limit(limit)
        )
    )


def dispatch_due(
    sessions: sessionmaker[Session], services: DeliveryServices, *, limit: int = 500
) -> DispatchReport:
    """One pass over the deliveries due now; each is committed on its own."""
    report = DispatchReport()
    with sessions() as session:
        for delivery in due_deliveries(session, services.clock(), limit):
            report.states[dispatch_delivery(session, delivery, services)] += 1
            save_circuits(session, services.breaker)
            session.commit()
    return report


def dispatch_delivery(session: Session, delivery: Delivery, services: DeliveryServices) -> str:
    """Seal (if not yet) and send one delivery; returns its new state. The caller commits."""
    if delivery.state not in OPEN_STATES:
        return delivery.state
    if delivery.envelope is None:
        try:
            seal_delivery(session, delivery, services)
        except LabdispatchError as error:
            fail_delivery(session, delivery, f"not sealed: {error}", services.clock(), services)
            return delivery.state
        except Exception as error:
            # A bug of ours must not stop the other deliveries (ARCHITECTURE rule 3). The
            # type and the delivery only: an exception's text may quote the message.
            log_failure(logger, f"sealing delivery {delivery.id}", error)
            fail_delivery(
                session,
                delivery,
                f"not sealed: internal error ({type(error).__name__}); see the logs, then replay",
                services.clock(),
                services,
            )
            return delivery.state
        session.commit()
    return send_delivery(session, delivery, services)


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


def send_delivery(session: Session, delivery: Delivery, services: DeliveryServices) -> str:
    assert delivery.envelope is not None and delivery.channel_kind is not None
    message = delivery.message
    kind = delivery.channel_kind
    address = delivery.channel_address or ""
    sealed = is_sealed(address)
    if sealed:
        # A patient's address is kept sealed (it may carry the INS): opened for the send
        # only, and kept out of what is recorded of it.
        try:
            address = services.cipher.open_text(
                address, address_context(delivery.recipient_key or "", kind)
            )
        except StoredMessageUnreadable:
            fail_delivery(
                session,
                delivery,
                "not sent: the patient's sealed address does not open with the storage key "
                "file (a previous key left out of it, or the row altered); import the "
                "directory again, then replay",
                services.clock(),
                services,
            )
            return delivery.state
    started = services.clock()
    # The kind stands in until the transport names the far side; once named, a failure is
    # recorded against it even when the transport raised (a half-open trial must end).
    destination = kind
    try:
        transport = services.transport(kind)
        destination = transport.destination(address)
        if not services.breaker.allows(destination, started):
            return _wait_for_circuit(session, delivery, destination, services)
        result = transport.send(
            Envelope(
                message_id=delivery.envelope_message_id or "",
                envelope_id=delivery.envelope_id or "",
                sender=services.mail_from,
                recipient=address,
                data=delivery.envelope,
            )
        )
    except TransportConfigurationError as error:
        result = SendResult(Outcome.TRANSIENT, f"not sent: {error}")
    except Exception as error:
        # Transports answer with outcomes; an exception is a bug, and must not stop the
        # other deliveries. Whether the far side got it is unknown: retrying resends the
        # same envelope under the same Message-ID, which the far side can de-duplicate.
        log_failure(logger, f"sending delivery {delivery.id}", error)
        services.discard(kind)  # its connection may be in any state: start afresh
        result = SendResult(
            Outcome.TRANSIENT,
            f"not sent: internal error in the {kind} transport ({type(error).__name__})",
        )
    finished = services.clock()
    services.breaker.record(destination, result.outcome, finished)
    if sealed:
        result = replace(result, evidence=scrub_address(result.evidence, address))

    delivery.attempts += 1
    delivery.first_attempt_at = delivery.first_attempt_at or started
    delivery.updated_at = finished
    session.add(
        Attempt(
            delivery_id=delivery.id,
            number=delivery.attempts,
            started_at=started,
            finished_at=finished,
            transport=kind,
            destination=destination[:500],
            outcome=result.outcome.value,
            evidence=result.evidence,
        )
    )
    record_event(
        session,
        message,
        "sent",
        f"attempt {delivery.attempts} via {kind} to {destination}",
        started,
        delivery,
    )
    if result.outcome is Outcome.ACCEPTED:
        delivery.last_error = ""
        delivery.next_attempt_at = None
        delivery.accepted_at = finished
        delivery.state = "accepted"
        record_event(session, message, "accepted", result.evidence, finished, delivery)
        if result.delivered:
            delivery.delivered_at = finished
            delivery.state = "delivered"
            record_event(session, message, "delivered", f"into {destination}", finished, delivery)
        return delivery.state

    delivery.last_error = result.evidence
    policy = services.policy(kind)
    assert delivery.first_attempt_at is not None
    if policy.should_retry(result.outcome, delivery.attempts, delivery.first_attempt_at, finished):
        delivery.state = "retrying"
        delivery.next_attempt_at = finished + policy.delay(delivery.attempts, services.rng)
        record_event(
            session,
            message,
            "retried",
            f"attempt {delivery.attempts} {result.outcome.value}: {result.evidence}; "
            f"next try after {delivery.next_attempt_at.isoformat(timespec='seconds')}",
            finished,
            delivery,
        )
        return delivery.state
    reason = (
        f"refused: {result.evidence}"
        if result.outcome is Outcome.PERMANENT
        else f"gave up after {delivery.attempts} attempts: {result.evidence}"
    )
    fail_delivery(session, delivery, reason, finished, services)
    return delivery.state


def _wait_for_circuit(
    session: Session, delivery: Delivery, destination: str, services: DeliveryServices
) -> str:
    """Reschedule a delivery whose destination's circuit is open, without trying it and
    without spending an attempt; past the channel's maximum age it is given up."""
    now = services.clock()
    policy = services.policy(delivery.channel_kind or "")
    if now - (delivery.first_attempt_at or delivery.created_at) >= policy.max_age:
        fail_delivery(
            session,
            delivery,
            f"gave up: {destination} kept failing for {policy.max_age} "
            f"(last error: {delivery.last_error.removesuffix(_CIRCUIT_OPEN) or 'none recorded'})",
            now,
            services,
        )
        return delivery.state
    reopen = services.breaker.open_until(destination) or now
    jitter = timedelta(seconds=services.rng.uniform(0, 5))
    delivery.next_attempt_at = max(reopen, now) + jitter
    delivery.updated_at = now
    if delivery.state == "pending" and delivery.attempts:
        delivery.state = "retrying"
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


def _to_header(delivery: Delivery) -> str:
    """The envelope's To: the mail address, but never a patient's sealed one (the envelope
    is stored in the ledger as it is sent): an empty group instead, as RFC 5322 allows."""
    if delivery.channel_kind != "mail":
        return ""
    if is_sealed(delivery.channel_address):
        return "undisclosed-recipients:;"
    return delivery.channel_address or ""


#: Appended to the last real error while a delivery waits for its destination's circuit.
_CIRCUIT_OPEN = " [destination unavailable: circuit open, waiting for it to come back]"


def fail_delivery(
    session: Session,
    delivery: Delivery,
    reason: str,
    now: datetime,
    services: DeliveryServices,
) -> None:
    """Give a delivery up, with the reason, and tell its laboratory (`notices.give_up`)."""
    give_up(session, delivery, reason, now, services.notices_dir)
