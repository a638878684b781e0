"""Sealing, checked from the recipient's side with the stock `openssl cms` binary: decrypt
with the recipient's key, verify against the demo CA alone, then read the MIME content."""

from __future__ import annotations

import base64
import email
import re
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pipeline.sealing.demo_pki import DemoPki
from pipeline.sealing.errors import SignerCertificateInvalid, UnsupportedRecipientKey
from pipeline.sealing.keys import Signer, load_signer
from pipeline.sealing.smime import EnvelopeHeaders, canonical_crlf, seal, sign, subject_for
from tests.pipeline.sealing.helpers import (
    PATIENT_AND_VALUES,
    attachments,
    content_of,
    decrypt,
    fixture_result,
    issue,
    open_envelope,
    openssl,
    pdf_bytes,
    read_one,
    result_with_pdf,
    verify,
)

BARE_LF = re.compile(rb"(?<!\r)\n")
BARE_CR = re.compile(rb"\r(?!\n)")
DATE = datetime(2026, 11, 28, 9, 31, 5, tzinfo=UTC)


def headers(subject: str = "Final laboratory result LBC-1 from LABO") -> EnvelopeHeaders:
    return EnvelopeHeaders(
        message_id="<lbc-1.sophie.martin.smtp@labdispatch.example>",
        from_address="Laboratoire Élise <resultats@labo-bio-centre.example>",
        to_address="sophie.martin@cabinet.example",
        subject=subject,
        disposition_notification_to="accuses@labo-bio-centre.example",
        date=DATE,
    )


@pytest.fixture(scope="module")
def utf8_envelope(signer: Signer, sophie_certificate: x509.Certificate) -> bytes:
    content = content_of(fixture_result("fr_prt_idnps_utf8.hl7"))
    return seal(content, signer, sophie_certificate, headers())


# --- round trips -------------------------------------------------------------------------------


def test_utf8_result_reaches_the_recipient_byte_for_byte(
    utf8_envelope: bytes, pki: DemoPki, sophie: tuple[Path, Path]
) -> None:
    result = fixture_result("fr_prt_idnps_utf8.hl7")
    message = open_envelope(utf8_envelope, *sophie, pki.ca_certificate)
    found = attachments(message)
    content_type, hl7 = found["LBC-2026-000101.hl7"]
    assert content_type == "application/hl7-v2"
    assert hl7 == result.data
    assert "Hélène".encode() in hl7  # the accented name, as the lab encoded it
    hl7_part = next(p for p in message.iter_attachments() if p.get_filename().endswith(".hl7"))
    assert hl7_part.get_param("charset") == "UTF-8"


def test_latin1_result_keeps_its_bytes_and_declares_its_charset(
    signer: Signer, sophie_certificate: x509.Certificate, pki: DemoPki, sophie: tuple[Path, Path]
) -> None:
    result = fixture_result("v23_local_codes_latin1.hl7")
    assert "Jos\xe9".encode("latin-1") in result.data
    envelope = seal(content_of(result), signer, sophie_certificate, headers())
    message = open_envelope(envelope, *sophie, pki.ca_certificate)
    hl7_part = next(p for p in message.iter_attachments() if p.get_filename() == "LS-000777.hl7")
    assert hl7_part.get_payload(decode=True) == result.data
    assert hl7_part.get_param("charset") == "ISO-8859-1"


def test_embedded_pdf_arrives_as_its_own_attachment_byte_for_byte(
    signer: Signer, sophie_certificate: x509.Certificate, pki: DemoPki, sophie: tuple[Path, Path]
) -> None:
    pdf = pdf_bytes(40_000)
    result = read_one(result_with_pdf(pdf))
    envelope = seal(content_of(result), signer, sophie_certificate, headers())
    found = attachments(open_envelope(envelope, *sophie, pki.ca_certificate))
    assert found["SEAL-PDF-1-1.pdf"] == ("application/pdf", pdf)
    assert found["SEAL-PDF-1.hl7"][1] == result.data


def test_content_with_bare_lf_is_signed_in_canonical_form(
    signer: Signer, sophie_certificate: x509.Certificate, pki: DemoPki, sophie: tuple[Path, Path]
) -> None:
    content = b"Content-Type: text/plain; charset=us-ascii\n\nline one\nline two\n"
    envelope = seal(content, signer, sophie_certificate, headers())
    decrypted = decrypt(envelope, *sophie)
    assert decrypted.returncode == 0, decrypted.stderr.decode()
    verified = verify(decrypted.stdout, pki.ca_certificate)
    assert verified.returncode == 0, verified.stderr.decode()
    assert verified.stdout == canonical_crlf(content)
    assert BARE_LF.search(decrypted.stdout) is None


