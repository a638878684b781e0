"""What the sealing tests share: test HL7 results, certificates on demand, and the real
`openssl` binary as the recipient's side of every round trip."""

from __future__ import annotations

import base64
import email
import random
import subprocess
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.hl7.documents import extract_documents, message_charset
from pipeline.hl7.intake import IntakeResult, read_results
from pipeline.sealing.content import ResultSummary, build_content
from tests.pipeline.hl7.builders import seg

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"

#: What the fixture fr_prt_idnps_utf8.hl7 says about its patient and results: none of it
#: may appear in clear anywhere outside the HL7 attachment.
PATIENT_AND_VALUES = (
    "DUPONT",
    "Hélène",
    "248125612345678",
    "19481215",
    "Sodium",
    "Potassium",
    "141",
    "5.9",
    "mmol",
    "3.5-5.1",
)


# --- HL7 results -------------------------------------------------------------------------------


def read_one(data: bytes) -> IntakeResult:
    [result] = list(read_results(data))
    assert result.ok, result.error
    return result


def fixture_result(name: str) -> IntakeResult:
    return read_one((FIXTURES / name).read_bytes())


def pdf_bytes(size: int, seed: int = 7) -> bytes:
    """PDF-looking binary: every byte value occurs, as in a compressed PDF stream."""
    body = random.Random(seed).randbytes(size)
    return b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + body + b"\n%%EOF\n"


def result_with_pdf(pdf: bytes, control_id: str = "SEAL-PDF-1") -> bytes:
    """A UTF-8 ORU^R01 carrying `pdf` as Base64 wrapped at 76 columns, each break written
    as the HL7 escape \\.br\\, the way many LIS export a report."""
    encoded = base64.encodebytes(pdf).decode("ascii").rstrip("\n").replace("\n", "\\.br\\")
    segments = [
        "MSH|^~\\&|SIL-DEMO|LABO-BIO-CENTRE|LABDISPATCH|LABDISPATCH|20261128093000||"
        f"ORU^R01^ORU_R01|{control_id}|P|2.5|||||FRA|UNICODE UTF-8",
        seg("PID", {3: "248125612345678^^^INS-NIR^INS", 5: "DUPONT^Hélène", 7: "19481215"}),
        seg("OBR", {1: "1", 2: "CMD-1", 3: "LAB-1", 4: "24326-1^Ionogramme^LN", 25: "F"}),
        seg("OBX", {1: "1", 2: "NM", 3: "2951-2^Sodium^LN", 5: "141", 6: "mmol/L", 11: "F"}),
        seg(
            "OBX",
            {
                1: "2",
                2: "ED",
                3: "11502-2^CR d'examens biologiques^LN",
                5: f"^APPLICATION^PDF^Base64^{encoded}",
                11: "F",
            },
        ),
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def content_of(result: IntakeResult) -> bytes:
    """The content entity the pipeline would sign for this result."""
    assert result.message is not None and result.facts is not None
    return build_content(
        result.data,
        message_charset(result.message),
        result.facts.control_id,
        ResultSummary.from_facts(result.facts),
        extract_documents(result.message),
    )


# --- certificates ------------------------------------------------------------------------------


def issue(
    common_name: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    issuer: x509.Certificate,
    issuer_key: rsa.RSAPrivateKey,
    *,
    valid_from_days: float = -1,
    valid_to_days: float = 30,
    ca: bool = False,
) -> x509.Certificate:
    """A certificate signed by `issuer`, valid over the given days relative to now."""
    now = datetime.now(UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labdispatch TEST PKI"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=valid_from_days))
        .not_valid_after(now + timedelta(days=valid_to_days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


# --- the recipient's side: stock openssl -------------------------------------------------------


def openssl(*args: str | Path, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", *map(str, args)], input=data, capture_output=True, check=False, timeout=60
    )


def decrypt(envelope: bytes, certificate: Path, key: Path) -> subprocess.CompletedProcess[bytes]:
    return openssl("cms", "-decrypt", "-recip", certificate, "-inkey", key, data=envelope)


def verify(signed: bytes, ca_file: Path) -> subprocess.CompletedProcess[bytes]:
    return openssl("cms", "-verify", "-CAfile", ca_file, data=signed)


def open_envelope(envelope: bytes, certificate: Path, key: Path, ca_file: Path) -> EmailMessage:
    """Decrypt and verify as a recipient would; the verified content as a MIME message."""
    decrypted = decrypt(envelope, certificate, key)
    assert decrypted.returncode == 0, decrypted.stderr.decode()
    verified = verify(decrypted.stdout, ca_file)
    assert verified.returncode == 0, verified.stderr.decode()
    assert b"Verification successful" in verified.stderr
    message = email.message_from_bytes(verified.stdout, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def attachments(message: EmailMessage) -> dict[str, tuple[str, bytes]]:
    """filename → (content type, decoded bytes) of every attachment."""
    found: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_attachments():
        filename = part.get_filename()
        assert filename is not None
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found[filename] = (part.get_content_type(), payload)
    return found
