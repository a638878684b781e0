from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pipeline.transports.base import Outcome, TransportConfigurationError
from pipeline.transports.https import HttpsConfig, HttpsTransport
from tests.https_endpoint import CLIENT_COMMON_NAME, HttpsEndpoint, Pki
from tests.pipeline.transports.conftest import envelope
from tests.smtp_relay import free_port


def config(pki: Pki, **changes: object) -> HttpsConfig:
    values: dict[str, object] = {
        "client_certificate": pki.client_cert,
        "client_key": pki.client_key,
        "ca_file": pki.ca,
        "timeout": 5.0,
    }
    values.update(changes)
    return HttpsConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def https(pki: Pki) -> Iterator[HttpsTransport]:
    with HttpsTransport(config(pki)) as transport:
        yield transport


def test_post_carries_the_envelope_with_its_ids_over_mutual_tls(
    endpoint: HttpsEndpoint, https: HttpsTransport
) -> None:
    sent = envelope(recipient=f"{endpoint.url}/inbox?cabinet=12")

    result = https.send(sent)

    assert result.outcome is Outcome.ACCEPTED
    assert result.delivered  # the URL is the recipient's own inbox, not a relay
    assert result.evidence == '201 Created: {"receipt": "R1"}'
    [post] = endpoint.posts
    assert post.path == "/inbox?cabinet=12"
    assert post.body == sent.data
    assert post.headers["Content-Type"] == "message/rfc822"
    assert post.headers["Message-ID"] == sent.message_id
    assert post.headers["Idempotency-Key"] == sent.message_id
    assert post.client_common_name == CLIENT_COMMON_NAME


def test_several_posts_share_one_keep_alive_connection(
    endpoint: HttpsEndpoint, https: HttpsTransport
) -> None:
    results = [https.send(envelope(n, recipient=f"{endpoint.url}/inbox")) for n in range(5)]

    assert all(result.accepted for result in results)
    assert endpoint.connections == 1
    assert {post.connection for post in endpoint.posts} == {1}


def test_a_connection_the_server_closed_while_idle_is_reopened(
    endpoint: HttpsEndpoint, https: HttpsTransport
) -> None:
    assert https.send(envelope(1, recipient=f"{endpoint.url}/inbox")).accepted
    endpoint.drop_idle_connections()

    result = https.send(envelope(2, recipient=f"{endpoint.url}/inbox"))

    assert result.accepted, result.evidence
    assert endpoint.connections == 2
    assert len(endpoint.posts) == 2


def test_connection_close_from_the_server_is_honoured(
    endpoint: HttpsEndpoint, https: HttpsTransport
) -> None:
    assert https.send(envelope(1, recipient=f"{endpoint.url}/status/200?close=1")).accepted
    assert https.send(envelope(2, recipient=f"{endpoint.url}/inbox")).accepted

    assert endpoint.connections == 2


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.ACCEPTED),
        (201, Outcome.ACCEPTED),
        (202, Outcome.ACCEPTED),
        (408, Outcome.TRANSIENT),
        (429, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (409, Outcome.PERMANENT),
        (301, Outcome.PERMANENT),
    ],
)
def test_status_decides_the_outcome(
    endpoint: HttpsEndpoint, https: HttpsTransport, status: int, outcome: Outcome
) -> None:
    result = https.send(envelope(recipient=f"{endpoint.url}/status/{status}"))

    assert result.outcome is outcome
    assert result.evidence.startswith(f"{status} ")
    assert len(endpoint.posts) == 1  # a 301 is not followed


def test_retry_after_is_kept_in_the_evidence(
    endpoint: HttpsEndpoint, https: HttpsTransport
) -> None:
    result = https.send(envelope(recipient=f"{endpoint.url}/status/429?retry_after=120"))

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence == ('429 Too Many Requests: {"receipt": "R1"} (Retry-After: 120)')


def test_a_client_certificate_the_server_does_not_trust_is_transient(
    endpoint: HttpsEndpoint, pki: Pki
) -> None:
    """With TLS 1.3 our side of the handshake completes before the server judges our
    certificate; its refusal reaches us as an alert, an abrupt EOF or a reset, depending on
    whether our request was written before the server closed. All three are transient."""
    rogue = config(pki, client_certificate=pki.rogue_client_cert, client_key=pki.rogue_client_key)
    with HttpsTransport(rogue) as https:
        result = https.send(envelope(recipient=f"{endpoint.url}/inbox"))

    assert result.outcome is Outcome.TRANSIENT
    origin = f"POST (https://127.0.0.1:{endpoint.port}): "
    assert result.evidence.startswith(
        (
            f"{origin}the server refused our client certificate",
            f"{origin}the server closed the TLS connection abruptly",
            f"{origin}connection reset by the server",
        )
    ), result.evidence
    assert endpoint.failed.wait(timeout=5)  # the server's thread records the refusal
    assert isinstance(endpoint.failures[0], ssl.SSLError)
    assert endpoint.posts == []


@pytest.mark.parametrize("ca", ["system trust", "another CA"])
def test_a_server_we_do_not_trust_is_transient(endpoint: HttpsEndpoint, pki: Pki, ca: str) -> None:
    with HttpsTransport(config(pki, ca_file=pki.rogue_ca if ca == "another CA" else None)) as https:
        result = https.send(envelope(recipient=f"{endpoint.url}/inbox"))

    assert result.outcome is Outcome.TRANSIENT
    assert "TLS certificate of the server not trusted" in result.evidence
    assert endpoint.posts == []


def test_nothing_listening_is_transient(https: HttpsTransport) -> None:
    port = free_port()

    result = https.send(envelope(recipient=f"https://127.0.0.1:{port}/inbox"))

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence == f"POST (https://127.0.0.1:{port}): connection refused"


@pytest.mark.parametrize(
    "url",
    [
        "http://{origin}/inbox",
        "ftp://{origin}/inbox",
        "https://user:secret@{origin}/inbox",
        "https:///inbox",
        "https://127.0.0.1:99999/inbox",
        "https://{origin}/in box",
        "https://{origin}/inbox\r\nX-Injected: 1",
    ],
)
def test_unusable_urls_are_permanent_and_nothing_is_sent(
    endpoint: HttpsEndpoint, https: HttpsTransport, url: str
) -> None:
    result = https.send(envelope(recipient=url.format(origin=f"127.0.0.1:{endpoint.port}")))

    assert result.outcome is Outcome.PERMANENT
    assert result.evidence.startswith("endpoint URL refused: ")
    assert "secret" not in result.evidence
    assert endpoint.connections == 0


def test_destination_is_the_origin(https: HttpsTransport) -> None:
    assert https.destination("https://API.Cabinet.example/inbox/12") == (
        "https://api.cabinet.example:443"
    )
    assert https.destination("https://127.0.0.1:8443/x") == "https://127.0.0.1:8443"


def test_an_unreadable_client_key_is_a_configuration_error(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TransportConfigurationError, match="client certificate"):
        HttpsTransport(config(pki, client_key=tmp_path / "missing.key"))


def test_an_encrypted_client_key_is_a_configuration_error_not_a_prompt(
    pki: Pki, tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "client-encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )

    with pytest.raises(TransportConfigurationError, match="is encrypted"):
        HttpsTransport(config(pki, client_key=encrypted))
