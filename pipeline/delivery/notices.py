"""Telling a laboratory that a delivery was given up.

When a delivery fails for good (refused by the far side, retries exhausted, no usable
certificate), the laboratory that sent the result must know, or a clinician waits for a
result that will never come. The notice is a plain-text report dropped in the laboratory's
notices folder (`LABDISPATCH_NOTICES_DIR/<MSH-4>/`, a folder its staff or its LIS can
poll, like a file-interface outbox). It names the result by control ID, the recipient by
directory key and the reason; no patient datum is in it. The file name comes from the
delivery, so writing it again (a retried transaction) leaves one notice.

`give_up` is the one way a delivery becomes `failed`, whoever decides it (the far side at
RCPT, retries exhausted, sealing, a DSN or MDN reporting failure): the failed state, its
event and the notice to the laboratory always go together.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from pipeline.hl7.participants import PATIENT
from pipeline.ledger.events import record_event
from pipeline.ledger.models import Delivery
from pipeline.ledger.states import FAILED

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def give_up(
    session: Session, delivery: Delivery, reason: str, now: datetime, notices_dir: Path | None
) -> None:
    """Fail a delivery with the reason and tell its laboratory (`notices_dir` None: tests
    and tools that keep no notices). The caller commits."""
    delivery.state = FAILED
    delivery.failed_at = now
    delivery.updated_at = now
    delivery.next_attempt_at = None
    delivery.leased_until = None
    delivery.last_error = reason
    record_event(session, delivery.message, "failed", reason, now, delivery)
    tell_laboratory(session, delivery, now, notices_dir)


def tell_laboratory(
    session: Session, delivery: Delivery, now: datetime, notices_dir: Path | None
) -> None:
    """Write the notice of a delivery already failed (and its `notified` event): `give_up`
    does it, and routing for the deliveries it makes failed (a recipient who refuses
    electronic results)."""
    if notices_dir is not None:
        path = write_failure_notice(notices_dir, delivery, now)
        delivery.notified_at = now
        record_event(
            session,
            delivery.message,
            "notified",
            f"laboratory told: {path.parent.name}/{path.name}",
            now,
            delivery,
        )


def write_failure_notice(folder: Path, delivery: Delivery, now: datetime) -> Path:
    """Write (or rewrite) the notice of a failed delivery; returns its path."""
    message = delivery.message
    lab_folder = folder / _safe(message.laboratory)
    lab_folder.mkdir(parents=True, exist_ok=True)
    path = lab_folder / f"failed-{_safe(message.control_id)}-{delivery.id}.txt"
    if delivery.role == PATIENT:
        # The laboratory knows its patient; a notice file may travel further than the ledger.
        who, channel = "the patient", delivery.channel_kind or "-"
    else:
        who = delivery.recipient_key or f"unknown recipient ({delivery.wanted})"
        channel = (
            f"{delivery.channel_kind}:{delivery.channel_address}" if delivery.channel_kind else "-"
        )
    text = "\n".join(
        [
            "labdispatch: a result could not be delivered",
            "",
            f"Laboratory:     {message.laboratory}",
            f"Control ID:     {message.control_id} (revision {message.revision})",
            f"Received:       {message.received_at.isoformat(timespec='seconds')}",
            f"Recipient:      {who} ({delivery.role or 'recipient'})",
            f"Channel:        {channel}",
            f"Attempts:       {delivery.attempts}",
            f"Given up:       {now.isoformat(timespec='seconds')}",
            f"Reason:         {delivery.last_error}",
            "",
            "The other recipients of this result are not affected. Send the result to this",
            "recipient another way, or fix the cause and ask operations to replay it",
            f"(labdispatch trace {message.control_id} shows its whole journey).",
            "",
        ]
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("._") or "_"


#: What stands for a patient's address in evidence, errors and events.
PATIENT_ADDRESS = "<patient address>"


def scrub_address(text: str, address: str) -> str:
    """`text` (a far side's reply) without a patient's address, nor its local part (an
    MSSanté patient address is the INS @ the patient domain)."""
    local = address.partition("@")[0]
    for secret in (address, local if len(local) >= 6 else ""):
        if secret:
            text = re.sub(re.escape(secret), PATIENT_ADDRESS, text, flags=re.IGNORECASE)
    return text


#: An e-mail address, as a relay's reply or a DSN quotes one.
_MAIL_ADDRESS = re.compile(r"[^\s<>\[\]();:,\"']+@[^\s<>\[\]();:,\"']+")


def scrub_mail_addresses(text: str) -> str:
    """`text` (a DSN's diagnostic about a patient's delivery) without any mail address:
    whose address it quotes is known, and it may carry the INS."""
    return _MAIL_ADDRESS.sub(PATIENT_ADDRESS, text)
