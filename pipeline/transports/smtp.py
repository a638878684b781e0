"""Mail over SMTP: sealed envelopes handed to one relay over one long-lived connection.

All mail leaves through the relay named in the configuration, so the whole of a run shares
one connection: opening one costs a TCP and a TLS handshake and an AUTH exchange, which is
more than sending a 4 KB envelope. The connection is checked before each reuse and reopened
when the relay closed it in the meantime (idle timeout, restart).

The relay's reply decides the outcome, per RFC 5321's reply classes: 2xx after DATA is
`ACCEPTED` (the relay has taken responsibility; the recipient's server may still bounce it
later, which the DSN will say), 4xx is `TRANSIENT`, 5xx is `PERMANENT`. Failures that say
nothing about the envelope — the relay unreachable, TLS refused, our credentials rejected —
are `TRANSIENT`: the envelope is fine, the relay needs fixing, and the circuit breaker groups
them by `destination`.

A batch (`send_many`) goes on that connection too, pipelined when the relay offers
PIPELINING (RFC 2920): smtplib opens, secures and authenticates the connection, then
`smtp_wire.SmtpWire` writes each envelope's MAIL, RCPT and DATA together with the data of the
envelope before and reads the replies in order — one round trip per envelope where smtplib
takes four. `send` is a batch of one.

Not thread-safe: one transport per worker thread, as `smtplib.SMTP` itself.
"""

from __future__ import annotations

import errno
import re
import select
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.closing import Closing
from pipeline.transports.base import (
    Envelope,
    Outcome,
    SendResult,
    TransportConfigurationError,
)
from pipeline.transports.smtp_wire import RelayClosedConnection, SmtpWire, UnreadableReply

#: `SmtpConfig.tls` values. A plain `str`, checked when the config is built, because it
#: comes from a setting (`LABDISPATCH_SMTP_TLS`) as text.
TLS_MODES = ("starttls", "implicit", "none", "opportunistic")

#: RFC 3461: the DSN we ask for on every recipient, so the ledger learns of delivery,
#: bounce and delay from the far end and not only from the relay.
DSN_NOTIFY = "NOTIFY=SUCCESS,FAILURE,DELAY"
#: RFC 3461: a bounce carries our headers only, never the sealed body back.
DSN_RETURN = "RET=HDRS"

# A plain dot-atom mail address (no quoted local part, no comments): what the directory
# stores. Anything else — spaces, CR/LF, angle brackets, non-ASCII — could smuggle SMTP
# commands or parameters into MAIL/RCPT and is refused before the relay is contacted.
_LOCAL_PART = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[A-Za-z0-9:.]+\])"  # noqa: E501
_ADDRESS = re.compile(f"{_LOCAL_PART}@{_DOMAIN}")
_MAX_ADDRESS_LENGTH = 254  # RFC 5321 path limit (256) less the angle brackets
_MAX_EVIDENCE = 500


@dataclass(frozen=True)
class SmtpConfig:
    """How to reach the relay.

    `tls`: "opportunistic" (the default) uses STARTTLS when the relay offers it and plain
    SMTP otherwise; "starttls" requires it; "implicit" speaks TLS from the first byte
    (port 465); "none" never encrypts. Whenever TLS is used the relay's certificate and
    host name are verified, against `ca_file` or the system's trust store: a relay that
    cannot be verified is a relay to fix, not one to trust silently. The envelopes are
    already encrypted end to end; TLS protects the addresses and the credentials.
    `timeout` is in seconds and bounds each network operation, not a whole send.
    """

    host: str
    port: int = 25
    tls: str = "opportunistic"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    ca_file: Path | None = None
    local_hostname: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise TransportConfigurationError("SMTP relay host is empty")
        if not 0 < self.port < 65536:
            raise TransportConfigurationError(f"SMTP relay port {self.port} is not a TCP port")
        if self.tls not in TLS_MODES:
            raise TransportConfigurationError(
                f"SMTP TLS mode must be one of {', '.join(TLS_MODES)}, not {self.tls!r}"
            )
        if (self.username is None) != (self.password is None):
            raise TransportConfigurationError(
                "SMTP username and password go together: give both or neither"
            )
        if self.username is not None and self.tls == "none":
            raise TransportConfigurationError(
                "SMTP credentials with TLS mode 'none' would cross the network in clear; "
                "use 'starttls', 'implicit' or 'opportunistic'"
            )
        if self.timeout <= 0:
            raise TransportConfigurationError(f"SMTP timeout must be positive, not {self.timeout}")


