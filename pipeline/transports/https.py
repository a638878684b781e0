"""HTTPS POST: each envelope posted to the recipient's web endpoint, authenticated by our
client certificate (mutual TLS).

The body is the sealed RFC 5322 message as is (`Content-Type: message/rfc822`), with its
Message-ID repeated as `Message-ID` and `Idempotency-Key` headers so the endpoint can
recognise a resend: a POST that timed out may have been taken, and the retry must not
become a second result in the clinician's file.

One keep-alive connection per (host, port), reused across sends and reopened when the
server closed it. A reused connection that fails before any response is retried once on a
fresh one — the usual idle close race — which the idempotency key makes safe.

Status mapping: 2xx `ACCEPTED`; 408, 425, 429 and 5xx `TRANSIENT` (the server asks us to
come back); 3xx and other 4xx `PERMANENT`. Redirects are never followed: sealed data goes
to the address in the directory or nowhere.

Not thread-safe: one transport per worker thread, as `http.client` itself.
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from pipeline.closing import Closing
from pipeline.transports.base import (
    Envelope,
    Outcome,
    SendResult,
    TransportConfigurationError,
)
from pipeline.transports.smtp import idle_connection_is_stale

RETRYABLE_STATUSES = frozenset({408, 425, 429})
_EVIDENCE_BODY_CHARS = 200
_MAX_BODY = 64 * 1024  # bytes of response read; more and the connection is dropped instead
_USER_AGENT = "labdispatch"
_CERTIFICATE_ALERTS = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_", "ACCESS_DENIED")


@dataclass(frozen=True)
class HttpsConfig:
    """Our client certificate and key (PEM, key unencrypted: a daemon cannot type a
    passphrase), the CA that signs endpoints' certificates (`None`: the system's trust
    store), and `timeout` in seconds for each network operation."""

    client_certificate: Path
    client_key: Path
    ca_file: Path | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise TransportConfigurationError(f"HTTPS timeout must be positive, not {self.timeout}")


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    path: str

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


class _Unusable(Exception):
    """The address can never be posted to."""


class HttpsTransport(Closing):
    """Posts envelopes over mutual TLS; see the module docstring for the outcome rules."""

    kind = "https"

    def __init__(self, config: HttpsConfig) -> None:
        self.config = config
        self._context = _client_context(config)
        self._connections: dict[tuple[str, int], http.client.HTTPSConnection] = {}

    def destination(self, address: str) -> str:
        try:
            return _parse(address).origin
        except _Unusable:
            return "https://invalid"

    def send(self, envelope: Envelope) -> SendResult:
        try:
            target = _parse(envelope.recipient)
        except _Unusable as reason:
            return SendResult(Outcome.PERMANENT, f"endpoint URL refused: {reason}")
        if any(ord(c) < 32 or ord(c) == 127 for c in envelope.message_id):
            return SendResult(
                Outcome.PERMANENT, "Message-ID has a control character; it cannot be a header"
            )
        connection, reused = self._connection(target)
        try:
            return self._post(connection, target, envelope)
        except (OSError, http.client.HTTPException) as error:
            self._discard(target)
            if not (reused and _lost_before_response(error)):
                return self._failure(target, error)
        connection, _ = self._connection(target)
        try:
            return self._post(connection, target, envelope)
        except (OSError, http.client.HTTPException) as error:
            self._discard(target)
            return self._failure(target, error)

    def close(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            connection.close()

    # --- internals ------------------------------------------------------------------------

    def _connection(self, target: _Target) -> tuple[http.client.HTTPSConnection, bool]:
        """The open connection to the target's origin if it is still usable, else a new
        one (it connects on first use); and whether it was reused."""
        key = (target.host, target.port)
        connection = self._connections.get(key)
        if connection is not None:
            if connection.sock is not None and not idle_connection_is_stale(connection.sock):
                return connection, True
            connection.close()
        connection = http.client.HTTPSConnection(
            target.host, target.port, timeout=self.config.timeout, context=self._context
        )
        self._connections[key] = connection
        return connection, False

    def _discard(self, target: _Target) -> None:
        connection = self._connections.pop((target.host, target.port), None)
        if connection is not None:
            connection.close()

    def _post(
        self, connection: http.client.HTTPSConnection, target: _Target, envelope: Envelope
    ) -> SendResult:
        connection.request(
            "POST",
            target.path,
            body=envelope.data,
            headers={
                "Content-Type": "message/rfc822",
                "Message-ID": envelope.message_id,
                "Idempotency-Key": envelope.message_id,
                "User-Agent": _USER_AGENT,
            },
        )
        response = connection.getresponse()
        body = response.read(_MAX_BODY + 1)
        if response.will_close or not response.isclosed():
            # The server is closing, or the body is larger than we read: the connection
            # cannot carry another request.
            self._discard(target)
        return _result(response, body)

    def _failure(self, target: _Target, error: BaseException) -> SendResult:
        return SendResult(
            Outcome.TRANSIENT, f"POST ({target.origin}): {_describe(error, self.config.timeout)}"
        )


def _client_context(config: HttpsConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    except (OSError, ssl.SSLError) as error:
        raise TransportConfigurationError(
            f"cannot read the HTTPS CA file {config.ca_file}: {error}"
        ) from error
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def no_passphrase() -> bytes:
        raise TransportConfigurationError(
            f"the HTTPS client key {config.client_key} is encrypted; give it unencrypted, "
            "readable by this service only"
        )

    try:
        context.load_cert_chain(config.client_certificate, config.client_key, no_passphrase)
    except (OSError, ssl.SSLError) as error:
        raise TransportConfigurationError(
            f"cannot load the HTTPS client certificate {config.client_certificate} "
            f"with key {config.client_key}: {getattr(error, 'reason', None) or error}"
        ) from error
    return context


def _parse(url: str) -> _Target:
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise _Unusable("space or control character in the URL")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise _Unusable(f"not a URL ({error})") from None
    if parts.scheme.lower() != "https":
        scheme = parts.scheme or "none"
        raise _Unusable(f"scheme {scheme!r} is not https; sealed data goes over TLS only")
    if not parts.hostname:
        raise _Unusable("no host in the URL")
    if parts.username is not None or parts.password is not None:
        raise _Unusable("credentials in the URL; the client certificate authenticates us")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return _Target(parts.hostname, port or 443, path)


def _result(response: http.client.HTTPResponse, body: bytes) -> SendResult:
    status = response.status
    evidence = f"{status} {response.reason}"
    snippet = _one_line(body[: _EVIDENCE_BODY_CHARS * 4].decode("utf-8", "replace"))
    if snippet:
        evidence = f"{evidence}: {snippet[:_EVIDENCE_BODY_CHARS]}"
    if 200 <= status < 300:
        # The channel's URL is the recipient's own inbox (their practice software or their
        # provider's API), not a relay: once it answers 2xx the result is in their hands.
        return SendResult(Outcome.ACCEPTED, evidence, delivered=True)
    if status in RETRYABLE_STATUSES or 500 <= status < 600:
        retry_after = response.getheader("Retry-After")
        if retry_after:
            evidence = f"{evidence} (Retry-After: {_one_line(retry_after)[:64]})"
        return SendResult(Outcome.TRANSIENT, evidence)
    if 300 <= status < 500:
        return SendResult(Outcome.PERMANENT, evidence)
    return SendResult(Outcome.TRANSIENT, f"unexpected status {evidence}")


def _lost_before_response(error: BaseException) -> bool:
    """The connection died before the server answered: what a server closing an idle
    keep-alive connection looks like from our side."""
    return isinstance(
        error,
        ConnectionError | http.client.RemoteDisconnected | ssl.SSLEOFError | ssl.SSLZeroReturnError,
    )


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate of the server not trusted: {error.verify_message}"
    if isinstance(error, ssl.SSLEOFError):
        return (
            "the server closed the TLS connection abruptly "
            "(as when it refuses our client certificate)"
        )
    if isinstance(error, ssl.SSLError):
        reason = error.reason or str(error)
        if "ALERT" in reason and any(word in reason for word in _CERTIFICATE_ALERTS):
            # With TLS 1.3 the server judges our certificate after our side of the
            # handshake is done: its refusal arrives as an alert on the first read.
            return f"the server refused our client certificate ({reason})"
        return f"TLS failed: {reason}"
    if isinstance(error, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(error, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(error, http.client.HTTPException):
        return f"HTTP protocol error: {type(error).__name__}"
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    return f"{type(error).__name__}: {error}"


def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())
