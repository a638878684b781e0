"""What the delivery steps are given: signers per laboratory, transports per channel kind."""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from pipeline.db import open_database
from pipeline.delivery.intake import accept_bytes
from pipeline.delivery.services import DeliveryServices, SignerRegistry, transport_factories
from pipeline.errors import ConfigurationError
from pipeline.ledger.models import Delivery
from pipeline.ledger.storage import StorageKeyMissing
from pipeline.sealing.demo_pki import DemoPki, create_demo_pki
from pipeline.sealing.errors import SigningKeyUnavailable
from pipeline.settings import Settings, SigningSettings, SmtpSettings
from pipeline.transports.base import TransportConfigurationError
from pipeline.transports.mailbox import MailboxTransport
from pipeline.transports.smtp import SmtpTransport
from tests.pipeline.delivery.conftest import ADAM, ADAM_XCN, sealed
from tests.pipeline.delivery.scenario import LAB, oru
from tests.pipeline.sealing.helpers import decrypt, openssl


def pkcs12(pki: DemoPki, path: Path, password: str) -> Path:
    """A .p12 made by stock openssl, as a laboratory's IT would export one."""
    done = subprocess.run(
        ["openssl", "pkcs12", "-export", "-in", str(pki.lab_certificate), "-inkey",
         str(pki.lab_key), "-out", str(path), "-passout", f"pass:{password}"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return path


def test_the_default_pem_signer_signs_for_every_laboratory(pki: DemoPki) -> None:
    registry = SignerRegistry(SigningSettings(certificate=pki.lab_certificate, key=pki.lab_key))

    signer = registry.for_laboratory("LABO-TEST")

    assert signer.certificate.subject.rfc4514_string().startswith("CN=labdispatch demo")
    assert registry.for_laboratory("LABO-TEST") is signer  # loaded once


def test_a_laboratory_file_in_the_signing_directory_wins_over_the_default(
    pki: DemoPki, tmp_path: Path
) -> None:
    folder = tmp_path / "signers"
    folder.mkdir()
    pkcs12(pki, folder / "LABO-NORD.p12", "s3cret")
    (tmp_path / "password").write_text("s3cret\n")
    registry = SignerRegistry(
        SigningSettings(directory=folder, password_file=tmp_path / "password")
    )

    assert registry.for_laboratory("LABO-NORD").private_key is not None
    with pytest.raises(SigningKeyUnavailable, match="no signing key for laboratory LABO-SUD"):
        registry.for_laboratory("LABO-SUD")


def test_a_wrong_pkcs12_password_is_a_specific_error_without_the_password(
    pki: DemoPki, tmp_path: Path
) -> None:
    path = pkcs12(pki, tmp_path / "lab.p12", "right-one")
    (tmp_path / "password").write_text("wrong-one")
    registry = SignerRegistry(SigningSettings(pkcs12=path, password_file=tmp_path / "password"))

    with pytest.raises(SigningKeyUnavailable) as caught:
        registry.for_laboratory("LABO-TEST")
    assert "wrong-one" not in str(caught.value) and "right-one" not in str(caught.value)


def test_mail_without_a_relay_goes_to_the_outbox_and_with_one_to_smtp(tmp_path: Path) -> None:
    embedded = Settings(var_dir=tmp_path / "var", database_url="sqlite://")
    relayed = Settings(
        var_dir=tmp_path / "var", database_url="sqlite://", smtp=SmtpSettings(host="relay.test")
    )

    outbox = transport_factories(embedded)["mail"]()
    smtp = transport_factories(relayed)["mail"]()

    assert isinstance(outbox, MailboxTransport)
    assert outbox.destination("anyone@example.org") == f"maildir:{tmp_path / 'var' / 'outbox'}"
    assert isinstance(smtp, SmtpTransport)
    assert smtp.destination("anyone@example.org") == "smtp://relay.test:25"


def test_https_without_a_client_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", database_url="sqlite://")

    with pytest.raises(TransportConfigurationError, match="LABDISPATCH_HTTPS_CLIENT_CERT"):
        transport_factories(settings)["https"]()


def test_services_from_settings_create_the_embedded_storage_key_once(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", database_url="sqlite://")

    first = DeliveryServices.from_settings(settings)
    second = DeliveryServices.from_settings(settings)

    assert (tmp_path / "var" / "storage.key").is_file()
    assert first.cipher.current == second.cipher.current
    assert first.mail_domain == "labdispatch.localhost"


def test_a_named_storage_key_file_that_is_missing_is_not_invented(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        database_url="sqlite://",
        storage_key_file=tmp_path / "etc" / "storage.key",
    )

    with pytest.raises(ConfigurationError, match="cannot read the storage key file"):
        DeliveryServices.from_settings(settings)
    assert not (tmp_path / "etc").exists()


def test_beside_postgresql_the_storage_key_must_be_named(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path / "var", database_url="postgresql+psycopg://ledger.example/labdispatch"
    )

    with pytest.raises(ConfigurationError, match="LABDISPATCH_STORAGE_KEY_FILE must name"):
        DeliveryServices.from_settings(settings)
    assert not (tmp_path / "var" / "storage.key").exists()


def signer_of(envelope: bytes | None, recipient: tuple[Path, Path], folder: Path) -> bytes:
    """The certificate that signed an envelope, as its recipient reads it from the CMS
    signer info (`openssl cms -verify -signer`), in DER."""
    assert envelope is not None
    opened = decrypt(envelope, *recipient)
    assert opened.returncode == 0, opened.stderr.decode()
    out = folder / f"signer-{len(list(folder.iterdir()))}.pem"
    read = openssl("cms", "-verify", "-noverify", "-signer", out, data=opened.stdout)
    assert read.returncode == 0, read.stderr.decode()
    (certificate,) = x509.load_pem_x509_certificates(out.read_bytes())
    return certificate.public_bytes(serialization.Encoding.DER)


def der(path: Path) -> bytes:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.public_bytes(serialization.Encoding.DER)


def test_each_laboratory_signs_with_its_own_key_and_the_default_key_for_the_others(
    ledger: sessionmaker[Session], services: DeliveryServices, pki: DemoPki, tmp_path: Path
) -> None:
    """Both a default signing key and LABO-NORD's own are configured: LABO-NORD's results are
    signed with its own certificate, LABO-TEST's (no file of its own) with the default."""
    nord = create_demo_pki(tmp_path / "nord-pki", {}, laboratory="labo nord")
    folder = tmp_path / "signers"
    folder.mkdir()
    shutil.copy(nord.lab_certificate, folder / "LABO-NORD.crt")
    shutil.copy(nord.lab_key, folder / "LABO-NORD.key")
    services.signers = SignerRegistry(
        SigningSettings(certificate=pki.lab_certificate, key=pki.lab_key, directory=folder)
    )
    own = oru("SIGN-NORD", ordering=ADAM_XCN, copy_to="").replace(
        f"|{LAB}|".encode(), b"|LABO-NORD|", 1
    )
    default = oru("SIGN-TEST", ordering=ADAM_XCN, copy_to="")

    sealed(ledger, services, own, default)

    with ledger() as session:
        envelopes = {
            d.message.laboratory: d.envelope
            for d in session.scalars(select(Delivery).options(selectinload(Delivery.message)))
        }
    signers = tmp_path / "read"
    signers.mkdir()
    adam = pki.recipients[ADAM]
    assert signer_of(envelopes["LABO-NORD"], adam, signers) == der(nord.lab_certificate)
    assert signer_of(envelopes[LAB], adam, signers) == der(pki.lab_certificate)
    assert der(nord.lab_certificate) != der(pki.lab_certificate)


def test_no_storage_key_is_made_up_over_a_ledger_that_holds_results(settings: Settings) -> None:
    """The embedded ledger copied without `storage.key`: refused, naming the key id of the
    rows, and no new key written; with the key back it starts."""
    sessions = open_database(settings)
    if not settings.uses_embedded_database:  # beside PostgreSQL the key file is named
        settings = replace(settings, storage_key_file=settings.var_dir / "named.key")
        settings.ensure_var_dir()
        settings.storage_key_path.write_text(base64.b64encode(b"o" * 32).decode() + "\n")
    original = DeliveryServices.from_settings(settings)
    with sessions.begin() as session:
        (answer,) = accept_bytes(session, oru("KEYS-1"), original, source="t")
        assert answer.recorded is not None
    key_file = settings.storage_key_path
    saved = key_file.read_bytes()
    key_file.unlink()

    if settings.uses_embedded_database:
        with pytest.raises(StorageKeyMissing, match=f"storage key id {original.cipher.current}, "):
            DeliveryServices.from_settings(settings)
        assert not key_file.exists()
    # Another key in its place (replaced rather than rotated): refused too.
    key_file.write_text(base64.b64encode(b"n" * 32).decode() + "\n")
    with pytest.raises(StorageKeyMissing, match=f"storage key id {original.cipher.current}, "):
        DeliveryServices.from_settings(settings)
    # Rotated: the new key first, the old one kept after it.
    key_file.write_bytes(base64.b64encode(b"n" * 32) + b"\n" + saved)
    assert DeliveryServices.from_settings(settings).cipher.current != original.cipher.current