@dataclass(frozen=True)
class _Halt:
    """The connection ended before every envelope of a batch was settled."""

    #: The stage the batch was at, and why the connection ended, for the evidence.
    stage: str
    why: str
    #: Envelopes the relay accepted on that connection before it ended.
    accepted: int
    #: No reply had been read on it in this batch: the relay closed it while it was idle.
    untouched: bool
    #: The envelope in flight already has its result (a refusal, or data lost unanswered).
    in_flight_settled: bool


class SmtpTransport(Closing):
    """Sends each envelope as one SMTP transaction (MAIL, RCPT, DATA) on a shared
    connection, several of them pipelined when the relay offers it; see the module
    docstring for the outcome rules."""

    kind = "mail"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._relay = _relay_url(config.host, config.port)
        self._tls_context = self._make_tls_context() if config.tls != "none" else None
        self._smtp: smtplib.SMTP | None = None
        self._wire: SmtpWire | None = None
        # What the relay's EHLO offered on the current connection.
        self._pipelining = False
        self._size = False
        self._dsn = False
        # A transaction was refused before its data: RSET before the next MAIL.
        self._reset_due = False

    def destination(self, address: str) -> str:
        return self._relay

    def send(self, envelope: Envelope) -> SendResult:
        return self.send_many([envelope])[0]

    def send_many(self, envelopes: Sequence[Envelope]) -> list[SendResult]:
        """Sends a batch over the shared connection, one result per envelope in the same
        order, each what `send` would give for it.

        When the relay offers PIPELINING (RFC 2920) the MAIL, RCPT and DATA commands of an
        envelope are written together, and together with the data of the envelope before:
        one round trip per envelope instead of four. When the connection ends mid-batch
        (dropped, or the relay said 421), an envelope whose data was written and not
        answered is `TRANSIENT` (the relay may have queued it: a resend carries the same
        Message-ID); the others were not sent, and go on a new connection if the one that
        ended had carried at least one envelope, else come back `TRANSIENT` — none is lost.
        """
        results: list[SendResult | None] = []
        batch: list[tuple[int, Envelope]] = []
        for envelope in envelopes:
            problem = _envelope_problem(envelope)
            if problem is None:
                batch.append((len(results), envelope))
            results.append(None if problem is None else SendResult(Outcome.PERMANENT, problem))
        if batch:
            self._send_batch(batch, results)
        settled = [result for result in results if result is not None]
        assert len(settled) == len(results)
        return settled

    def close(self) -> None:
        """Says QUIT if the connection is still up, then lets it go."""
        smtp, wire = self._smtp, self._wire
        self._smtp = self._wire = None
        if smtp is None:
            return
        try:
            if wire is not None:
                wire.command(b"QUIT")
                wire.reply()
        except OSError:
            pass
        smtp.close()

    # --- a batch of transactions ----------------------------------------------------------

    def _send_batch(
        self, batch: list[tuple[int, Envelope]], results: list[SendResult | None]
    ) -> None:
        reused = self._wire is not None
        if self._wire is not None and idle_connection_is_stale(self._wire.sock):
            self._drop()
            reused = False
        # A reused connection that dies before its first reply is retried once: the relay
        # closed it while idle and has seen nothing of the batch. One that dies later is
        # followed by a new one only if it carried an envelope (a relay ending sessions
        # after N messages), so a relay that fails every session ends the batch.
        retry_idle = reused
        while True:
            pending = [(index, envelope) for index, envelope in batch if results[index] is None]
            if not pending:
                return
            if self._wire is None:
                failure = self._connect()
                if failure is not None:
                    for index, _ in pending:
                        results[index] = failure
                    return
            halt = self._transactions(pending, results)
            if halt is None:
                return
            if (retry_idle and halt.untouched) or halt.accepted:
                retry_idle = False
                continue
            left = [index for index, _ in pending if results[index] is None]
            if left and not halt.in_flight_settled:
                results[left.pop(0)] = self._failure(halt.stage, halt.why)
            for index in left:
                results[index] = self._failure(
                    "MAIL", f"not sent, the connection ended under an earlier envelope ({halt.why})"
                )
            return

    def _transactions(
        self, pending: list[tuple[int, Envelope]], results: list[SendResult | None]
    ) -> _Halt | None:
        """Runs the transactions on the open connection, setting their results; a `_Halt`
        when the connection ended first (it is dropped by then)."""
        wire = self._wire
        assert wire is not None
        replies = accepted = 0
        opened_ahead = -1  # the position whose commands went out with the previous data
        for position, (index, envelope) in enumerate(pending):
            stage = "MAIL"
            data_written = False
            try:
                refusal: tuple[str, int, bytes] | None = None
                closing = data_ready = False
                if self._pipelining:
                    reset = self._reset_due and opened_ahead != position
                    if opened_ahead != position:
                        if reset:
                            wire.command(b"RSET")
                        self._queue_opening(wire, envelope)
                    self._reset_due = False
                    if reset:
                        stage = "RSET"
                        _expect_reset(wire)
                        replies += 1
                    for stage in ("MAIL", "RCPT", "DATA"):
                        code, reply = wire.reply()
                        replies += 1
                        ready = code == 354 if stage == "DATA" else 200 <= code < 300
                        if refusal is None and not ready:
                            refusal = (stage, code, reply)
                        data_ready = stage == "DATA" and code == 354
                        closing = code == 421
                        if closing:
                            break  # the relay closes: no further replies will come
                else:
                    if self._reset_due:
                        stage = "RSET"
                        self._reset_due = False
                        wire.command(b"RSET")
                        _expect_reset(wire)
                        replies += 1
                    for stage, line in self._opening(envelope):
                        wire.command(line)
                        code, reply = wire.reply()
                        replies += 1
                        ready = code == 354 if stage == "DATA" else 200 <= code < 300
                        if not ready:
                            refusal, closing = (stage, code, reply), code == 421
                            break
                if refusal is not None:
                    stage, code, reply = refusal
                    if data_ready and not closing and 400 <= code < 600:
                        # RFC 2920 3.1: DATA went ahead although the transaction failed; a
                        # lone dot ends it with no message.
                        wire.command(b".")
                        wire.reply()
                        replies += 1
                    results[index] = self._refused(
                        stage, code, reply, closing=closing, transaction_open=True
                    )
                    if self._wire is None:
                        return self._halted(stage, code, reply, accepted)
                    continue
                stage = "DATA"
                wire.message(envelope.data)
                data_written = True
                if self._pipelining and position + 1 < len(pending):
                    self._queue_opening(wire, pending[position + 1][1])
                    opened_ahead = position + 1
                code, reply = wire.reply()
                replies += 1
                if 200 <= code < 300:
                    results[index] = SendResult(Outcome.ACCEPTED, _reply_text(code, reply))
                    accepted += 1
                    continue
                # After the data the transaction is over whatever the reply (RFC 5321
                # 4.1.1.4): no RSET is due.
                results[index] = self._refused(
                    stage, code, reply, closing=code == 421, transaction_open=False
                )
                if self._wire is None:
                    return self._halted(stage, code, reply, accepted)
            except OSError as error:  # socket, TLS, closed by the relay, unreadable reply
                self._drop()
                if data_written:
                    # The relay may have queued it before the connection went: the resend
                    # carries the same Message-ID, for the far side to de-duplicate.
                    results[index] = self._network_failure(stage, error)
                why = _describe_network_error(error, self.config.timeout)
                return _Halt(stage, why, accepted, replies == 0, data_written)
        return None

    def _halted(self, stage: str, code: int, reply: bytes, accepted: int) -> _Halt:
        why = f"{stage}: {_reply_text(code, reply)}"
        return _Halt(stage, why, accepted, untouched=False, in_flight_settled=True)

    def _opening(self, envelope: Envelope) -> list[tuple[str, bytes]]:
        """MAIL, RCPT and DATA for one envelope, with the SIZE and DSN parameters the relay
        offered."""
        mail = f"MAIL FROM:<{envelope.sender}>"
        rcpt = f"RCPT TO:<{envelope.recipient}>"
        if self._size:
            mail += f" SIZE={len(envelope.data)}"
        if self._dsn:
            mail += f" ENVID={_xtext(envelope.envelope_id)} {DSN_RETURN}"
            rcpt += f" {DSN_NOTIFY}"
        # The addresses are plain ASCII (checked in `_envelope_problem`).
        return [("MAIL", mail.encode("ascii")), ("RCPT", rcpt.encode("ascii")), ("DATA", b"DATA")]

    def _queue_opening(self, wire: SmtpWire, envelope: Envelope) -> None:
        for _, line in self._opening(envelope):
            wire.command(line)

    def _refused(
        self, stage: str, code: int, reply: bytes, *, closing: bool, transaction_open: bool
    ) -> SendResult:
        """Maps a refusal. The connection stays for the next envelope, after a RSET if the
        transaction is still open, unless the relay is closing it or we no longer agree where
        we are in the dialogue."""
        evidence = f"{stage}: {_reply_text(code, reply)}"
        if closing or code == 421 or not 400 <= code < 600:
            # 421: the relay is closing the channel. Anything else outside 4xx/5xx means we
            # no longer agree where we are in the dialogue. Either way, start afresh.
            self._drop()
            return SendResult(Outcome.TRANSIENT, evidence)
        self._reset_due = transaction_open
        # 530 (RFC 4954, authentication required) is about our session, not the envelope:
        # the relay wants credentials we did not give. Fix the relay configuration, retry.
        if code >= 500 and code != 530:
            return SendResult(Outcome.PERMANENT, evidence)
        return SendResult(Outcome.TRANSIENT, evidence)

    # --- the connection -------------------------------------------------------------------

    def _connect(self) -> SendResult | None:
        """Opens, secures and authenticates a connection; a `TRANSIENT` result if any step
        fails (the password never appears in it)."""
        config = self.config
        smtp: smtplib.SMTP | None = None
        failure: SendResult | None = None
        stage = "connect"
        try:
            # The host goes to the constructor, which connects: smtplib takes the name it
            # checks the relay's certificate against from there, not from connect().
            if config.tls == "implicit":
                smtp = smtplib.SMTP_SSL(
                    config.host,
                    config.port,
                    local_hostname=config.local_hostname,
                    timeout=config.timeout,
                    context=self._tls_context,
                )
            else:
                smtp = smtplib.SMTP(
                    config.host,
                    config.port,
                    local_hostname=config.local_hostname,
                    timeout=config.timeout,
                )
            stage = "EHLO"
            smtp.ehlo_or_helo_if_needed()
            if config.tls in ("starttls", "opportunistic"):
                if smtp.has_extn("starttls"):
                    stage = "STARTTLS"
                    smtp.starttls(context=self._tls_context)
                    stage = "EHLO"
                    smtp.ehlo()
                elif config.tls == "starttls":
                    failure = self._failure("STARTTLS", "the relay does not offer STARTTLS")
                elif config.username is not None:
                    failure = self._failure(
                        "STARTTLS",
                        "the relay does not offer STARTTLS; credentials are not sent in clear",
                    )
            if failure is None and config.username is not None and config.password is not None:
                stage = "AUTH"
                smtp.login(config.username, config.password)
        except smtplib.SMTPNotSupportedError:
            failure = self._failure(stage, "the relay does not offer AUTH")
        except smtplib.SMTPResponseException as refusal:
            failure = self._failure(stage, _reply_text(refusal.smtp_code, refusal.smtp_error))
        except smtplib.SMTPServerDisconnected as error:
            failure = self._network_failure(stage, error)
        except smtplib.SMTPException:
            # smtplib's only remaining case here: no AUTH mechanism in common.
            offered = (smtp.esmtp_features.get("auth", "") if smtp else "").strip() or "none"
            failure = self._failure(stage, f"no AUTH mechanism in common (relay offers {offered})")
        except OSError as error:
            failure = self._network_failure(stage, error)
        if failure is not None or smtp is None or smtp.sock is None:
            if smtp is not None:
                smtp.close()
            return failure or self._failure(stage, "the connection closed")
        self._smtp = smtp
        self._wire = SmtpWire(smtp.sock)
        self._pipelining = smtp.has_extn("pipelining")
        self._size = smtp.has_extn("size")
        self._dsn = smtp.has_extn("dsn")
        self._reset_due = False
        return None

    def _drop(self) -> None:
        smtp = self._smtp
        self._smtp = self._wire = None
        if smtp is not None:
            smtp.close()

    def _make_tls_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(
                cafile=str(self.config.ca_file) if self.config.ca_file else None
            )
        except (OSError, ssl.SSLError) as error:
            raise TransportConfigurationError(
                f"cannot read the SMTP relay CA file {self.config.ca_file}: {error}"
            ) from error
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _failure(self, stage: str, what: str) -> SendResult:
        return SendResult(Outcome.TRANSIENT, f"{stage} ({self._relay}): {what}"[:_MAX_EVIDENCE])

    def _network_failure(self, stage: str, error: BaseException) -> SendResult:
        return self._failure(stage, _describe_network_error(error, self.config.timeout))


