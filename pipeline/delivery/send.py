"""Sending prepared envelopes: per transport and destination, a batch at a time.

The envelopes of a pass are grouped by channel kind, then by the destination the transport
names (the SMTP relay, the mailbox root, the HTTPS host), and each group goes through
`transports.base.send_many`: over SMTP one connection, pipelined where the relay offers it
(RFC 2920). Nothing here writes to the ledger: the outcomes come back as values, and
`pipeline.delivery.outcomes` records them all in one statement per table.

The circuit breaker is asked per destination: closed, the whole group goes; half-open,
one envelope goes as the trial, and the rest follow only if it closed the circuit; open,
the group waits (`WAITING`), without spending attempts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from pipeline.delivery.breaker import CLOSED, OPEN
from pipeline.delivery.notices import scrub_address
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery
from pipeline.ledger.storage import StoredMessageUnreadable, is_sealed
from pipeline.logsafe import log_failure
from pipeline.recipients.identifiers import address_context
from pipeline.transports.base import (
    Envelope,
    Outcome,
    SendResult,
    TransportConfigurationError,
    send_many,
)

logger = logging.getLogger(__name__)

#: What became of a prepared envelope in this pass.
SENT = "sent"  # the transport answered (`Sent.result`)
WAITING = "waiting"  # its destination's circuit is open: not tried
UNSENT = "unsent"  # the pass ran out of lease before it: left for the next round
UNOPENABLE = "unopenable"  # a patient's sealed address did not open with the storage key


@dataclass
class Prepared:
    """One delivery ready to go: its envelope, and whether it was sealed in this pass
    (then `sealed_at` and the words of its `sealed` event, written with the outcome)."""

    delivery: Delivery
    envelope: bytes
    sealed_at: datetime | None = None
    seal_detail: str = ""


@dataclass
class Sent:
    prepared: Prepared
    fate: str
    destination: str = ""
    result: SendResult | None = None
    started: datetime | None = None
    finished: datetime | None = None


def send_prepared(
    services: DeliveryServices, prepared: Sequence[Prepared], *, deadline: float
) -> list[Sent]:
    """Send each prepared envelope (in groups per transport and destination); one `Sent`
    per envelope. Past `deadline` (monotonic) the rest are left `UNSENT`."""
    done: list[Sent] = []
    by_kind: dict[str, list[tuple[Prepared, str, bool]]] = {}
    for item in prepared:
        delivery = item.delivery
        kind = delivery.channel_kind or ""
        try:
            address, sealed = open_address(delivery, services)
        except StoredMessageUnreadable:
            done.append(Sent(item, UNOPENABLE))
            continue
        by_kind.setdefault(kind, []).append((item, address, sealed))
    for kind, items in by_kind.items():
        done += _send_kind(services, kind, items, deadline)
    return done


def open_address(delivery: Delivery, services: DeliveryServices) -> tuple[str, bool]:
    """The address to send to, and whether it was sealed. A patient's address is kept sealed
    (it may carry the INS): opened for the send only, and kept out of what is recorded of
    it. StoredMessageUnreadable when it does not open with the storage key file."""
    address = delivery.channel_address or ""
    if not is_sealed(address):
        return address, False
    context = address_context(delivery.recipient_key or "", delivery.channel_kind or "")
    return services.cipher.open_text(address, context), True


def _send_kind(
    services: DeliveryServices,
    kind: str,
    items: list[tuple[Prepared, str, bool]],
    deadline: float,
) -> list[Sent]:
    try:
        transport = services.transport(kind)
        groups: dict[str, list[tuple[Prepared, str, bool]]] = {}
        for item in items:
            groups.setdefault(transport.destination(item[1]), []).append(item)
    except Exception as error:
        now = services.clock()
        # The kind stands in for the far side the transport could not name.
        if isinstance(error, TransportConfigurationError):
            result = SendResult(Outcome.TRANSIENT, f"not sent: {error}")
        else:
            log_failure(logger, f"opening the {kind} transport", error)
            services.discard(kind)
            result = SendResult(
                Outcome.TRANSIENT,
                f"not sent: internal error in the {kind} transport ({type(error).__name__})",
            )
        services.breaker.record(kind, result.outcome, now)
        return [Sent(item[0], SENT, kind, result, now, now) for item in items]
    done: list[Sent] = []
    for destination, group in groups.items():
        left = list(group)
        while left:
            if time.monotonic() > deadline:
                done += [Sent(item[0], UNSENT, destination) for item in left]
                break
            started = services.clock()
            if services.breaker.state(destination, started) == CLOSED:
                batch, left = left, []
            elif services.breaker.allows(destination, started):
                batch, left = left[:1], left[1:]  # the half-open trial
            else:
                done += [Sent(item[0], WAITING, destination) for item in left]
                break
            envelopes = [
                Envelope(
                    message_id=item[0].delivery.envelope_message_id or "",
                    envelope_id=item[0].delivery.envelope_id or "",
                    sender=services.mail_from,
                    recipient=item[1],
                    data=item[0].envelope,
                )
                for item in batch
            ]
            try:
                results = send_many(services.transport(kind), envelopes)
            except Exception as error:
                # Transports answer with outcomes; an exception is a bug, and must not stop
                # the other deliveries. Whether the far side got them is unknown: retrying
                # resends the same envelopes under the same Message-IDs.
                ids = ", ".join(str(item[0].delivery.id) for item in batch)
                log_failure(
                    logger, f"sending deliver{'y' if len(batch) == 1 else 'ies'} {ids}", error
                )
                services.discard(kind)  # its connection may be in any state: start afresh
                failed = SendResult(
                    Outcome.TRANSIENT,
                    f"not sent: internal error in the {kind} transport ({type(error).__name__})",
                )
                results = [failed] * len(batch)
            finished = services.clock()
            for (ready, address, sealed), result in zip(batch, results, strict=True):
                if (
                    result.outcome is Outcome.TRANSIENT
                    and services.breaker.state(destination, finished) == OPEN
                ):
                    # The circuit opened on the envelopes before this one: as if it had
                    # not been tried (a dead relay fails them all at once), it waits
                    # without spending an attempt; sent again, it carries the same ID.
                    done.append(Sent(ready, WAITING, destination))
                    continue
                services.breaker.record(destination, result.outcome, finished)
                if sealed:
                    result = replace(result, evidence=scrub_address(result.evidence, address))
                done.append(Sent(ready, SENT, destination, result, started, finished))
    return done
