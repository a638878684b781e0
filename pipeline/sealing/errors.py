"""Why an envelope could not be sealed, worded for the operator who must fix it.

Two families, because callers treat them differently: a problem with the laboratory's own
signing key stops every delivery (fix the configuration, then resume), while a problem with
one recipient's certificate parks that recipient's deliveries only (fix the directory
entry). Messages name the file or the recipient key and the dates involved, never key
material.
"""

from __future__ import annotations

from pipeline.errors import LabdispatchError


class SealingError(LabdispatchError):
    """An envelope cannot be built; the message says what to fix."""


# --- the laboratory's signing identity: blocks every delivery ------------------------------


class SigningKeyUnavailable(SealingError):
    """The signing key or certificate cannot be used: missing or unreadable file, not PEM or
    PKCS#12, wrong password, or a key that does not belong to the certificate."""


class SignerCertificateInvalid(SealingError):
    """The laboratory certificate (or one of its chain) is outside its validity dates, so
    recipients would reject every signature made with it."""


# --- one recipient's certificate: parks that recipient's deliveries -------------------------


class RecipientCertificateError(SealingError):
    """No usable certificate for one recipient; `recipient_key` names the directory entry."""

    def __init__(self, recipient_key: str, message: str) -> None:
        super().__init__(message)
        self.recipient_key = recipient_key


class RecipientCertificateMissing(RecipientCertificateError):
    """The directory holds no (readable) certificate for the recipient."""


class RecipientCertificateExpired(RecipientCertificateError):
    """Every certificate of the recipient has expired."""


class RecipientCertificateNotYetValid(RecipientCertificateError):
    """The recipient's only certificates become valid later (a renewal loaded early)."""


class UnsupportedRecipientKey(RecipientCertificateError):
    """The recipient's certificate holds a key we cannot encrypt for: cryptography's
    PKCS7EnvelopeBuilder does RSA key transport only (no EC key agreement)."""


# --- demo material ----------------------------------------------------------------------------


class DemoPkiError(SealingError):
    """The demo PKI cannot be written as asked (unsafe recipient name, unusable CA files)."""