def _expect_reset(wire: SmtpWire) -> None:
    code, reply = wire.reply()
    if code != 250:
        raise UnreadableReply(f"the relay refused RSET ({_reply_text(code, reply)})")


# --- helpers ----------------------------------------------------------------------------------


def _relay_url(host: str, port: int) -> str:
    return f"smtp://[{host}]:{port}" if ":" in host else f"smtp://{host}:{port}"


def _envelope_problem(envelope: Envelope) -> str | None:
    """Why the envelope cannot be offered to any relay, or None. The addresses themselves are
    not echoed: they are what failed to be safe to print."""
    for role, address in (("recipient", envelope.recipient), ("sender", envelope.sender)):
        if len(address) > _MAX_ADDRESS_LENGTH or not _ADDRESS.fullmatch(address):
            reason = (
                "contains a line break or control character"
                if any(ord(c) < 32 or ord(c) == 127 for c in address)
                else "is not a plain ASCII mail address"
            )
            return f"{role} address {reason}; nothing was sent"
    data = envelope.data
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        # A bare CR or LF is outside RFC 5321 and is how SMTP smuggling starts; the
        # sealing step must hand over CRLF line ends.
        return "message has bare CR or LF line ends (CRLF required); nothing was sent"
    return None


def _xtext(value: str) -> str:
    """RFC 3461 xtext: printable ASCII except '+' and '=' as is, any other byte as +XX."""
    return "".join(
        chr(byte) if 33 <= byte <= 126 and byte not in b"+=" else f"+{byte:02X}"
        for byte in value.encode("utf-8")
    )


