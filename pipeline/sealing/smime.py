"""Sign as the laboratory, envelope for one recipient, and address the result: RFC 8551
S/MIME, ready for SMTP.

The layering is the one every S/MIME client reads, and `openssl cms` verifies:

    RFC 5322 headers + application/pkcs7-mime; smime-type=enveloped-data  (AES-256-CBC)
      └ multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256
          ├ the content entity (summary, HL7 file, documents), canonical CRLF
          └ detached CMS signature: SHA-256, signer certificate and chain included

Signing comes first so the signature survives decryption and can be kept as proof of what
the laboratory sent; the signature is detached (multipart/signed) so a client without the
laboratory's CA can still show the content. We build the MIME around cryptography's DER
output ourselves instead of using its S/MIME serialisers: the enveloped one writes bare LF
line ends (SMTP needs CRLF), the signed one the pre-RFC 5751 `application/x-pkcs7-signature`
type, and every byte of the signed part must be exactly what was signed.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.utils import format_datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from pipeline.sealing.content import CRLF, base64_lines, one_line
from pipeline.sealing.errors import UnsupportedRecipientKey
from pipeline.sealing.keys import Signer, check_signer

#: For the outer headers whose values come from outside (From, To, Subject): CRLF line
#: ends, RFC 2047 for non-ASCII, lines folded at 78, CR/LF in a value refused.
MIME_POLICY = policy.SMTP
_LINE_END = re.compile(rb"\r\n|\r|\n")
_MESSAGE_ID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_ENVELOPE_MIME_HEADERS = (
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=smime.p7m\r\n"
)


@dataclass(frozen=True)
class EnvelopeHeaders:
    """The outer RFC 5322 headers: the only part of an envelope readable in transit, so
    they carry routing and a subject without patient data (see `subject_for`)."""

    message_id: str  # with its angle brackets; stable per delivery so receivers de-duplicate
    from_address: str  # the laboratory's sending address, optionally "Name <addr>"
    to_address: str
    subject: str
    disposition_notification_to: str | None  # where read receipts (MDN) go; None for none
    date: datetime  # timezone-aware


def seal(
    content: bytes, signer: Signer, recipient: x509.Certificate, headers: EnvelopeHeaders
) -> bytes:
    """The whole message for one recipient: signed `content`, enveloped for `recipient`,
    behind `headers`. CRLF line ends only.

    `recipient` is the certificate `keys.recipient_certificate` chose; the signer is
    checked here too, because an envelope signed with an expired certificate fails only at
    the far end, silently.
    """
    check_signer(signer, datetime.now(UTC))
    return envelope(sign(content, signer), recipient, headers)


def envelope(signed: bytes, recipient: x509.Certificate, headers: EnvelopeHeaders) -> bytes:
    """A signed entity (`sign`) enveloped for one recipient behind `headers`.

    The signature covers the content only, never the outer headers, so one signature
    serves every recipient of a result: signing (an RSA private-key operation) is paid once
    per result, enveloping (a public-key one, ~10 times cheaper) once per recipient."""
    return outer_headers(headers) + base64_lines(encrypt(signed, recipient))


def sign(content: bytes, signer: Signer) -> bytes:
    """`content` in canonical form (CRLF), wrapped in multipart/signed with a detached
    SHA-256 CMS signature carrying the signer's certificate and chain."""
    canonical = canonical_crlf(content)
    # Order matters: cryptography 50's `set_data` and `add_signer` return a builder that
    # forgets certificates added before them, so the chain goes in last.
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(canonical)
        .add_signer(signer.certificate, signer.private_key, hashes.SHA256())
    )
    for certificate in signer.chain:
        builder = builder.add_certificate(certificate)
    signature = builder.sign(
        serialization.Encoding.DER,
        # Binary: the data is canonical already; translating it again would sign other bytes.
        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
    )
    boundary = _boundary(canonical)
    return b"".join(
        [
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";',
            CRLF,
            b' micalg=sha-256; boundary="' + boundary + b'"',
            CRLF,
            CRLF,
            b"This is an S/MIME signed message.",
            CRLF,
            CRLF,
            b"--" + boundary,
            CRLF,
            canonical,
            CRLF,
            b"--" + boundary,
            CRLF,
            b'Content-Type: application/pkcs7-signature; name="smime.p7s"',
            CRLF,
            b"Content-Transfer-Encoding: base64",
            CRLF,
            b'Content-Disposition: attachment; filename="smime.p7s"',
            CRLF,
            CRLF,
            base64_lines(signature),
            b"--" + boundary + b"--",
            CRLF,
        ]
    )


