"""A real SMTP relay for tests: aiosmtpd on 127.0.0.1, told by the test how to answer.

It records what reached it (bytes exactly as received, the MAIL/RCPT options, whether TLS
and AUTH were used), counts connections, and can refuse, drop or restart on demand, so
tests of the SMTP transport and of whole deliveries check the far side, not a mock.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


def free_port() -> int:
    """A port nothing listens on (just released by the kernel)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    rcpt_options: list[str]
    dsn: dict[str, str]
    tls: bool
    login: str | None


@dataclass
class RelayHandler:
    """The relay's behaviour, set by the test: replies to give instead of accepting, and
    what it saw."""

    messages: list[ReceivedMail] = field(default_factory=list)
    connections: int = 0
    #: Replies for the next MAIL commands, one per envelope, in order ("421 ..." closes,
    #: "drop" vanishes without a word, None accepts).
    mail_replies: list[str | None] = field(default_factory=list)
    #: Reply to RCPT per recipient address.
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    #: Final replies for the next DATA transactions, in order ("drop" vanishes after
    #: reading the data, None accepts).
    data_replies: list[str | None] = field(default_factory=list)
    #: Drop the connection, answering nothing, at the next N MAIL commands.
    drop_at_mail: int = 0
    #: Advertise DSN (RFC 3461) in EHLO and accept its parameters.
    advertise_dsn: bool = False
    #: Advertise PIPELINING (RFC 2920) in EHLO; aiosmtpd reads commands in order from its
    #: stream either way, so pipelined commands are served whether advertised or not.
    advertise_pipelining: bool = False
    #: Every chunk the relay read from a connection, as it arrived (after TLS): which
    #: commands came in one write of the client, and so how many round trips it took.
    reads: list[bytes] = field(default_factory=list)
    #: (mechanism, login) of every successful AUTH.
    logins: list[tuple[str, str]] = field(default_factory=list)
    password: str = "correct horse battery staple"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.advertise_dsn:
            responses.insert(-1, "250-DSN")
        if self.advertise_pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = None
        if self.drop_at_mail:
            self.drop_at_mail -= 1
            reply = "drop"
        elif self.mail_replies:
            reply = self.mail_replies.pop(0)
        if reply == "drop":
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()  # vanish without a word, as a crashed relay does
            return "250 never sent"
        if reply is not None:
            return self._reply(server, reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self._reply(server, self.rcpt_replies[address])
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.data_replies.pop(0) if self.data_replies else None
        if reply == "drop":
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "250 never sent"
        if reply is not None:
            return self._reply(server, reply)
        assert envelope.mail_from is not None and envelope.original_content is not None
        auth = session.auth_data
        self.messages.append(
            ReceivedMail(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content,
                mail_options=list(envelope.mail_options),
                rcpt_options=list(envelope.rcpt_options),
                dsn=dict(getattr(server, "dsn_parameters", {})),
                tls=session.ssl is not None,
                login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            )
        )
        return f"250 2.0.0 Ok: queued as Q{len(self.messages)}"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        if data.password.decode() != self.password:
            return AuthResult(success=False, handled=False)
        self.logins.append((mechanism, data.login.decode()))
        return AuthResult(success=True, auth_data=data)

    @staticmethod
    def _reply(server: SMTP, reply: str) -> str:
        if reply.startswith("421"):
            # Like a real relay: say 421, then close (after the reply has been written).
            assert server.transport is not None
            server.loop.call_soon(server.transport.close)
        return reply


class RecordingSMTP(SMTP):
    """aiosmtpd's server, counting connections, and taking DSN parameters (RFC 3461) off
    MAIL and RCPT when it advertises DSN — stock aiosmtpd neither advertises nor accepts
    them (it answers 555), which the plain tests rely on."""

    dsn_parameters: dict[str, str]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not the STARTTLS upgrade of a connection
            self.event_handler.connections += 1
            self.dsn_parameters = {}
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.event_handler.reads.append(bytes(data))
        super().data_received(data)

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(self._take_dsn(arg, ("ENVID", "RET")))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(self._take_dsn(arg, ("NOTIFY", "ORCPT")))

    def _take_dsn(self, arg: str | None, keys: tuple[str, ...]) -> str | None:
        if arg is None or not self.event_handler.advertise_dsn:
            return arg
        kept = []
        for word in arg.split(" "):
            key, _, value = word.partition("=")
            if key.upper() in keys:
                self.dsn_parameters[key.upper()] = value
            else:
                kept.append(word)
        return " ".join(kept)


class RelayController(Controller):
    def factory(self) -> SMTP:
        return RecordingSMTP(self.handler, **self.SMTP_kwargs)


class Relay:
    """A running aiosmtpd relay on 127.0.0.1 that can be restarted on the same port."""

    def __init__(self, handler: RelayHandler, **options: Any) -> None:
        self.handler = handler
        self.port = free_port()
        self._options = options
        self._controller: RelayController | None = None
        self.start()

    def start(self) -> None:
        self._controller = RelayController(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="relay.test",
            **self._options,
        )
        self._controller.start()
        self.handler.connections = 0  # forget the controller's own start-up probe
        self.handler.reads.clear()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def restart(self) -> None:
        self.stop()
        self.start()


RelayFactory = Callable[..., Relay]