def _reply_text(code: int, reply: bytes | str) -> str:
    """The relay's reply as one line: smtplib joins multi-line replies with LF."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    flat = " / ".join(lines)
    if not flat.isprintable():  # one C pass; the usual reply needs no more
        flat = "".join(c if c.isprintable() else " " for c in flat)
    return f"{code} {flat}"[:_MAX_EVIDENCE]


def _describe_network_error(error: BaseException, timeout: float) -> str:
    if isinstance(error, smtplib.SMTPServerDisconnected) and isinstance(error.__context__, OSError):
        error = error.__context__  # smtplib wraps a timeout or reset as "unexpectedly closed"
    if isinstance(error, (RelayClosedConnection, UnreadableReply)):
        return str(error)
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate of the relay not trusted: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed: {error.reason or error}"
    if isinstance(error, socket.gaierror):
        return f"host name lookup failed: {error.strerror}"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return f"connection closed by the relay ({error})"
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, str(error.errno))
        return f"{name}: {error.strerror}"
    return f"{type(error).__name__}: {error}"


def idle_connection_is_stale(sock: socket.socket | None) -> bool:
    """True when an idle connection cannot carry the next command: the peer closed it or
    spoke unasked (a "421 timeout" before closing). A healthy idle SMTP or HTTP/1.1
    connection is silent, so any readable byte means stale — except TLS 1.3 session
    tickets, which are TLS records with no application data."""
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    if not readable:
        return False
    if not isinstance(sock, ssl.SSLSocket):
        return True
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        sock.recv(1)
    except ssl.SSLWantReadError:
        return False  # only TLS housekeeping was waiting
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)
    return True
