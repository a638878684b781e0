"""`POST /v1/results`: a laboratory hands over HL7 over HTTP, on the same terms as MLLP.

The body (one message or a batch) goes through the same intake as an MLLP frame, through
the same `GroupCommitter`: recorded or quarantined in a transaction shared with whatever
else arrived meanwhile, committed, and only then answered, with the ACK MLLP would have
sent for each message (ARCHITECTURE rule 1). When the ledger cannot be written, nothing is
recorded and each message gets AE "send it again" and the request 503. A `lab` token may
submit its own laboratory's results only (`pipeline.access.submissions`).

The answer is JSON (one entry per message, in order) or, with `Accept: application/hl7-v2`,
the ACKs themselves as ER7. 200: every message was recorded (accepted, duplicate, conflict
or held); 422: some were refused (the body lists every message); 503: some were not stored.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from pipeline.access.submissions import NotThisLaboratory, split_for
from pipeline.access.tokens import Caller
from pipeline.delivery.intake import Answer, Inbound
from pipeline.hl7.ack import ACCEPT, ERROR, AckContext, accept_ack_code
from workers.api.auth import require
from workers.intake_commit import GroupCommitter
from workers.mllp.framing import DEFAULT_MAX_BYTES

router = APIRouter(tags=["results"])
log = logging.getLogger("labdispatch.api")

#: Content types a body of HL7 v2 may come as (RFC 6922's, its ER7 alias, and the generic).
CONTENT_TYPES = (
    "application/hl7-v2",
    "x-application/hl7-v2+er7",
    "text/plain",
    "application/octet-stream",
)
ER7_TYPES = ("application/hl7-v2", "x-application/hl7-v2+er7")
#: The largest body taken: the MLLP listener's frame limit.
MAX_BODY_BYTES = DEFAULT_MAX_BYTES
NOT_STORED_REASON = (
    "not stored: the result ledger could not record it; keep the message and send it again"
)
#: Seconds a client told to come back (503) should wait first.
RETRY_AFTER = "30"


class MessageAnswer(BaseModel):
    """What became of one message of the body."""

    #: The ledger's ID (for `GET /v1/messages/{id}`); null when nothing was recorded.
    message_id: int | None
    control_id: str
    #: accepted, duplicate, conflict, held, rejected or not_stored.
    status: str
    #: MSA-1 of the ACK: AA / AE / AR, or CA / CE / CR in enhanced mode.
    ack_code: str
    reason: str
    #: The ACK, ER7 text; null when MSH-15 asked for none in this case.
    ack: str | None


class ResultsAnswer(BaseModel):
    messages: list[MessageAnswer]


_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "HL7 v2 (ER7): one message, or a batch (FHS/BHS)",
        "content": {
            kind: {"schema": {"type": "string", "format": "binary"}} for kind in CONTENT_TYPES
        },
    }
}


@router.post(
    "/v1/results",
    summary="submit results (HL7 v2): recorded before the answer, with each message's ACK",
    response_model=ResultsAnswer,
    responses={
        200: {"content": {"application/hl7-v2": {}}},
        413: {"description": f"body over {MAX_BODY_BYTES} bytes"},
        415: {"description": "not an HL7 content type"},
        422: {"model": ResultsAnswer, "description": "some messages were refused"},
        503: {"model": ResultsAnswer, "description": "not stored: send again later"},
    },
    openapi_extra=_BODY_SCHEMA,
)
async def post_results(
    request: Request,
    caller: Caller = Depends(require("lab")),  # noqa: B008
) -> Response:
    _check_content_type(request)
    body = await _read_body(request)
    submission = await run_in_threadpool(split_for, body, caller.laboratory)
    committer: GroupCommitter = request.app.state.committer
    peer = f"{request.client.host}:{request.client.port}" if request.client else "?"
    source_name = f"{caller.describe()} from {peer}"
    pending = [committer.submit(Inbound(item, "api", source_name)) for item in submission.items]
    groups = [await future for future in pending]
    answers: list[Answer] = []
    for kind, index in submission.order:
        if kind == "item":
            answers.extend(groups[index])
        else:
            refused = submission.refused[index]
            answers.append(Answer(refused, ack=refused.accept_ack()))
    entries = [_entry(answer) for answer in answers]
    _log(caller, answers, entries)
    statuses = {entry.status for entry in entries}
    status = 503 if "not_stored" in statuses else 422 if "rejected" in statuses else 200
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    if _wants_er7(request):
        acks = b"".join(answer.ack for answer in answers if answer.ack is not None)
        return Response(acks, status_code=status, media_type=ER7_TYPES[0], headers=headers)
    return JSONResponse(
        ResultsAnswer(messages=entries).model_dump(), status_code=status, headers=headers
    )


def _check_content_type(request: Request) -> None:
    given = request.headers.get("content-type", "application/octet-stream")
    media_type = given.split(";", 1)[0].strip().lower()
    if media_type not in CONTENT_TYPES:
        raise HTTPException(
            415,
            f"send HL7 v2 as one of {', '.join(CONTENT_TYPES)}; "
            f"{media_type or 'an empty content type'} is not taken",
        )


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it is known to be over the limit."""
    too_large = HTTPException(
        413,
        f"body over {MAX_BODY_BYTES} bytes, the largest taken: send the messages in "
        "several requests",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _wants_er7(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    wanted = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return bool(wanted & set(ER7_TYPES))


def _entry(answer: Answer) -> MessageAnswer:
    result = answer.result
    context = AckContext.from_raw(result.data)
    refused_here = isinstance(result.error, NotThisLaboratory)
    stored = answer.recorded is not None or answer.rejection_id is not None or refused_here
    if not stored:
        status, code, reason = "not_stored", ERROR, NOT_STORED_REASON
    elif result.error is not None:
        status, code, reason = "rejected", result.error.ack_code, str(result.error)
    else:
        status, code, reason = answer.status, ACCEPT, _reason(answer)
    return MessageAnswer(
        message_id=answer.message_id,
        control_id=result.facts.control_id if result.facts else context.control_id,
        status=status,
        ack_code=accept_ack_code(context, code) or code,
        reason=reason,
        ack=answer.ack.decode(context.codec, "replace") if answer.ack is not None else None,
    )


def _reason(answer: Answer) -> str:
    """Words for a message that was recorded."""
    facts = answer.result.facts
    recorded = answer.recorded
    assert facts is not None and recorded is not None
    if answer.status == "duplicate":
        return "received before with the same content: recorded once, not delivered again"
    if answer.status == "conflict":
        return (
            f"control ID {facts.control_id} was received before with other content: kept as "
            f"revision {recorded.revision}, held for review, not delivered"
        )
    if answer.status == "held":
        return (
            f"processing ID {facts.processing_id}: recorded, not delivered on this platform "
            "(LABDISPATCH_DELIVER_PROCESSING_IDS)"
        )
    return "; ".join(facts.warnings)


def _log(caller: Caller, answers: list[Answer], entries: list[MessageAnswer]) -> None:
    """Control IDs, outcomes and error kinds only: a refusal's reason may quote a field."""
    for answer, entry in zip(answers, entries, strict=True):
        error = answer.result.error
        if entry.status == "rejected" and error is not None:
            log.warning(
                "result %s from %s refused: %s (%s)",
                entry.control_id or "(no control ID)",
                caller.describe(),
                entry.ack_code,
                type(error).__name__,
            )
    log.info(
        "results from %s: %s",
        caller.describe(),
        ", ".join(f"{entry.control_id or '?'} {entry.status}" for entry in entries) or "none",
    )
