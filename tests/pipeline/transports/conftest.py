"""Fixtures for the transport tests: the session's TLS certificates, a mutual-TLS HTTPS
endpoint (`tests/https_endpoint.py`; the SMTP relay is in `tests/smtp_relay.py`), and
envelopes shaped like the sealing step's output.

Everything listens on 127.0.0.1 and is torn down after each test; the servers record
what reached them so a test can compare it byte for byte with what was sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.transports.base import Envelope as SealedEnvelope
from tests.https_endpoint import HttpsEndpoint, Pki, make_tls_pki, running_endpoint


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_tls_pki(tmp_path_factory.mktemp("pki"))


def envelope(
    number: int = 1,
    *,
    recipient: str = "sophie.martin@cabinet.example",
    data: bytes | None = None,
    envelope_id: str | None = None,
) -> SealedEnvelope:
    """An envelope shaped like the sealing step's output: headers, then base64 lines."""
    if data is None:
        data = (
            f"Message-ID: <result-{number}@labdispatch.test>\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            "\r\n" + "MIIB" * 19 + "\r\n"
        ).encode("ascii")
    return SealedEnvelope(
        message_id=f"<result-{number}@labdispatch.test>",
        envelope_id=envelope_id or f"delivery-{number}",
        sender="results@labo.example",
        recipient=recipient,
        data=data,
    )


@pytest.fixture
def endpoint(pki: Pki) -> Iterator[HttpsEndpoint]:
    with running_endpoint(pki) as server:
        yield server
