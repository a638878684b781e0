"""The one cut between the pipeline and the network: send an envelope, get an outcome.

A transport is given opaque bytes and an address and answers, as a value, whether the far
side took them (`ACCEPTED`), refused them for now (`TRANSIENT`: try again later) or for
good (`PERMANENT`: do not retry), with the far side's own words kept as evidence for the
ledger. Network trouble is an outcome, not an exception: the caller (the dispatcher, later a
Celery task) decides what to do from the outcome alone. Only a transport that cannot work at
all (bad configuration) raises, with a `TransportConfigurationError`.

Transports hold their connections open between `send` calls, so a run of envelopes to the
same relay pays the connection set-up once; `close` (or the context manager) releases them.
A batch goes through `send_many(transport, envelopes)`: a transport that can do better than
one `send` after another (SMTP pipelines a batch on one connection) has its own `send_many`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from pipeline.errors import ConfigurationError


class TransportConfigurationError(ConfigurationError):
    """The transport cannot be used as configured (missing relay, unreadable client key…)."""


@dataclass(frozen=True)
class Envelope:
    """A sealed message ready to leave; opaque to transports."""

    #: RFC 5322 Message-ID with its angle brackets; stable per (message, recipient, channel).
    message_id: str
    #: SMTP envelope ID (RFC 3461 ENVID), echoed by DSNs as Original-Envelope-Id.
    envelope_id: str
    #: Return path: where bounces and DSNs go.
    sender: str
    #: The channel address: a mail address, a Maildir path, or an https:// URL.
    recipient: str
    #: The whole RFC 5322 message (headers + S/MIME body), CRLF line ends.
    data: bytes


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    #: The far side's reply as it gave it (SMTP code and text, HTTP status and the start of
    #: the body, the file written); never the envelope itself.
    evidence: str
    #: True when the envelope reached the recipient's own store (a Maildir), not only a relay
    #: that will pass it on.
    delivered: bool = False

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED


class Transport(Protocol):
    #: The channel kind it serves, as in the directory: "mail", "mailbox" or "https".
    kind: str

    def destination(self, address: str) -> str:
        """The far side an address is sent to (relay host, web host, mailbox root): the unit
        a circuit breaker or a rate report groups by."""
        ...

    def send(self, envelope: Envelope) -> SendResult: ...

    def close(self) -> None: ...

    def __enter__(self) -> Transport: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class SendsMany(Protocol):
    """A transport with its own batch send: the results in the envelopes' order, each the
    `SendResult` that `send` would have given for that envelope."""

    def send_many(self, envelopes: Sequence[Envelope]) -> list[SendResult]: ...


def send_many(transport: Transport, envelopes: Sequence[Envelope]) -> list[SendResult]:
    """Sends a batch, one result per envelope in the same order: through the transport's own
    `send_many` when it has one, else one `send` after another (Maildir, HTTPS)."""
    if isinstance(transport, SendsMany):
        return transport.send_many(envelopes)
    return [transport.send(envelope) for envelope in envelopes]
