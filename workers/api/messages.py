"""`/v1/messages`: a result's trace, by ledger ID or control ID, and replaying its failed
deliveries.

A `lab` token sees its own laboratory's messages only. Another laboratory's message
answers 404 with the very words of an ID that does not exist, so walking IDs tells a
laboratory nothing about anyone else's traffic; asking by control ID for another
laboratory (`?lab=`) is refused outright (403), since the caller named it.

Replay (ops, admin) re-opens failed deliveries (`pipeline.delivery.replay`), commits, then
queues them for the seal or the send stage. Queueing needs the broker; when it is away
the deliveries wait, open, in the ledger, and the reconcile job queues them on its next
run: the answer says which happened. Each replay is an event on the message's timeline
and a log line, both naming the token by number, never by its secret.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from pydantic import BaseModel
from sqlalchemy import update

from pipeline.access.tokens import Caller
from pipeline.db import begin_write, utcnow
from pipeline.delivery.replay import SEAL, SEND, UnknownDelivery, replay, stage_of
from pipeline.delivery.trace import UnknownResult, trace_message, trace_result, unknown_message
from pipeline.ledger.models import Delivery
from workers.api.auth import require, sessions_of

router = APIRouter(tags=["messages"])
log = logging.getLogger("labdispatch.api")

#: Queues replayed deliveries: (to seal, to send). Raises when the broker is away.
Requeue = Callable[[Sequence[int], Sequence[int]], None]

TRACE_ROLES = ("lab", "ops")

#: The largest ID the ledger can hold (PostgreSQL's INTEGER). A larger one, or one below 1,
#: names nothing: it is answered as an ID that does not exist, never passed to the database
#: (whose driver would fail on it, a 500).
MAX_LEDGER_ID = 2**31 - 1


def _existing(identifier: int) -> bool:
    return 1 <= identifier <= MAX_LEDGER_ID


def queue_replayed(seal: Sequence[int], send: Sequence[int]) -> None:
    """The default `Requeue`: hand the deliveries to the seal and send stages' queues."""
    from workers import tasks  # loads Celery (and connects to the broker): only when used

    tasks.enqueue(tasks.seal, seal)
    tasks.enqueue(tasks.send, send)


class ReplayRequest(BaseModel):
    #: Replay this delivery only; by default every failed delivery of the message.
    delivery_id: int | None = None


class ReplayedDelivery(BaseModel):
    delivery_id: int
    recipient: str | None
    #: The stage it is queued for: seal (sealed again) or send (its envelope sent again).
    stage: str


class ReplayAnswer(BaseModel):
    message_id: int
    deliveries: list[ReplayedDelivery]
    #: True when queued for the workers now; False when the reconcile job will queue them.
    queued: bool
    note: str


@router.get(
    "/v1/messages/{message_id}",
    summary="a result's trace: its deliveries, their attempts and every event",
    responses={404: {"description": "no such message (or not the caller's laboratory's)"}},
)
def get_message(
    message_id: int,
    request: Request,
    caller: Caller = Depends(require(*TRACE_ROLES)),  # noqa: B008
) -> dict[str, Any]:
    if not _existing(message_id):
        raise unknown_message(message_id)
    with sessions_of(request)() as session:
        trace = trace_message(session, message_id)
    if not caller.sees(trace.laboratory):
        raise unknown_message(message_id)
    return trace.as_json()


@router.get(
    "/v1/messages",
    summary="the traces of every result with a control ID (MSH-10), per laboratory",
    responses={404: {"description": "no result with that control ID the caller may see"}},
)
def find_messages(
    request: Request,
    control_id: str = Query(min_length=1, max_length=199, description="MSH-10"),
    lab: str | None = Query(None, max_length=64, description="MSH-4: one laboratory only"),
    caller: Caller = Depends(require(*TRACE_ROLES)),  # noqa: B008
) -> dict[str, Any]:
    if lab and not caller.sees(lab):
        raise HTTPException(403, "a laboratory's token sees its own laboratory only")
    laboratory = lab or caller.laboratory
    if "\x00" in control_id or "\x00" in (laboratory or ""):
        # No ledger field holds a NUL (PostgreSQL's text cannot: it would fail the query,
        # a 500): such a value names nothing, answered as one that is not there.
        where = f" from laboratory {laboratory}" if laboratory else ""
        raise UnknownResult(f"no result with control ID {control_id}{where} in the ledger")
    with sessions_of(request)() as session:
        traces = trace_result(session, control_id, laboratory=laboratory)
    return {"messages": [trace.as_json() for trace in traces]}


@router.post(
    "/v1/messages/{message_id}/replay",
    summary="send failed deliveries again (audited)",
    response_model=ReplayAnswer,
    responses={
        404: {"description": "no such message, or no such delivery of it"},
        409: {"description": "nothing to replay: the delivery is not failed"},
    },
)
def replay_message(
    message_id: int,
    request: Request,
    wanted: ReplayRequest | None = Body(None),  # noqa: B008
    caller: Caller = Depends(require("ops")),  # noqa: B008
) -> ReplayAnswer:
    delivery_id = wanted.delivery_id if wanted is not None else None
    if not _existing(message_id):
        raise unknown_message(message_id)
    if delivery_id is not None and not _existing(delivery_id):
        raise UnknownDelivery(f"message {message_id} has no delivery {delivery_id}")
    sessions = sessions_of(request)
    with sessions() as session:
        begin_write(session)
        now = utcnow()
        reopened = replay(
            session, message_id, delivery_id=delivery_id, caller=caller.describe(), now=now
        )
        replayed = [
            ReplayedDelivery(delivery_id=d.id, recipient=d.recipient_key, stage=stage_of(d))
            for d in reopened
        ]
        session.commit()
    log.info(
        "replay of message %d by %s: delivery(ies) %s",
        message_id,
        caller.describe(),
        ", ".join(f"{d.delivery_id} ({d.stage})" for d in replayed),
    )
    seal = [d.delivery_id for d in replayed if d.stage == SEAL]
    send = [d.delivery_id for d in replayed if d.stage == SEND]
    try:
        request.app.state.requeue(seal, send)
    except Exception as error:
        log.warning(
            "replay of message %d: the broker did not take the work (%s); reconcile will",
            message_id,
            type(error).__name__,
        )
        return ReplayAnswer(
            message_id=message_id,
            deliveries=replayed,
            queued=False,
            note="re-opened in the ledger; the broker could not be reached, so the reconcile "
            "job will queue them on its next run",
        )
    with sessions() as session:
        begin_write(session)
        session.execute(
            # Unless a worker already took them up and marked them itself.
            update(Delivery)
            .where(Delivery.id.in_(seal + send), Delivery.queued_at.is_(None))
            .values(queued_at=now),
            execution_options={"synchronize_session": False},
        )
        session.commit()
    return ReplayAnswer(
        message_id=message_id,
        deliveries=replayed,
        queued=True,
        note="re-opened and queued for the workers",
    )