def encrypt(entity: bytes, recipient: x509.Certificate) -> bytes:
    """`entity` as CMS EnvelopedData (DER) for `recipient`: AES-256-CBC content key,
    RSA PKCS#1 v1.5 key transport (the only one cryptography offers)."""
    try:
        builder = pkcs7.PKCS7EnvelopeBuilder().add_recipient(recipient)
    except TypeError:
        # `keys.recipient_certificate` refuses these with the recipient's key; here only
        # the certificate is known, so its subject stands in for the key.
        subject = recipient.subject.rfc4514_string()
        raise UnsupportedRecipientKey(
            subject,
            f"the recipient certificate {subject} has no RSA key; envelopes can only be"
            " made for RSA keys",
        ) from None
    return (
        builder.set_data(entity)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


def outer_headers(headers: EnvelopeHeaders) -> bytes:
    """The RFC 5322 header block of the envelope, blank line included.

    Plain ASCII values that fit on one line are written as they are; anything else goes
    through the email package, which encodes non-ASCII (RFC 2047, display names only),
    folds long lines and refuses CR/LF, so no header can be injected through a subject or
    a name. (The package costs ~40 us a header, most of a small envelope's overhead.)
    """
    if not _MESSAGE_ID.fullmatch(headers.message_id):
        raise ValueError(f"Message-ID must look like <id@domain>, got {headers.message_id!r}")
    if headers.date.tzinfo is None:
        raise ValueError("the Date header needs a timezone-aware datetime")
    fields = [
        ("Message-ID", headers.message_id),
        ("Date", format_datetime(headers.date)),
        ("From", headers.from_address),
        ("To", headers.to_address),
        ("Subject", headers.subject),
    ]
    if headers.disposition_notification_to:
        fields.append(("Disposition-Notification-To", headers.disposition_notification_to))
    # The MIME headers are written as RFC 8551 shows them: the email package would quote
    # smime-type's value, which is equivalent but trips clients that match it literally.
    return b"".join(_header(name, value) for name, value in fields) + _ENVELOPE_MIME_HEADERS + CRLF


def _header(name: str, value: str) -> bytes:
    if value.isascii() and value.isprintable() and len(name) + 2 + len(value) <= 78:
        return f"{name}: {value}".encode("ascii") + CRLF
    return MIME_POLICY.fold_binary(*MIME_POLICY.header_store_parse(name, value))


def subject_for(lab: str, control_id: str, status: str) -> str:
    """A subject a clinician can sort by, readable in transit, so without patient data:
    "Corrected laboratory result LBC-2026-000101 from LABO-BIO-CENTRE"."""
    lab, control_id, status = one_line(lab), one_line(control_id), one_line(status)
    head = f"{status.capitalize()} laboratory result" if status else "Laboratory result"
    return f"{head} {control_id} from {lab or 'the laboratory'}"


def canonical_crlf(data: bytes) -> bytes:
    """Every line end as CRLF (RFC 8551 canonical form), whatever the input used."""
    if data.count(b"\n") == data.count(CRLF) == data.count(b"\r"):
        return data  # already canonical, as `build_content` writes it: skip the regex pass
    return _LINE_END.sub(CRLF, data)


def _boundary(content: bytes) -> bytes:
    while True:
        boundary = b"----=_labdispatch_" + secrets.token_hex(12).encode("ascii")
        if boundary not in content:
            return boundary


def sealed_for(envelope: bytes, certificate: x509.Certificate) -> bool:
    """Is `envelope` (S/MIME enveloped-data, as `pipeline.sealing.smime.envelope` writes
    it) encrypted for `certificate`?

    CMS names each recipient by IssuerAndSerialNumber: the DER of the certificate's issuer
    Name followed by its serial number INTEGER. Those bytes, in that order, appear in the
    EnvelopedData exactly when it was made for that certificate (or one with the same
    issuer and serial, which a CA never issues twice)."""
    _, separator, body = envelope.partition(b"\r\n\r\n")
    if not separator:
        return False
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return certificate.issuer.public_bytes() + _der_integer(certificate.serial_number) in der


def _der_integer(value: int) -> bytes:
    """A non-negative INTEGER in DER: minimal big-endian two's complement, short length."""
    content = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return b"\x02" + bytes([len(content)]) + content
