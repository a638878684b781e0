"""The laboratory's signing identity and the choice of a recipient's certificate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.sealing.demo_pki import DemoPki
from pipeline.sealing.errors import (
    RecipientCertificateExpired,
    RecipientCertificateMissing,
    RecipientCertificateNotYetValid,
    SignerCertificateInvalid,
    SigningKeyUnavailable,
    UnsupportedRecipientKey,
)
from pipeline.sealing.keys import Signer, check_signer, load_signer, recipient_certificate
from tests.conftest import CertificateMaker
from tests.pipeline.sealing.helpers import issue, openssl

PASSWORD = b"correct horse battery staple"
CA = tuple[x509.Certificate, rsa.RSAPrivateKey]


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def now() -> datetime:
    return datetime.now(UTC)


def assert_no_secret(error: BaseException) -> None:
    text = str(error)
    assert "PRIVATE KEY" not in text
    assert PASSWORD.decode() not in text


# --- loading the signing identity --------------------------------------------------------------


def test_pem_certificate_and_key_load_as_the_signer(pki: DemoPki) -> None:
    signer = load_signer(certificate=pki.lab_certificate, key=pki.lab_key)
    assert "labdispatch demo laboratory (TEST)" in signer.subject
    assert isinstance(signer.private_key, rsa.RSAPrivateKey)
    assert signer.chain == ()
    assert "PRIVATE" not in repr(signer) and "private_key" not in repr(signer)


def test_encrypted_pem_key_opens_with_its_password(pki: DemoPki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.lab_key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    encrypted = tmp_path / "lab-encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD),
        )
    )
    signer = load_signer(certificate=pki.lab_certificate, key=encrypted, password=PASSWORD)
    assert signer.certificate.serial_number > 0
    with pytest.raises(SigningKeyUnavailable, match="encrypted: give its password") as missing:
        load_signer(certificate=pki.lab_certificate, key=encrypted)
    with pytest.raises(SigningKeyUnavailable, match="password is wrong") as wrong:
        load_signer(certificate=pki.lab_certificate, key=encrypted, password=b"nope")
    assert str(encrypted) in str(wrong.value)
    assert_no_secret(missing.value)
    assert_no_secret(wrong.value)


@pytest.fixture(scope="module")
def lab_p12(pki: DemoPki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PKCS#12 exported by stock openssl, as a lab's CA or IT would hand it over."""
    path = tmp_path_factory.mktemp("p12") / "lab.p12"
    exported = openssl(
        "pkcs12", "-export", "-in", pki.lab_certificate, "-inkey", pki.lab_key,
        "-certfile", pki.ca_certificate, "-name", "lab", "-out", path,
        "-passout", f"pass:{PASSWORD.decode()}",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr.decode()
    return path


def test_pkcs12_with_password_loads_key_certificate_and_chain(lab_p12: Path, pki: DemoPki) -> None:
    signer = load_signer(pkcs12=lab_p12, password=PASSWORD)
    expected = load_signer(certificate=pki.lab_certificate, key=pki.lab_key)
    assert signer.certificate == expected.certificate
    ca = x509.load_pem_x509_certificate(pki.ca_certificate.read_bytes())
    assert signer.chain == (ca,)


def test_pkcs12_wrong_or_missing_password_is_signing_key_unavailable(lab_p12: Path) -> None:
    with pytest.raises(SigningKeyUnavailable, match="the password is wrong") as wrong:
        load_signer(pkcs12=lab_p12, password=b"not it")
    assert str(lab_p12) in str(wrong.value)
    assert_no_secret(wrong.value)
    with pytest.raises(SigningKeyUnavailable, match="no password was given"):
        load_signer(pkcs12=lab_p12)


def test_key_of_another_certificate_is_refused(pki: DemoPki) -> None:
    with pytest.raises(SigningKeyUnavailable, match="does not belong to the certificate") as error:
        load_signer(certificate=pki.lab_certificate, key=pki.recipients["paul.leroy"][1])
    assert str(pki.lab_certificate) in str(error.value)
    assert_no_secret(error.value)


def test_bundle_in_either_order_finds_the_certificate_of_the_key(
    pki: DemoPki, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca-then-lab.crt"
    bundle.write_bytes(pki.ca_certificate.read_bytes() + pki.lab_certificate.read_bytes())
    signer = load_signer(certificate=bundle, key=pki.lab_key)
    assert signer.certificate == x509.load_pem_x509_certificate(pki.lab_certificate.read_bytes())
    assert signer.chain == (x509.load_pem_x509_certificate(pki.ca_certificate.read_bytes()),)
    with pytest.raises(SigningKeyUnavailable, match="nor to any of the 2 in the file"):
        load_signer(certificate=bundle, key=pki.recipients["paul.leroy"][1])


def test_missing_file_is_named(pki: DemoPki, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "lab.key"
    with pytest.raises(SigningKeyUnavailable, match="does not exist") as error:
        load_signer(certificate=pki.lab_certificate, key=missing)
    assert str(missing) in str(error.value)


def test_file_that_is_not_pem_is_named(pki: DemoPki, tmp_path: Path) -> None:
    garbage = tmp_path / "lab.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(SigningKeyUnavailable, match="holds no PEM certificate") as error:
        load_signer(certificate=garbage, key=pki.lab_key)
    assert str(garbage) in str(error.value)
    with pytest.raises(SigningKeyUnavailable, match="not a PEM private key"):
        load_signer(certificate=pki.lab_certificate, key=garbage)


def test_half_a_configuration_is_refused(pki: DemoPki, lab_p12: Path) -> None:
    with pytest.raises(SigningKeyUnavailable, match="both a PEM certificate and its private key"):
        load_signer(certificate=pki.lab_certificate)
    with pytest.raises(SigningKeyUnavailable, match="not both"):
        load_signer(pkcs12=lab_p12, certificate=pki.lab_certificate, password=PASSWORD)


def test_unreadable_file_is_named(pki: DemoPki, tmp_path: Path) -> None:
    folder = tmp_path / "a-directory.key"
    folder.mkdir()
    with pytest.raises(SigningKeyUnavailable, match="cannot be read") as error:
        load_signer(certificate=pki.lab_certificate, key=folder)
    assert str(folder) in str(error.value)


# --- the signer's validity ---------------------------------------------------------------------


def test_valid_signer_passes_the_check(signer: Signer) -> None:
    check_signer(signer, now())


def test_expired_signer_is_refused_with_its_dates(ca: CA, spare_key: rsa.RSAPrivateKey) -> None:
    certificate = issue(
        "TEST old lab", spare_key.public_key(), *ca, valid_from_days=-400, valid_to_days=-35
    )
    with pytest.raises(SignerCertificateInvalid, match="expired on") as error:
        check_signer(Signer(certificate, spare_key), now())
    expiry = certificate.not_valid_after_utc.strftime("%Y-%m-%d")
    assert expiry in str(error.value)


def test_signer_not_yet_valid_is_refused(ca: CA, spare_key: rsa.RSAPrivateKey) -> None:
    certificate = issue(
        "TEST next lab", spare_key.public_key(), *ca, valid_from_days=3, valid_to_days=400
    )
    with pytest.raises(SignerCertificateInvalid, match="not valid before"):
        check_signer(Signer(certificate, spare_key), now())
    check_signer(Signer(certificate, spare_key), now() + timedelta(days=4))


def test_expired_chain_certificate_is_refused(
    signer: Signer, ca: CA, spare_key: rsa.RSAPrivateKey
) -> None:
    old = issue("TEST old intermediate", spare_key.public_key(), *ca, valid_to_days=-1, ca=True)
    with pytest.raises(SignerCertificateInvalid, match="chain certificate"):
        check_signer(Signer(signer.certificate, signer.private_key, (old,)), now())


# --- choosing the recipient's certificate ------------------------------------------------------


def test_latest_expiring_valid_certificate_is_chosen(ca: CA, spare_key: rsa.RSAPrivateKey) -> None:
    short = issue("TEST short", spare_key.public_key(), *ca, valid_to_days=10)
    long = issue("TEST long", spare_key.public_key(), *ca, valid_to_days=300)
    expired = issue("TEST gone", spare_key.public_key(), *ca, valid_from_days=-90, valid_to_days=-1)
    chosen = recipient_certificate(
        "sophie.martin", [pem(short), pem(expired), pem(long).decode()], now()
    )
    assert chosen == long


def test_no_certificate_is_missing() -> None:
    with pytest.raises(
        RecipientCertificateMissing, match=r"sophie\.martin has no certificate"
    ) as error:
        recipient_certificate("sophie.martin", [], now())
    assert error.value.recipient_key == "sophie.martin"


def test_only_unreadable_certificates_is_missing_and_says_so() -> None:
    with pytest.raises(RecipientCertificateMissing, match="1 unreadable"):
        recipient_certificate("sophie.martin", [b"-----BEGIN CERTIFICATE-----\nnope\n"], now())


def test_all_expired_gives_the_latest_expiry(ca: CA, spare_key: rsa.RSAPrivateKey) -> None:
    older = issue("TEST a", spare_key.public_key(), *ca, valid_from_days=-400, valid_to_days=-100)
    newer = issue("TEST b", spare_key.public_key(), *ca, valid_from_days=-300, valid_to_days=-20)
    with pytest.raises(RecipientCertificateExpired) as error:
        recipient_certificate("paul.leroy", [pem(newer), pem(older)], now())
    assert newer.not_valid_after_utc.strftime("%Y-%m-%d") in str(error.value)
    assert older.not_valid_after_utc.strftime("%Y-%m-%d") not in str(error.value)
    assert error.value.recipient_key == "paul.leroy"


def test_not_yet_valid_says_when(ca: CA, spare_key: rsa.RSAPrivateKey) -> None:
    renewal = issue(
        "TEST renewal", spare_key.public_key(), *ca, valid_from_days=5, valid_to_days=400
    )
    with pytest.raises(RecipientCertificateNotYetValid, match="not valid before") as error:
        recipient_certificate("paul.leroy", [pem(renewal)], now())
    assert renewal.not_valid_before_utc.strftime("%Y-%m-%d") in str(error.value)


def test_ec_certificate_is_unsupported(make_certificate: CertificateMaker) -> None:
    with pytest.raises(UnsupportedRecipientKey, match="EC") as error:
        recipient_certificate("paul.leroy", [make_certificate("Dr Paul Leroy")], now())
    assert "RSA" in str(error.value)


def test_valid_rsa_certificate_wins_over_an_ec_one(
    ca: CA, spare_key: rsa.RSAPrivateKey, make_certificate: CertificateMaker
) -> None:
    rsa_certificate = issue("TEST rsa", spare_key.public_key(), *ca, valid_to_days=5)
    chosen = recipient_certificate(
        "paul.leroy",
        [make_certificate("Dr Paul Leroy", valid_to_days=900), pem(rsa_certificate)],
        now(),
    )
    assert chosen == rsa_certificate
    assert isinstance(chosen.public_key(), rsa.RSAPublicKey)


def test_naive_datetime_is_a_programming_error(signer: Signer) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        recipient_certificate("x", [], datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        check_signer(signer, datetime(2026, 1, 1))
