"""The demo PKI: real-looking S/MIME certificates, plainly marked as test material."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.sealing.demo_pki import DemoPki, create_demo_pki
from pipeline.sealing.errors import DemoPkiError
from tests.pipeline.sealing.conftest import RECIPIENTS
from tests.pipeline.sealing.helpers import openssl

KEY_FILES = ("ca.key", "lab.key", "sophie.martin.key", "paul.leroy.key")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_file_is_written_and_reported_as_created(pki: DemoPki) -> None:
    names = {path.name for path in pki.directory.iterdir()}
    expected = {"ca.crt", "lab.crt", "sophie.martin.crt", "paul.leroy.crt", "README.txt"}
    assert names == expected | set(KEY_FILES)
    assert set(pki.created) == names
    assert pki.kept == ()
    assert pki.recipients["sophie.martin"] == (
        pki.directory / "sophie.martin.crt",
        pki.directory / "sophie.martin.key",
    )
    assert "TEST MATERIAL, NOT FOR PRODUCTION" in (pki.directory / "README.txt").read_text()


def test_private_keys_are_readable_by_the_owner_only(pki: DemoPki) -> None:
    for name in KEY_FILES:
        assert stat.S_IMODE((pki.directory / name).stat().st_mode) == 0o600, name


def test_every_certificate_says_test(pki: DemoPki) -> None:
    for path in pki.directory.glob("*.crt"):
        subject = load(path).subject
        [organization] = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        assert organization.value == "labdispatch TEST PKI", path.name
        [common_name] = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert "TEST" in str(common_name.value), path.name


def test_openssl_verifies_the_lab_and_recipients_against_the_ca(pki: DemoPki) -> None:
    lab = openssl(
        "verify", "-CAfile", pki.ca_certificate, "-purpose", "smimesign", pki.lab_certificate
    )
    assert lab.returncode == 0, lab.stderr.decode()
    assert lab.stdout.strip().endswith(b": OK")
    for certificate, _ in pki.recipients.values():
        checked = openssl(
            "verify", "-CAfile", pki.ca_certificate, "-purpose", "smimeencrypt", certificate
        )
        assert checked.returncode == 0, checked.stderr.decode()


def test_openssl_rejects_a_certificate_from_another_ca(pki: DemoPki, tmp_path: Path) -> None:
    other = create_demo_pki(tmp_path / "other", {})
    checked = openssl("verify", "-CAfile", other.ca_certificate, pki.lab_certificate)
    assert checked.returncode != 0


def test_extensions_fit_each_role(pki: DemoPki) -> None:
    ca = load(pki.ca_certificate)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    lab = load(pki.lab_certificate)
    usage = lab.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment
    assert not lab.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = lab.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in eku

    sophie = load(pki.recipients["sophie.martin"][0])
    usage = sophie.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment and usage.digital_signature
    names = sophie.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.RFC822Name) == [RECIPIENTS["sophie.martin"]]

    paul = load(pki.recipients["paul.leroy"][0])
    with pytest.raises(x509.ExtensionNotFound):
        paul.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_rerun_keeps_the_ca_and_adds_only_the_missing_recipient(
    pki: DemoPki, tmp_path: Path
) -> None:
    folder = tmp_path / "pki"
    shutil.copytree(pki.directory, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    again = create_demo_pki(folder, {**RECIPIENTS, "claire.durand": "claire.durand@example.org"})

    assert set(again.created) == {"claire.durand.crt", "claire.durand.key"}
    assert set(again.kept) == set(before)
    for name, data in before.items():
        assert (folder / name).read_bytes() == data, name
    new = openssl("verify", "-CAfile", folder / "ca.crt", folder / "claire.durand.crt")
    assert new.returncode == 0, new.stderr.decode()
    assert stat.S_IMODE((folder / "claire.durand.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "ca", "LAB", "x y", "é"])
def test_unsafe_recipient_names_are_refused_before_writing(name: str, tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    with pytest.raises(DemoPkiError, match="cannot name a certificate file"):
        create_demo_pki(folder, {name: None})
    assert not folder.exists()


def test_ca_certificate_without_its_key_is_refused(pki: DemoPki, tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    folder.mkdir()
    shutil.copy(pki.ca_certificate, folder / "ca.crt")
    with pytest.raises(DemoPkiError, match=r"ca\.key is missing"):
        create_demo_pki(folder, {})
    assert sorted(path.name for path in folder.iterdir()) == ["ca.crt"]


@pytest.mark.parametrize("address", ["sophie martin@example.org", "élise@example.org", "nobody"])
def test_unusable_mail_address_is_refused_before_writing(address: str, tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    with pytest.raises(DemoPkiError, match="cannot go in a certificate"):
        create_demo_pki(folder, {"sophie.martin": address})
    assert not folder.exists()


def test_long_laboratory_name_still_says_test(tmp_path: Path) -> None:
    pki = create_demo_pki(tmp_path / "pki", {}, laboratory="Laboratoire " * 10)
    [common_name] = load(pki.lab_certificate).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert str(common_name.value).endswith("(TEST)")
    assert len(str(common_name.value)) <= 64
