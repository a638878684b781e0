"""One pass per batch of results: route, seal, send, record — what the `deliver` task runs.

The normal path of a result after intake's commit (ARCHITECTURE "Flow — where it goes"):

1. route (`route.route_locked`): in one write transaction, the batch's messages
   still `received` are locked (SKIP LOCKED on PostgreSQL; BEGIN IMMEDIATE on SQLite), each
   is read once (`record.load_stored`), its deliveries are created set-based, the new
   pending ones claimed for this worker (`leased_until`) in the same INSERT — then commit;
2. seal (`seal.seal_for`): each result signed once as its laboratory, an envelope per
   recipient, outside any transaction;
3. send (`send.send_prepared`): per transport and destination, pipelined, in groups of
   `COMMIT_EVERY`;
4. record (`outcomes.record_outcomes`): each group's outcomes set-based, one commit.

The envelope is written to the ledger only for a delivery that must be sent again. A
crash between a group's sends and its commit leaves claimed deliveries with no envelope:
their lease runs out, reconcile queues them for sealing, and they go out again under the
same Message-ID (at most `COMMIT_EVERY` per crash). A task redelivered by the broker finds
its messages no longer `received`, and does nothing.

Two other passes run the same steps: `send_stage`, the retry path (reconcile hands it the
sealed deliveries that came due: their stored envelopes are sent, outcomes recorded), and
`dispatch_due`, one delivery at a time, each committed on its own (the `deliver` command,
for a laboratory without workers; `send_delivery` records its own outcome). Outcomes are
committed every `COMMIT_EVERY` sends: a crash can lose the record of at most that many
sends, which are then sent again under the same Message-ID (the far side can
de-duplicate; Maildir and HTTPS do so by themselves).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from pipeline.db import begin_write
from pipeline.delivery.circuits import save_circuits
from pipeline.delivery.claims import StageReport, claim, load_claimed, log_step_error
from pipeline.delivery.notices import give_up, scrub_address
from pipeline.delivery.outcomes import record_outcomes, wait_for_circuit
from pipeline.delivery.route import route_locked
from pipeline.delivery.seal import SignedResults, seal_delivery, seal_for
from pipeline.delivery.send import Prepared, open_address, send_prepared
from pipeline.delivery.services import DeliveryServices
from pipeline.errors import LabdispatchError
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Attempt, Delivery
from pipeline.ledger.states import ACCEPTED, DELIVERED, FAILED, OPEN_STATES, PENDING, RETRYING
from pipeline.ledger.storage import StoredMessageUnreadable
from pipeline.logsafe import log_failure
from pipeline.recipients.models import Recipient
from pipeline.transports.base import Envelope, Outcome, SendResult, TransportConfigurationError

logger = logging.getLogger(__name__)

#: Sends whose outcomes are committed together (bounds what a crash can make us resend):
#: each group goes out pipelined, then its outcomes are written in one transaction.
COMMIT_EVERY = 50


def deliver_stage(
    sessions: sessionmaker[Session], message_ids: Sequence[int], services: DeliveryServices
) -> StageReport:
    """Take received messages all the way: route, seal, send, record. `states` counts the
    messages' new states and the deliveries' outcomes; nothing is handed on."""
    report = StageReport()
    if not message_ids:
        return report
    now = services.clock()
    deadline = time.monotonic() + services.lease.total_seconds() / 2
    with sessions() as session:
        begin_write(session)
        messages, loaded = route_locked(
            session, message_ids, services, now, report, claim_until=now + services.lease
        )
        routed = [message.id for message in messages]
        deliveries: list[Delivery] = []
        recipients: dict[int, Recipient] = {}
        if routed:
            # The pending rows routing just made, claimed as they were written (their
            # messages come from the identity map).
            deliveries = list(
                session.scalars(
                    select(Delivery)
                    .where(Delivery.message_id.in_(routed), Delivery.state == PENDING)
                    .order_by(Delivery.id)
                )
            )
            wanted = {d.recipient_id for d in deliveries if d.recipient_id is not None}
            recipients = {
                r.id: r
                for r in session.scalars(
                    select(Recipient)
                    .where(Recipient.id.in_(wanted))
                    .options(selectinload(Recipient.certificates))
                )
            }
        session.commit()

        signed = SignedResults(services, loaded)
        prepared: list[Prepared] = []
        unsealed: list[tuple[Delivery, str]] = []
        for delivery in deliveries:
            sealed_at = services.clock()
            try:
                recipient = recipients.get(delivery.recipient_id or 0)
                envelope, detail = seal_for(delivery, recipient, services, signed, sealed_at)
            except LabdispatchError as error:
                unsealed.append((delivery, f"not sealed: {error}"))
                continue
            except Exception as error:
                log_step_error("sealing delivery", delivery.id, error)
                unsealed.append(
                    (
                        delivery,
                        f"not sealed: internal error ({type(error).__name__}); see the logs, "
                        "then replay",
                    )
                )
                continue
            prepared.append(Prepared(delivery, envelope, sealed_at, detail))
        del messages  # sealed: the deliveries hold what is left to write
        if unsealed:
            session.commit()  # end any read transaction: the write begins IMMEDIATE
            begin_write(session)
            for delivery, reason in unsealed:
                delivery.leased_until = None
                give_up(session, delivery, reason, services.clock(), services.notices_dir)
                report.states[FAILED] += 1
            session.commit()
        send_in_groups(session, prepared, services, report, deadline=deadline)
    return report


def send_stage(
    sessions: sessionmaker[Session], delivery_ids: Sequence[int], services: DeliveryServices
) -> StageReport:
    """Send claimed, sealed, due deliveries (their stored envelopes) and record each
    outcome (nothing follows): the retry path, and what reconcile hands on."""
    report = StageReport()
    now = services.clock()
    claimed = claim(sessions, delivery_ids, now, services.lease, sealed=True)
    if not claimed:
        return report
    deadline = time.monotonic() + services.lease.total_seconds() / 2
    with sessions() as session:
        deliveries = load_claimed(session, claimed)
        session.commit()  # end the read transaction: the network part holds none
        prepared = [Prepared(d, d.envelope) for d in deliveries if d.envelope is not None]
        send_in_groups(session, prepared, services, report, deadline=deadline)
    return report


def send_in_groups(
    session: Session,
    prepared: Sequence[Prepared],
    services: DeliveryServices,
    report: StageReport,
    *,
    deadline: float,
) -> None:
    """Send `prepared` in groups of `COMMIT_EVERY`, committing each group's outcomes
    (`outcomes.record_outcomes`) before the next group goes: a crash resends at most one
    group, under the same Message-IDs."""
    for start in range(0, len(prepared), COMMIT_EVERY):
        sent = send_prepared(services, prepared[start : start + COMMIT_EVERY], deadline=deadline)
        # End any read transaction (a lazy load) first: on SQLite the write must BEGIN
        # IMMEDIATE, or it is refused at once when another process wrote meanwhile.
        session.commit()
        report.states.update(record_outcomes(session, sent, services))
        session.commit()


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
            give_up(
                session, delivery, f"not sealed: {error}", services.clock(), services.notices_dir
            )
            return delivery.state
        except Exception as error:
            # A bug of ours must not stop the other deliveries (ARCHITECTURE rule 3). The
            # type and the delivery only: an exception's text may quote the message.
            log_failure(logger, f"sealing delivery {delivery.id}", error)
            give_up(
                session,
                delivery,
                f"not sealed: internal error ({type(error).__name__}); see the logs, then replay",
                services.clock(),
                services.notices_dir,
            )
            return delivery.state
        session.commit()
    return send_delivery(session, delivery, services)


def send_delivery(session: Session, delivery: Delivery, services: DeliveryServices) -> str:
    assert delivery.envelope is not None and delivery.channel_kind is not None
    message = delivery.message
    kind = delivery.channel_kind
    try:
        address, sealed = open_address(delivery, services)
    except StoredMessageUnreadable:
        give_up(
            session,
            delivery,
            "not sent: the patient's sealed address does not open with the storage key "
            "file (a previous key left out of it, or the row altered); import the "
            "directory again, then replay",
            services.clock(),
            services.notices_dir,
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
            return wait_for_circuit(session, delivery, destination, services)
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
        delivery.state = ACCEPTED
        record_event(session, message, "accepted", result.evidence, finished, delivery)
        if result.delivered:
            delivery.delivered_at = finished
            delivery.state = DELIVERED
            record_event(session, message, "delivered", f"into {destination}", finished, delivery)
        return delivery.state

    delivery.last_error = result.evidence
    policy = services.policy(kind)
    assert delivery.first_attempt_at is not None
    if policy.should_retry(result.outcome, delivery.attempts, delivery.first_attempt_at, finished):
        delivery.state = RETRYING
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
    give_up(session, delivery, reason, finished, services.notices_dir)
    return delivery.state