def test_signer_chain_travels_with_the_signature(
    spare_key: rsa.RSAPrivateKey,
    sophie_certificate: x509.Certificate,
    sophie: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """A lab certificate issued by an intermediate CA verifies with the root alone."""
    root = x509.CertificateBuilder(
        issuer_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TEST root CA")]),
        subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TEST root CA")]),
        public_key=spare_key.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=datetime.now(UTC) - timedelta(days=1),
        not_valid_after=datetime.now(UTC) + timedelta(days=30),
        extensions=[],
    )
    root_certificate = (
        root.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(spare_key.public_key()), False)
        .sign(spare_key, hashes.SHA256())
    )
    intermediate_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    intermediate = issue(
        "TEST intermediate CA", intermediate_key.public_key(), root_certificate, spare_key, ca=True
    )
    lab_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    lab = issue("TEST lab", lab_key.public_key(), intermediate, intermediate_key)
    bundle = tmp_path / "lab-bundle.crt"
    bundle.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (lab, intermediate))
    )
    key_file = tmp_path / "lab.key"
    key_file.write_bytes(
        lab_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    root_file = tmp_path / "root.crt"
    root_file.write_bytes(root_certificate.public_bytes(serialization.Encoding.PEM))

    chained = load_signer(certificate=bundle, key=key_file)
    assert chained.chain == (intermediate,)
    envelope = seal(
        b"Content-Type: text/plain\r\n\r\nchained\r\n", chained, sophie_certificate, headers()
    )
    verified = verify(decrypt(envelope, *sophie).stdout, root_file)
    assert verified.returncode == 0, verified.stderr.decode()
    # Without the chain in the signature the root alone is not enough: this test can fail.
    unchained = Signer(lab, lab_key)
    envelope = seal(b"x\r\n", unchained, sophie_certificate, headers())
    assert verify(decrypt(envelope, *sophie).stdout, root_file).returncode != 0


# --- what is on the wire -----------------------------------------------------------------------


def test_envelope_is_aes_256_and_signature_sha_256(
    utf8_envelope: bytes, sophie: tuple[Path, Path]
) -> None:
    printed = openssl("cms", "-cmsout", "-print", data=utf8_envelope)
    assert printed.returncode == 0, printed.stderr.decode()
    assert b"aes-256-cbc" in printed.stdout
    assert b"rsaEncryption" in printed.stdout  # RSA key transport
    signed = decrypt(utf8_envelope, *sophie).stdout
    assert signed.startswith(b"Content-Type: multipart/signed;")
    assert b'protocol="application/pkcs7-signature"' in signed
    assert b"micalg=sha-256" in signed
    signature = openssl("cms", "-cmsout", "-print", data=signed)
    assert b"sha256" in signature.stdout
    assert b"CN=labdispatch demo laboratory (TEST)" in signature.stdout  # signer certificate


def test_output_has_crlf_line_ends_only(utf8_envelope: bytes, sophie: tuple[Path, Path]) -> None:
    assert BARE_LF.search(utf8_envelope) is None
    assert BARE_CR.search(utf8_envelope) is None
    assert max(len(line) for line in utf8_envelope.split(b"\r\n")) <= 78
    signed = decrypt(utf8_envelope, *sophie).stdout
    assert BARE_LF.search(signed) is None
    assert BARE_CR.search(signed) is None


def test_outer_headers_address_the_envelope(utf8_envelope: bytes) -> None:
    message = email.message_from_bytes(utf8_envelope, policy=policy.default)
    assert message["Message-ID"] == "<lbc-1.sophie.martin.smtp@labdispatch.example>"
    assert message["To"] == "sophie.martin@cabinet.example"
    assert message["From"] == "Laboratoire Élise <resultats@labo-bio-centre.example>"
    assert message["Disposition-Notification-To"] == "accuses@labo-bio-centre.example"
    assert message["Subject"] == "Final laboratory result LBC-1 from LABO"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime == DATE
    assert message.get_content_type() == "application/pkcs7-mime"
    assert message.get_param("smime-type") == "enveloped-data"
    assert b"smime-type=enveloped-data;" in utf8_envelope  # unquoted, as RFC 8551 writes it
    assert b"From: Laboratoire =?utf-8?" in utf8_envelope  # RFC 2047, not raw 8-bit


def test_non_ascii_subject_is_encoded_per_rfc_2047(
    signer: Signer, sophie_certificate: x509.Certificate
) -> None:
    subject = subject_for("Laboratoire Élise", "LBC-2", "corrected")
    envelope = seal(b"x\r\n", signer, sophie_certificate, headers(subject))
    head = envelope.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert email.message_from_bytes(envelope, policy=policy.default)["Subject"] == subject


def test_long_ascii_subject_is_folded_and_reads_back_whole(
    signer: Signer, sophie_certificate: x509.Certificate
) -> None:
    subject = subject_for("LABORATOIRE DE BIOLOGIE MEDICALE MULTISITE DU CENTRE", "A" * 30, "final")
    assert len("Subject: " + subject) > 78
    envelope = seal(b"x\r\n", signer, sophie_certificate, headers(subject))
    assert max(len(line) for line in envelope.split(b"\r\n")) <= 78
    assert email.message_from_bytes(envelope, policy=policy.default)["Subject"] == subject


def test_nothing_about_the_patient_travels_in_clear(utf8_envelope: bytes) -> None:
    text = utf8_envelope.decode("ascii")
    for value in PATIENT_AND_VALUES:
        assert value not in text


def test_subject_names_status_result_and_laboratory_only() -> None:
    assert subject_for("LABO-BIO-CENTRE", "LBC-2026-000101", "corrected") == (
        "Corrected laboratory result LBC-2026-000101 from LABO-BIO-CENTRE"
    )
    assert subject_for("LABO\nBIO", "X-1", "") == "Laboratory result X-1 from LABO BIO"


# --- tampering and the wrong key ---------------------------------------------------------------


def test_changed_signed_content_fails_verification(
    utf8_envelope: bytes, pki: DemoPki, sophie: tuple[Path, Path]
) -> None:
    signed = decrypt(utf8_envelope, *sophie).stdout
    assert verify(signed, pki.ca_certificate).returncode == 0
    # Swap one character of the HL7 attachment's base64 for another valid one.
    attachment = signed.index(b'filename="LBC-2026-000101.hl7"')
    position = signed.index(b"\r\n\r\n", attachment) + 10
    replacement = b"B" if signed[position : position + 1] == b"A" else b"A"
    tampered = signed[:position] + replacement + signed[position + 1 :]
    result = verify(tampered, pki.ca_certificate)
    assert result.returncode != 0
    assert b"Verification successful" not in result.stderr


def test_changed_envelope_does_not_open(
    utf8_envelope: bytes, pki: DemoPki, sophie: tuple[Path, Path]
) -> None:
    head, body = utf8_envelope.split(b"\r\n\r\n", 1)
    der = bytearray(base64.b64decode(body))
    der[len(der) // 2] ^= 0x01  # one bit inside the encrypted content
    tampered = head + b"\r\n\r\n" + base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")
    decrypted = decrypt(tampered, *sophie)
    if decrypted.returncode == 0:  # CBC may decrypt to garbage; the signature catches it
        assert verify(decrypted.stdout, pki.ca_certificate).returncode != 0


def test_another_recipients_key_cannot_decrypt(utf8_envelope: bytes, pki: DemoPki) -> None:
    decrypted = decrypt(utf8_envelope, *pki.recipients["paul.leroy"])
    assert decrypted.returncode != 0
    assert b"MSH|" not in decrypted.stdout


# --- refusals ----------------------------------------------------------------------------------


def test_expired_laboratory_certificate_is_refused_before_signing(
    signer: Signer,
    ca: tuple[x509.Certificate, rsa.RSAPrivateKey],
    spare_key: rsa.RSAPrivateKey,
    sophie_certificate: x509.Certificate,
) -> None:
    expired = issue(
        "TEST expired lab", spare_key.public_key(), *ca, valid_from_days=-60, valid_to_days=-1
    )
    with pytest.raises(SignerCertificateInvalid, match="expired on"):
        seal(b"x\r\n", Signer(expired, spare_key), sophie_certificate, headers())


def test_ec_recipient_certificate_is_refused(
    signer: Signer, ca: tuple[x509.Certificate, rsa.RSAPrivateKey]
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    certificate = issue("TEST EC recipient", ec_key.public_key(), *ca)
    with pytest.raises(UnsupportedRecipientKey, match="RSA"):
        seal(b"x\r\n", signer, certificate, headers())


def test_header_injection_through_the_subject_is_refused(
    signer: Signer, sophie_certificate: x509.Certificate
) -> None:
    with pytest.raises(ValueError):
        seal(b"x\r\n", signer, sophie_certificate, headers("Result\r\nBcc: someone@example.org"))


@pytest.mark.parametrize("message_id", ["lbc-1@labdispatch.example", "<no-domain>", "<a b@c>"])
def test_message_id_must_be_bracketed_id_at_domain(
    message_id: str, signer: Signer, sophie_certificate: x509.Certificate
) -> None:
    bad = EnvelopeHeaders(message_id, "a@b.example", "c@d.example", "s", None, DATE)
    with pytest.raises(ValueError, match="Message-ID"):
        seal(b"x\r\n", signer, sophie_certificate, bad)


def test_naive_date_is_refused(signer: Signer, sophie_certificate: x509.Certificate) -> None:
    bad = EnvelopeHeaders(
        "<a@b.example>", "a@b.example", "c@d.example", "s", None, datetime(2026, 1, 1)
    )
    with pytest.raises(ValueError, match="timezone"):
        seal(b"x\r\n", signer, sophie_certificate, bad)


def test_no_read_receipt_header_when_none_is_asked(
    signer: Signer, sophie_certificate: x509.Certificate
) -> None:
    plain = EnvelopeHeaders("<a@b.example>", "a@b.example", "c@d.example", "s", None, DATE)
    envelope = seal(b"x\r\n", signer, sophie_certificate, plain)
    assert b"Disposition-Notification-To" not in envelope


def test_signed_entity_embeds_the_content_unchanged(signer: Signer) -> None:
    content = b"Content-Type: text/plain\r\n\r\nexact bytes\r\n"
    signed = sign(content, signer)
    assert b"\r\n" + content + b"\r\n--" in signed
