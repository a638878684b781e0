"""One pass per batch of results: route, seal, send, record — what the `deliver` task runs.

The normal path of a result after intake's commit (ARCHITECTURE "Flow — where it goes"):

1. route (`stages.route_locked`, `routing`): in one write transaction, the batch's messages
   still `received` are locked (SKIP LOCKED on PostgreSQL; BEGIN IMMEDIATE on SQLite), each
   is read once (`record.load_stored`), its deliveries are created, and the new pending
   ones are claimed for this worker (`leased_until`) — then commit;
2. seal (`dispatch.seal_for`): each result signed once as its laboratory, an envelope per
   recipient, outside any transaction;
3. send (`send.send_prepared`): per transport and destination, pipelined, in groups of
   `stages.COMMIT_EVERY`;
4. record (`outcomes.record_outcomes`): each group's outcomes set-based, one commit.

The envelope is written to the ledger only for a delivery that must be sent again. A
crash between a group's sends and its commit leaves claimed deliveries with no envelope:
their lease runs out, reconcile queues them for sealing, and they go out again under the
same Message-ID (at most `COMMIT_EVERY` per crash). A task redelivered by the broker finds
its messages no longer `received`, and does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from pipeline.db import begin_write
from pipeline.delivery.dispatch import SignedResults, seal_for
from pipeline.delivery.notices import give_up
from pipeline.delivery.send import Prepared
from pipeline.delivery.services import DeliveryServices
from pipeline.delivery.stages import StageReport, _log_stage_error, route_locked, send_in_groups
from pipeline.errors import LabdispatchError
from pipeline.ledger.models import Delivery
from pipeline.ledger.states import FAILED, PENDING
from pipeline.recipients.models import Recipient


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
        messages, loaded = route_locked(session, message_ids, services, now, report)
        routed = [message.id for message in messages]
        deliveries: list[Delivery] = []
        recipients: dict[int, Recipient] = {}
        if routed:
            claimed = list(
                session.scalars(
                    update(Delivery)
                    .where(Delivery.message_id.in_(routed), Delivery.state == PENDING)
                    .values(leased_until=now + services.lease, queued_at=now)
                    .returning(Delivery.id),
                    execution_options={"synchronize_session": False},
                )
            )
            # The rows routing just made, from the identity map (their messages too).
            deliveries = list(
                session.scalars(
                    select(Delivery).where(Delivery.id.in_(claimed)).order_by(Delivery.id)
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
                _log_stage_error("sealing delivery", delivery.id, error)
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
