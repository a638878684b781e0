"""The words of the ledger: message and delivery states, event kinds.

Delivery states only move forward along `DELIVERY_ORDER`; a late report never takes a
delivery back (a DSN "delivered" arriving after the MDN "displayed" leaves it read).
`failed` is final unless an operator replays it (`pipeline.delivery.replay`), which is
the one move backwards, and is recorded as a `replayed` event naming who asked.
"""

from __future__ import annotations

#: received: recorded, not yet routed; routed: deliveries exist; unroutable: nobody it names
#: is in the directory; held: not to be delivered as it stands (the same control ID came
#: again with different content, or a training / debugging message on a production
#: platform), kept for a person to see.
RECEIVED = "received"
ROUTED = "routed"
UNROUTABLE = "unroutable"
HELD = "held"
MESSAGE_STATES = (RECEIVED, ROUTED, UNROUTABLE, HELD)

#: pending: waiting for its first try; retrying: a transient failure, next try scheduled;
#: accepted: a relay took it; delivered: it reached the recipient's store; read: the
#: recipient's client says it was displayed; failed: given up (permanent refusal, no usable
#: certificate, limit reached); unroutable: the recipient is not in the directory.
PENDING = "pending"
RETRYING = "retrying"
ACCEPTED = "accepted"
DELIVERED = "delivered"
READ = "read"
FAILED = "failed"
DELIVERY_STATES = (PENDING, RETRYING, ACCEPTED, DELIVERED, READ, FAILED, UNROUTABLE)
#: States still waiting for work from us.
OPEN_STATES = (PENDING, RETRYING)
#: How far along a delivery is; reports only ever move it to a later rank.
DELIVERY_RANK = {
    UNROUTABLE: 0,
    PENDING: 1,
    RETRYING: 1,
    ACCEPTED: 2,
    DELIVERED: 3,
    READ: 4,
    FAILED: 5,
}

EVENT_KINDS = (
    "received",
    "parsed",
    "duplicate",
    "conflict",
    "held",
    "routed",
    "unroutable",
    "sealed",
    "sent",
    "accepted",
    "delivered",
    "processed",
    "read",
    "retried",
    "failed",
    "notified",
    "receipt",
    "requeued",
    "resumed",
    #: An operator re-opened a failed delivery (`pipeline.delivery.replay`).
    "replayed",
)
