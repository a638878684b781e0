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

Not thread-safe: one transport per worker thread, as `smtplib.SMTP` itself.
"""

from __future__ import annotations

import errno
import re
import select
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.closing import Closing
from pipeline.transports.base import (
    Envelope,
    Outcome,
    SendResult,
    TransportConfigurationError,
)

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


class _ConnectionLost(Exception):
    """The relay vanished under a command; carries the stage for the evidence."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(stage)
        self.stage = stage
        self.error = error


class SmtpTransport(Closing):
    """Sends each envelope as one SMTP transaction (MAIL, RCPT, DATA) on a shared
    connection; see the module docstring for the outcome rules."""

    kind = "mail"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._relay = _relay_url(config.host, config.port)
        self._tls_context = self._make_tls_context() if config.tls != "none" else None
        self._smtp: smtplib.SMTP | None = None

    def destination(self, address: str) -> str:
        return self._relay

    def send(self, envelope: Envelope) -> SendResult:
        problem = _envelope_problem(envelope)
        if problem is not None:
            return SendResult(Outcome.PERMANENT, problem)
        reused = self._smtp is not None
        if self._smtp is not None and idle_connection_is_stale(self._smtp.sock):
            self._drop()
            reused = False
        if self._smtp is None:
            failure = self._connect()
            if failure is not None:
                return failure
        try:
            return self._transaction(envelope)
        except _ConnectionLost as lost:
            self._drop()
            # Only a reused connection that died under MAIL is retried: the relay closed it
            # while idle and has seen nothing of this envelope. Later, or on a fresh
            # connection, a second try would hide a real fault or risk a double delivery.
            # (Lost during DATA, the relay may have queued it all the same: the resend
            # carries the same Message-ID, for the far side to de-duplicate.)
            if not (reused and lost.stage == "MAIL"):
                return self._network_failure(lost.stage, lost.error)
        failure = self._connect()
        if failure is not None:
            return failure
        try:
            return self._transaction(envelope)
        except _ConnectionLost as lost:
            self._drop()
            return self._network_failure(lost.stage, lost.error)

    def close(self) -> None:
        """Says QUIT if the connection is still up, then lets it go."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    # --- one transaction ------------------------------------------------------------------

    def _transaction(self, envelope: Envelope) -> SendResult:
        smtp = self._smtp
        assert smtp is not None
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        if smtp.has_extn("size"):
            mail_options.append(f"SIZE={len(envelope.data)}")
        if smtp.has_extn("dsn"):
            mail_options += [f"ENVID={_xtext(envelope.envelope_id)}", DSN_RETURN]
            rcpt_options.append(DSN_NOTIFY)

        stage = "MAIL"
        try:
            code, reply = smtp.mail(envelope.sender, mail_options)
            if not 200 <= code < 300:
                return self._refused(stage, code, reply)
            stage = "RCPT"
            code, reply = smtp.rcpt(envelope.recipient, rcpt_options)
            if not 200 <= code < 300:
                return self._refused(stage, code, reply)
            stage = "DATA"
            # smtplib dot-stuffs and terminates; the relay undoes the stuffing, so it
            # stores exactly `envelope.data` (CRLF, checked in `_envelope_problem`; a last
            # line without its CRLF gets one).
            code, reply = smtp.data(envelope.data)
        except smtplib.SMTPDataError as refusal:  # the DATA command itself, before any byte
            return self._refused(stage, refusal.smtp_code, refusal.smtp_error)
        except (smtplib.SMTPServerDisconnected, OSError) as error:
            raise _ConnectionLost(stage, error) from error
        if 200 <= code < 300:
            return SendResult(Outcome.ACCEPTED, _reply_text(code, reply))
        return self._refused(stage, code, reply)

    def _refused(self, stage: str, code: int, reply: bytes | str) -> SendResult:
        """Maps a refusal and leaves the connection ready for the next envelope."""
        evidence = f"{stage}: {_reply_text(code, reply)}"
        if code == 421 or not 400 <= code < 600:
            # 421: the relay is closing the channel. Anything else outside 4xx/5xx means we
            # no longer agree where we are in the dialogue. Either way, start afresh.
            self._drop()
            return SendResult(Outcome.TRANSIENT, evidence)
        self._reset()
        # 530 (RFC 4954, authentication required) is about our session, not the envelope:
        # the relay wants credentials we did not give. Fix the relay configuration, retry.
        if code >= 500 and code != 530:
            return SendResult(Outcome.PERMANENT, evidence)
        return SendResult(Outcome.TRANSIENT, evidence)

    def _reset(self) -> None:
        smtp = self._smtp
        if smtp is None:
            return
        try:
            code, _ = smtp.rset()
        except (smtplib.SMTPException, OSError):
            code = 0
        if code != 250:
            self._drop()

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
        if failure is not None:
            if smtp is not None:
                smtp.close()
            return failure
        self._smtp = smtp
        return None

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
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
    flat = "".join(c if c.isprintable() else " " for c in " / ".join(lines))
    return f"{code} {flat}"[:_MAX_EVIDENCE]


def _describe_network_error(error: BaseException, timeout: float) -> str:
    if isinstance(error, smtplib.SMTPServerDisconnected) and isinstance(error.__context__, OSError):
        error = error.__context__  # smtplib wraps a timeout or reset as "unexpectedly closed"
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
