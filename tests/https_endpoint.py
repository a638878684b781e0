"""A real HTTPS endpoint for tests: mutual TLS (it requires a client certificate from the
test CA), answering with the status the URL asks for, recording every POST and which
client certificate sent it; and the certificates it needs, made fresh.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# --- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files: a test CA with a server certificate (localhost, 127.0.0.1) and a client
    certificate, and a rogue CA nobody trusts, with its own server and client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_server_cert: Path
    rogue_server_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path

    def server_context(self, *, rogue: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if rogue:
            context.load_cert_chain(self.rogue_server_cert, self.rogue_server_key)
        else:
            context.load_cert_chain(self.server_cert, self.server_key)
        return context


CLIENT_COMMON_NAME = "Laboratoire d'essai"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labdispatch tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    folder: Path,
    stem: str,
    common_name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
    client: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate in `folder/<stem>.pem` with its key in `<stem>.key`; self-signed CA
    when `issuer` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = _name(common_name)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                False,
            )
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), False)
    certificate = builder.sign(issuer_key, hashes.SHA256())
    (folder / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / f"{stem}.key", key)
    return certificate, key


def make_tls_pki(folder: Path) -> Pki:
    """A CA with server and client certificates, and a rogue CA with its own, in `folder`."""
    ca = _issue(folder, "ca", "labdispatch test CA", None)
    _issue(folder, "server", "localhost", ca, server=True)
    _issue(folder, "client", CLIENT_COMMON_NAME, ca, client=True)
    rogue = _issue(folder, "rogue-ca", "Rogue CA", None)
    _issue(folder, "rogue-server", "localhost", rogue, server=True)
    _issue(folder, "rogue-client", "Rogue client", rogue, client=True)
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        rogue_ca=folder / "rogue-ca.pem",
        rogue_server_cert=folder / "rogue-server.pem",
        rogue_server_key=folder / "rogue-server.key",
        rogue_client_cert=folder / "rogue-client.pem",
        rogue_client_key=folder / "rogue-client.key",
    )


# --- HTTPS ------------------------------------------------------------------------------------


@dataclass
class ReceivedPost:
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int
    client_common_name: str | None


class EndpointHandler(http.server.BaseHTTPRequestHandler):
    """Answers `POST /status/<code>[?retry_after=N][&close=1]` with that status."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: HttpsEndpoint

    def setup(self) -> None:
        connection: ssl.SSLSocket = self.request
        connection.settimeout(5)
        connection.do_handshake()  # here, in the connection's thread, not in accept()
        self.connection_number = self.server.connection_opened(connection)
        certificate = connection.getpeercert(binary_form=True)
        self.client_common_name: str | None = None
        if certificate:
            names = x509.load_der_x509_certificate(certificate).subject
            self.client_common_name = str(
                names.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            )
        super().setup()

    def finish(self) -> None:
        super().finish()
        self.server.connection_closed(self.request)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.server.posts.append(
            ReceivedPost(
                path=self.path,
                headers=dict(self.headers.items()),
                body=body,
                connection=self.connection_number,
                client_common_name=self.client_common_name,
            )
        )
        status = int(url.path.rsplit("/", 1)[-1]) if url.path.startswith("/status/") else 201
        answer = f'{{"receipt": "R{len(self.server.posts)}"}}'.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if "retry_after" in query:
            self.send_header("Retry-After", query["retry_after"][0])
        if 300 <= status < 400:
            self.send_header("Location", "https://elsewhere.example/")
        if "close" in query:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads `posts`, not a log."""


class HttpsEndpoint(http.server.ThreadingHTTPServer):
    """A threaded HTTPS server that requires a client certificate from the test CA."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.posts: list[ReceivedPost] = []
        self.connections = 0
        self.failures: list[BaseException] = []
        self.failed = threading.Event()  # set once a connection failed on the server side
        self._open: set[ssl.SSLSocket] = set()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), EndpointHandler)
        self.port = self.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's reverse DNS lookup
        self.server_name, self.server_port = "localhost", int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = self.socket.accept()
        wrapped = self.context.wrap_socket(
            connection, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def connection_opened(self, connection: ssl.SSLSocket) -> int:
        with self._lock:
            self.connections += 1
            self._open.add(connection)
            return self.connections

    def connection_closed(self, connection: ssl.SSLSocket) -> None:
        with self._lock:
            self._open.discard(connection)

    def drop_idle_connections(self) -> None:
        """Closes every open connection, as a server does with idle keep-alives."""
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if error is not None:
            self.failures.append(error)
        self.failed.set()


def mutual_tls_context(pki: Pki) -> ssl.SSLContext:
    context = pki.server_context()
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(pki.ca)
    return context


@contextlib.contextmanager
def running_endpoint(pki: Pki) -> Iterator[HttpsEndpoint]:
    """A mutual-TLS endpoint serving in a thread for the duration of the block."""
    server = HttpsEndpoint(mutual_tls_context(pki))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.drop_idle_connections()
    server.server_close()
    thread.join()
