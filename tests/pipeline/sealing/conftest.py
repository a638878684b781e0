"""One demo PKI and a few spare RSA keys for the whole session: RSA key generation is the
slow part of these tests (~50 ms a key), everything else is milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.sealing.demo_pki import DemoPki, create_demo_pki
from pipeline.sealing.keys import Signer, load_signer

RECIPIENTS = {"sophie.martin": "sophie.martin@cabinet.example", "paul.leroy": None}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    """Read-only for tests: copy it before changing anything."""
    return create_demo_pki(tmp_path_factory.mktemp("pki"), RECIPIENTS)


@pytest.fixture(scope="session")
def signer(pki: DemoPki) -> Signer:
    return load_signer(certificate=pki.lab_certificate, key=pki.lab_key)


@pytest.fixture(scope="session")
def ca(pki: DemoPki) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    certificate = x509.load_pem_x509_certificate(pki.ca_certificate.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return certificate, key


@pytest.fixture(scope="session")
def spare_key() -> rsa.RSAPrivateKey:
    """An RSA key for certificates whose dates or issuer are the point of a test."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def sophie(pki: DemoPki) -> tuple[Path, Path]:
    return pki.recipients["sophie.martin"]


@pytest.fixture(scope="session")
def sophie_certificate(sophie: tuple[Path, Path]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(sophie[0].read_bytes())
