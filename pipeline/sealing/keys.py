"""The keys an envelope needs: the laboratory's signing identity and one recipient's
certificate.

The signing key is loaded once per process (PEM certificate and key, or a PKCS#12 file, the
two forms labs receive from their certificate authority) and checked before any work, so a
wrong password or an expired certificate stops the sealing stage with one clear message
rather than failing every delivery in turn. A recipient may have several certificates on
file (a renewal overlaps the old one): we pick the valid one that lasts longest, and when
none fits we say precisely why, so the directory can be fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from pipeline.sealing.errors import (
    RecipientCertificateExpired,
    RecipientCertificateMissing,
    RecipientCertificateNotYetValid,
    SignerCertificateInvalid,
    SigningKeyUnavailable,
    UnsupportedRecipientKey,
)

#: The key types cryptography's PKCS7SignatureBuilder can sign with.
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Signer:
    """The laboratory's signing identity: certificate, its private key, and the intermediate
    certificates a recipient needs to chain it to the CA they trust."""

    certificate: x509.Certificate
    private_key: SigningKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()


def load_signer(
    *,
    certificate: Path | None = None,
    key: Path | None = None,
    pkcs12: Path | None = None,
    password: bytes | None = None,
) -> Signer:
    """Read the signing identity from PEM files (`certificate`, which may be a bundle with
    the chain after the laboratory's own certificate, and `key`) or from one PKCS#12 file.

    `password` opens the PKCS#12 file or an encrypted PEM key. Raises
    `SigningKeyUnavailable` naming the file when anything is unusable.
    """
    if pkcs12 is not None:
        if certificate is not None or key is not None:
            raise SigningKeyUnavailable(
                "give either a PKCS#12 file or a PEM certificate and key, not both"
            )
        return _load_pkcs12(pkcs12, password)
    if certificate is None or key is None:
        raise SigningKeyUnavailable(
            "the laboratory signing identity needs both a PEM certificate and its private"
            " key (or one PKCS#12 file)"
        )
    certificates = _read_pem_certificates(certificate)
    private_key = _read_pem_key(key, password)
    # Bundles come in either order (leaf first, or CA first): the key says which is ours.
    ours = _public_key_bytes(private_key.public_key())
    for index, candidate in enumerate(certificates):
        if _public_key_bytes(candidate.public_key()) == ours:
            chain = tuple(certificates[:index] + certificates[index + 1 :])
            return Signer(candidate, private_key, chain)
    raise SigningKeyUnavailable(
        f"the key in {key} does not belong to the certificate in {certificate}"
        + (f" (nor to any of the {len(certificates)} in the file)" if len(certificates) > 1 else "")
    )


def check_signer(signer: Signer, at: datetime) -> None:
    """Refuse a laboratory certificate (or chain certificate) outside its validity at `at`:
    recipients would reject every signature it makes."""
    _require_aware(at)
    for role, certificate in [("laboratory", signer.certificate)] + [
        ("chain", chain_certificate) for chain_certificate in signer.chain
    ]:
        not_before = certificate.not_valid_before_utc
        not_after = certificate.not_valid_after_utc
        subject = certificate.subject.rfc4514_string()
        if at < not_before:
            raise SignerCertificateInvalid(
                f"the {role} certificate {subject} is not valid before {_day(not_before)}"
                f" (valid {_day(not_before)} to {_day(not_after)}); install the current"
                " certificate or check the system clock"
            )
        if at > not_after:
            raise SignerCertificateInvalid(
                f"the {role} certificate {subject} expired on {_day(not_after)}"
                f" (valid {_day(not_before)} to {_day(not_after)}); install the renewed"
                " certificate and key"
            )


def recipient_certificate(
    recipient_key: str, candidates: Sequence[bytes | str], at: datetime
) -> x509.Certificate:
    """The certificate to encrypt for: among the recipient's PEM certificates, the RSA one
    valid at `at` with the latest expiry. Otherwise the error that says what to fix."""
    _require_aware(at)
    certificates: list[x509.Certificate] = []
    unreadable = 0
    for candidate in candidates:
        data = candidate.encode("ascii", "replace") if isinstance(candidate, str) else candidate
        try:
            certificates.extend(x509.load_pem_x509_certificates(data))
        except ValueError:
            unreadable += 1
    if not certificates:
        note = f" ({unreadable} unreadable certificate(s) ignored)" if unreadable else ""
        raise RecipientCertificateMissing(
            recipient_key,
            f"recipient {recipient_key} has no certificate{note}: add their encryption"
            " certificate to the directory",
        )

    current = [c for c in certificates if c.not_valid_before_utc <= at <= c.not_valid_after_utc]
    usable = [c for c in current if isinstance(c.public_key(), rsa.RSAPublicKey)]
    if usable:
        return max(usable, key=lambda c: c.not_valid_after_utc)
    if current:
        kinds = ", ".join(sorted({_key_kind(c) for c in current}))
        raise UnsupportedRecipientKey(
            recipient_key,
            f"recipient {recipient_key}'s valid certificate has a key of type {kinds};"
            " envelopes can only be made for RSA keys: ask for an RSA encryption"
            " certificate",
        )
    future = [c for c in certificates if c.not_valid_before_utc > at]
    if future:
        first = min(future, key=lambda c: c.not_valid_before_utc)
        raise RecipientCertificateNotYetValid(
            recipient_key,
            f"recipient {recipient_key}'s certificate is not valid before"
            f" {_day(first.not_valid_before_utc)}: add their current certificate",
        )
    latest = max(certificates, key=lambda c: c.not_valid_after_utc)
    raise RecipientCertificateExpired(
        recipient_key,
        f"every certificate of recipient {recipient_key} has expired (the latest on"
        f" {_day(latest.not_valid_after_utc)}): add their renewed certificate",
    )


# --- reading files ---------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyUnavailable(f"{what} {path} does not exist") from None
    except OSError as error:
        raise SigningKeyUnavailable(
            f"{what} {path} cannot be read: {error.strerror or error}"
        ) from None


def _read_pem_certificates(path: Path) -> list[x509.Certificate]:
    data = _read(path, "the laboratory certificate file")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SigningKeyUnavailable(
            f"{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        ) from None
    return certificates


def _read_pem_key(path: Path, password: bytes | None) -> SigningKey:
    data = _read(path, "the laboratory key file")
    try:
        private_key = serialization.load_pem_private_key(data, password)
    except TypeError:
        # cryptography says TypeError for "encrypted but no password" and the reverse.
        if password is None:
            raise SigningKeyUnavailable(
                f"the key in {path} is encrypted: give its password"
            ) from None
        raise SigningKeyUnavailable(
            f"the key in {path} is not encrypted, but a password was given"
        ) from None
    except ValueError:
        hint = "the password is wrong, or " if password is not None else ""
        raise SigningKeyUnavailable(
            f"the key in {path} cannot be read: {hint}it is not a PEM private key"
        ) from None
    except UnsupportedAlgorithm:
        raise SigningKeyUnavailable(f"the key in {path} uses an unsupported algorithm") from None
    return _signing_key(private_key, str(path))


def _load_pkcs12(path: Path, password: bytes | None) -> Signer:
    data = _read(path, "the laboratory PKCS#12 file")
    try:
        private_key, certificate, additional = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        hint = "no password was given" if password is None else "the password is wrong"
        raise SigningKeyUnavailable(
            f"{path} cannot be opened: {hint}, or it is not a PKCS#12 (.p12 / .pfx) file"
        ) from None
    if private_key is None or certificate is None:
        missing = "private key" if private_key is None else "certificate"
        raise SigningKeyUnavailable(f"{path} holds no {missing}; export it with both")
    chain = tuple(c for c in additional if c != certificate)
    signer = Signer(certificate, _signing_key(private_key, str(path)), chain)
    _check_key_matches(signer, f"the key in {path} does not belong to its certificate")
    return signer


def _signing_key(private_key: object, source: str) -> SigningKey:
    if isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return private_key
    kind = type(private_key).__name__.removeprefix("_").removesuffix("PrivateKey")
    raise SigningKeyUnavailable(
        f"the key in {source} is of type {kind}, which cannot sign S/MIME here:"
        " use an RSA or EC key"
    )


def _check_key_matches(signer: Signer, message: str) -> None:
    certificate_key = _public_key_bytes(signer.certificate.public_key())
    if certificate_key != _public_key_bytes(signer.private_key.public_key()):
        raise SigningKeyUnavailable(message)


def _public_key_bytes(key: object) -> bytes:
    """SubjectPublicKeyInfo DER, to compare keys of any type; b"" when not RSA or EC."""
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- small helpers ---------------------------------------------------------------------------


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None:
        raise ValueError("certificate checks need a timezone-aware datetime (UTC)")


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _key_kind(certificate: x509.Certificate) -> str:
    key = certificate.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC ({key.curve.name})"
    return type(key).__name__.removeprefix("_").removesuffix("PublicKey") or "unknown"
