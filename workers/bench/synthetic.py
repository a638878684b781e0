"""Synthetic laboratory results, their recipients and test PKI, for the benchmark and the demo.

The benchmark must push results shaped like a real morning peak (1 to 3 recipients, 10 to
30 numeric observations, one result in twenty carrying its signed PDF report) through the
real intake, at a rate well above what the stack can take, so generation never limits what
is measured. So every message is assembled from pieces built once per run (the OBX lines of
each analyte with a handful of values, the clinicians' XCN fields, the PDF body) and only
picked and joined per message: ~40 us a result, 100,000 in a few seconds.

Everything is deterministic from the seed (same seed, same bytes), invented (names from a
short list, identifiers in test ranges, an INS under the ANS test OID) and never mistaken
for real patient data. Recipients are `dr1` ... `drN`, mail `drN@bench.example`, each with an
RPPS number that `synthetic_directory` and `bench_recipients` agree on.
"""

from __future__ import annotations

import base64
import csv
import io
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from pipeline.errors import LabdispatchError
from pipeline.sealing.demo_pki import DemoPki, create_demo_pki, write_file

MAIL_DOMAIN = "bench.example"
#: Distinct RSA keys behind the recipients' certificates: key generation costs ~50 ms, so
#: recipients beyond the pool get their own certificate (own serial, subject and address,
#: as the directory requires) over a key of the pool, issued in ~1 ms.
KEY_POOL = 8
#: Size of the PDF report carried by a share of the results (before Base64).
PDF_SIZE = 100_000
#: Numeric observations per result at most (OBX set IDs are prepared up to this).
MAX_OBSERVATIONS = 31
#: The bench's `--small` results: 21 to 31 observations and no PDF, ~3 KB each (the mix:
#: 10 to 30, and one in twenty with a PDF, ~9 KB on average).
SMALL = (21, 31)
#: When the synthetic day starts (MSH-7 and the observation times advance from here).
EPOCH = datetime(2026, 1, 5, 6, 0, 0)
SENDING_APPLICATION = "SIL-BENCH"
_IDNPS_AUTHORITY = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"
#: The ANS test range of INS-NIR: a synthetic INS that can never be a real patient's.
_INS_AUTHORITY = "ASIP-SANTE-INS-NIR-TEST&1.2.250.1.213.1.4.10&ISO"
_HL7_DELIMITERS = frozenset("|^~\\&\r\n")
_VARIANTS = 64  # pre-formatted values per analyte (a power of two: picked with getrandbits)

FAMILY_NAMES = (
    "MARTIN", "BERNARD", "THOMAS", "PETIT", "ROBERT", "RICHARD", "DURAND", "DUBOIS", "MOREAU",
    "LAURENT", "SIMON", "MICHEL", "LEFÈVRE", "LEROY", "ROUX", "DAVID", "BERTRAND", "MOREL",
    "FOURNIER", "GIRARD", "BONNET", "DUPONT", "LAMBERT", "FONTAINE", "ROUSSEAU", "VINCENT",
    "MÜLLER", "FAURE", "ANDRÉ", "MERCIER", "BLANC", "GUÉRIN", "BOYER", "GARNIER", "CHEVALIER",
    "FRANÇOIS", "LEGRAND", "GAUTHIER", "GARCIA", "PERRIN",
)  # fmt: skip
GIVEN_NAMES = (
    "Camille", "Léa", "Manon", "Chloé", "Inès", "Jade", "Louise", "Zoé", "Hélène", "Claire",
    "Sophie", "Anne", "Marie", "Élise", "Agnès", "Lucas", "Hugo", "Louis", "Jules", "Gabriel",
    "Paul", "Luc", "Noël", "Jérôme", "François", "Étienne", "Rémi", "Benoît", "Thierry",
    "Olivier",
)  # fmt: skip
SPECIALTIES = ("médecine générale", "cardiologie", "néphrologie", "endocrinologie", "pédiatrie")
#: OBR-4 universal service identifiers (LOINC panels).
SERVICES = (
    "24323-8^Bilan métabolique^LN",
    "58410-2^Numération formule sanguine^LN",
    "24331-1^Bilan lipidique^LN",
    "24325-3^Bilan hépatique^LN",
    "34555-3^Bilan de coagulation^LN",
)


@dataclass(frozen=True)
class Analyte:
    """One numeric observation a lab reports: LOINC code, label, UCUM unit, reference range."""

    code: str
    label: str
    unit: str
    low: float
    high: float
    decimals: int


ANALYTES = (
    Analyte("2951-2", "Sodium", "mmol/L", 135, 145, 0),
    Analyte("2823-3", "Potassium", "mmol/L", 3.5, 5.1, 1),
    Analyte("2075-0", "Chlorure", "mmol/L", 98, 107, 0),
    Analyte("1963-8", "Bicarbonates", "mmol/L", 22, 29, 0),
    Analyte("22664-7", "Urée", "mmol/L", 2.5, 7.5, 1),
    Analyte("14682-9", "Créatinine", "umol/L", 45, 104, 0),
    Analyte("62238-1", "DFG (CKD-EPI)", "mL/min/{1.73_m2}", 60, 120, 0),
    Analyte("15074-8", "Glucose", "mmol/L", 3.9, 5.8, 2),
    Analyte("4548-4", "Hémoglobine glyquée (HbA1c)", "%", 4.0, 6.0, 1),
    Analyte("14647-2", "Cholestérol total", "mmol/L", 3.0, 5.2, 2),
    Analyte("14646-4", "Cholestérol HDL", "mmol/L", 1.0, 2.0, 2),
    Analyte("22748-8", "Cholestérol LDL", "mmol/L", 1.5, 3.4, 2),
    Analyte("14927-8", "Triglycérides", "mmol/L", 0.4, 1.7, 2),
    Analyte("1742-6", "ALAT", "U/L", 7, 40, 0),
    Analyte("1920-8", "ASAT", "U/L", 10, 40, 0),
    Analyte("2324-2", "Gamma GT", "U/L", 8, 61, 0),
    Analyte("6768-6", "Phosphatases alcalines", "U/L", 40, 130, 0),
    Analyte("14631-6", "Bilirubine totale", "umol/L", 3, 21, 0),
    Analyte("2532-0", "LDH", "U/L", 135, 225, 0),
    Analyte("1988-5", "Protéine C réactive", "mg/L", 0, 5, 1),
    Analyte("3016-3", "TSH", "mU/L", 0.27, 4.2, 2),
    Analyte("14920-3", "T4 libre", "pmol/L", 12, 22, 1),
    Analyte("2276-4", "Ferritine", "ug/L", 30, 400, 0),
    Analyte("14798-3", "Fer sérique", "umol/L", 11, 30, 1),
    Analyte("6690-2", "Leucocytes", "10*9/L", 4.0, 10.0, 1),
    Analyte("789-8", "Hématies", "10*12/L", 4.2, 5.7, 2),
    Analyte("718-7", "Hémoglobine", "g/dL", 13.0, 17.0, 1),
    Analyte("4544-3", "Hématocrite", "%", 40, 52, 1),
    Analyte("787-2", "VGM", "fL", 80, 100, 0),
    Analyte("785-6", "TCMH", "pg", 27, 32, 1),
    Analyte("786-4", "CCMH", "g/dL", 32, 36, 1),
    Analyte("777-3", "Plaquettes", "10*9/L", 150, 400, 0),
    Analyte("751-8", "Polynucléaires neutrophiles", "10*9/L", 1.8, 7.5, 2),
    Analyte("731-0", "Lymphocytes", "10*9/L", 1.0, 4.0, 2),
    Analyte("742-7", "Monocytes", "10*9/L", 0.2, 1.0, 2),
    Analyte("711-2", "Polynucléaires éosinophiles", "10*9/L", 0.0, 0.5, 2),
    Analyte("704-7", "Polynucléaires basophiles", "10*9/L", 0.0, 0.1, 2),
    Analyte("5894-1", "Taux de prothrombine", "%", 70, 100, 0),
    Analyte("6301-6", "INR", "{INR}", 0.8, 1.2, 2),
    Analyte("2000-8", "Calcium", "mmol/L", 2.2, 2.6, 2),
    Analyte("14879-1", "Phosphore", "mmol/L", 0.8, 1.45, 2),
    Analyte("2885-2", "Protéines totales", "g/L", 64, 83, 0),
    Analyte("1751-7", "Albumine", "g/L", 35, 52, 1),
    Analyte("14933-6", "Acide urique", "umol/L", 150, 420, 0),
    Analyte("10839-9", "Troponine I", "ng/L", 0, 34, 0),
    Analyte("33762-6", "NT-proBNP", "ng/L", 0, 125, 0),
)


@dataclass(frozen=True)
class BenchRecipient:
    """A synthetic clinician: directory key, RPPS number, name and mail address."""

    key: str
    rpps: str
    family_name: str
    given_name: str
    address: str

    @property
    def name(self) -> str:
        return f"{self.family_name} {self.given_name}"


def rpps_number(number: int) -> str:
    """The RPPS number (11 digits, Luhn check digit last, as the ANS issues them) of the
    `number`-th synthetic clinician, in a range ("10" + 8 digits) kept for them."""
    if not 1 <= number <= 99_999_999:
        raise ValueError(f"synthetic clinicians are numbered 1 to 99,999,999, not {number}")
    body = f"10{number:08d}"
    return body + str(_luhn_digit(body))


def bench_recipients(count: int) -> list[BenchRecipient]:
    """Clinicians `dr1` ... `dr<count>`, the same for every run."""
    if count < 1:
        raise ValueError(f"the benchmark needs at least one recipient, not {count}")
    found = []
    for number in range(1, count + 1):
        family, given = _clinician_name(number)
        found.append(
            BenchRecipient(
                key=f"dr{number}",
                rpps=rpps_number(number),
                family_name=family,
                given_name=given,
                address=f"dr{number}@{MAIL_DOMAIN}",
            )
        )
    return found


def synthetic_directory(
    recipients: int, laboratory: str, *, certificates: Path | None = None
) -> str:
    """The CSV text `labdispatch directory import` takes for `bench_recipients(recipients)`.

    Each row has the RPPS identifier, the mail channel `mail:drN@bench.example` and the
    laboratory's local code `DRN` (which also creates the laboratory in the directory).
    With `certificates`, the folder `bench_pki` wrote, each row names `<folder>/drN.crt` by
    its absolute path, so the CSV can be imported from anywhere; without it the column is
    left out, and an import keeps whatever certificates the recipients already have.
    """
    _check_laboratory(laboratory)
    if "=" in laboratory or ";" in laboratory:
        raise LabdispatchError(
            f"laboratory {laboratory!r} cannot be written as a local code in the directory"
            " CSV: use a sending facility without '=' or ';'"
        )
    columns = ["key", "kind", "name", "specialty", "identifiers", "local_codes", "channels"]
    if certificates is not None:
        columns.append("certificate")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for number, recipient in enumerate(bench_recipients(recipients), start=1):
        row = [
            recipient.key,
            "clinician",
            recipient.name,
            SPECIALTIES[number % len(SPECIALTIES)],
            f"RPPS:{recipient.rpps}",
            f"{laboratory}=DR{number}",
            f"mail:{recipient.address}",
        ]
        if certificates is not None:
            row.append(str(certificates.resolve() / f"{recipient.key}.crt"))
        writer.writerow(row)
    return text.getvalue()


def bench_pki(
    folder: Path,
    recipients: int,
    laboratory: str,
    *,
    keys: int = KEY_POOL,
    days: int = 365,
) -> DemoPki:
    """A test PKI for `bench_recipients(recipients)` in `folder`, in well under a second.

    One CA and the laboratory's signing certificate (`create_demo_pki`, so the files are
    those of `labdispatch pki init`: `ca.crt`, `lab.crt`/`lab.key`, `drN.crt`/`drN.key`),
    plus `directory.csv`: the synthetic directory with those certificates attached. Only the
    first `keys` recipients get a key of their own; the others a certificate of their own
    over one of those keys (each `drN.key` is the key of `drN.crt`, so `openssl cms -decrypt
    -recip drN.crt -inkey drN.key` works for every N). Files already there are kept.
    """
    if keys < 1:
        raise ValueError(f"the key pool needs at least one key, not {keys}")
    people = bench_recipients(recipients)
    pool = people[:keys]
    pki = create_demo_pki(
        folder,
        {person.key: person.address for person in pool},
        laboratory=f"{laboratory} benchmark laboratory",
        days=days,
    )
    created = list(pki.created)
    kept = list(pki.kept)
    rest = []
    for person in people[keys:]:
        if _pair_exists(folder, person.key):
            kept.extend(_pair_names(person.key))
        else:
            rest.append(person)
    if rest:
        ca_certificate = x509.load_pem_x509_certificate(pki.ca_certificate.read_bytes())
        ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
        assert isinstance(ca_key, rsa.RSAPrivateKey)
        templates = [
            (
                x509.load_pem_x509_certificate(pki.recipients[p.key][0].read_bytes()),
                pki.recipients[p.key][1].read_bytes(),
            )
            for p in pool
        ]
        for index, person in enumerate(rest):
            template, key_pem = templates[index % len(templates)]
            certificate = _reissue(template, person, ca_certificate, ca_key)
            write_file(folder / f"{person.key}.key", key_pem, 0o600)
            write_file(
                folder / f"{person.key}.crt",
                certificate.public_bytes(serialization.Encoding.PEM),
                0o644,
            )
            created.extend(_pair_names(person.key))
    listing = folder / "directory.csv"
    write_file(
        listing,
        synthetic_directory(recipients, laboratory, certificates=folder).encode("utf-8"),
        0o644,
    )
    created.append(listing.name)
    return replace(
        pki,
        recipients={p.key: (folder / f"{p.key}.crt", folder / f"{p.key}.key") for p in people},
        created=tuple(created),
        kept=tuple(kept),
    )


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticResult:
    """A generated result and what it was made to say, for checking what arrives."""

    control_id: str  # MSH-10
    data: bytes  # the whole message
    recipients: tuple[str, ...]  # RPPS numbers, ordering provider first
    has_pdf: bool


def generate_results(
    n: int,
    seed: int,
    laboratory: str,
    recipients: Sequence[str],
    pdf_ratio: float = 0.05,
    observations: tuple[int, int] = (10, 30),
) -> Iterator[bytes]:
    """`n` ORU^R01 v2.5 results (UTF-8, CR segment ends), each its own message, MSH-10 unique
    (`B<seed>-<index>`), MSH-4 = `laboratory`, MSH-11 = P.

    Each names 1, 2 or 3 distinct clinicians of `recipients` (RPPS numbers; uniformly, when
    there are enough of them): the first as ordering provider (ORC-12 and OBR-16), the
    others as copies (OBR-28), written as IDNPS the way the ANS profile asks. It has one
    ORC/OBR and 10 to 30 numeric OBX with units, reference ranges and flags; a share
    `pdf_ratio` also carries a ~100 KB PDF report as an ED observation (Base64).
    """
    for result in generate_labelled_results(
        n, seed, laboratory, recipients, pdf_ratio, observations
    ):
        yield result.data


def generate_labelled_results(
    n: int,
    seed: int,
    laboratory: str,
    recipients: Sequence[str],
    pdf_ratio: float = 0.05,
    observations: tuple[int, int] = (10, 30),
) -> Iterator[SyntheticResult]:
    """`generate_results`, each message with its control ID, recipients and PDF flag (the
    same bytes for the same arguments): the bench counts the envelopes it must wait for
    from these, without reading the HL7 back. `observations`: the fewest and most OBX
    (`SMALL` with no PDF gives the bench's ~3 KB results)."""
    _check_laboratory(laboratory)
    if n < 0:
        raise ValueError(f"cannot generate {n} results")
    if not recipients:
        raise ValueError("results need at least one recipient RPPS number")
    if not 0.0 <= pdf_ratio <= 1.0:
        raise ValueError(f"pdf_ratio is a share between 0 and 1, not {pdf_ratio}")
    fewest, most_observations = observations
    if not 1 <= fewest <= most_observations <= MAX_OBSERVATIONS:
        raise ValueError(
            f"observations per result go from 1 to {MAX_OBSERVATIONS}, not {observations}"
        )
    rng = random.Random(seed)
    people = [(rpps, _xcn(rpps)) for rpps in dict.fromkeys(r.strip() for r in recipients)]
    most = min(3, len(people))
    by_analyte = [_obx_variants(analyte, rng) for analyte in ANALYTES]
    cycle = by_analyte + by_analyte  # a run of k analytes from any start, without modulo
    set_ids = [f"OBX|{number}|NM|" for number in range(1, MAX_OBSERVATIONS + 1)]
    pdf_image = rng.randbytes(_PDF_WIDTH * _pdf_height(PDF_SIZE))
    msh_head = f"MSH|^~\\&|{SENDING_APPLICATION}|{laboratory}|LABDISPATCH|LABDISPATCH|"
    msh_tail = "P|2.5|||||FRA|UNICODE UTF-8"

    for index in range(n):
        control_id = f"B{seed}-{index:07d}"
        at = EPOCH + timedelta(seconds=index // 4)
        sent = at.strftime("%Y%m%d%H%M%S")
        collected = (at - timedelta(minutes=90 + rng.randrange(120))).strftime("%Y%m%d%H%M")
        order = f"{seed % 1000:03d}{index:07d}"
        named = rng.sample(people, rng.randrange(most) + 1)
        ordering = named[0][1]
        copies = "~".join(xcn for _, xcn in named[1:])
        patient = rng.getrandbits(32)
        count = fewest + rng.randrange(most_observations - fewest + 1)
        start = rng.randrange(len(by_analyte))
        segments = [
            f"{msh_head}{sent}||ORU^R01^ORU_R01|{control_id}|{msh_tail}",
            _pid(patient, laboratory),
            f"PV1|1|O|||||||||||||||||V{order}",
            f"ORC|RE|CMD-{order}^CABINET|LAB-{order}^{laboratory}||CM||||{collected}|||{ordering}",
            f"OBR|1|CMD-{order}^CABINET|LAB-{order}^{laboratory}"
            f"|{SERVICES[patient % len(SERVICES)]}|||{collected}|||||||||{ordering}"
            f"||||||{sent}|||F|||{copies}",
        ]
        for number, variants in enumerate(cycle[start : start + count]):
            segments.append(set_ids[number] + variants[rng.getrandbits(6)] + sent)
        has_pdf = rng.random() < pdf_ratio
        if has_pdf:
            pdf = minimal_pdf(f"Compte rendu {control_id}", pdf_image)
            segments.append(
                f"OBX|{count + 1}|ED|11502-2^CR d'examens biologiques^LN||^APPLICATION^PDF"
                f"^Base64^{base64.b64encode(pdf).decode('ascii')}||||||F|||{sent}"
            )
        segments.append("")
        yield SyntheticResult(
            control_id=control_id,
            data="\r".join(segments).encode("utf-8"),
            recipients=tuple(rpps for rpps, _ in named),
            has_pdf=has_pdf,
        )


_PDF_WIDTH = 400


def _pdf_height(size: int) -> int:
    return max(1, (size - 900) // _PDF_WIDTH)


def minimal_pdf(title: str, image: bytes) -> bytes:
    """A one-page PDF 1.4 that readers open: the title in Helvetica, plus a grey image
    resource holding `image` (400 pixels wide, any height) that gives the file the size of
    a real scanned report. The cross-reference table gives each object's true offset."""
    height = max(1, len(image) // _PDF_WIDTH)
    image = image[: _PDF_WIDTH * height].ljust(_PDF_WIDTH * height, b"\0")
    text = title.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    content = f"BT /F1 14 Tf 72 770 Td ({text}) Tj ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> /XObject << /Im1 6 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray"
        b" /BitsPerComponent 8 /Length %d >>\nstream\n"
        % (_PDF_WIDTH, height, len(image))
        + image
        + b"\nendstream",
    ]
    out = [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"]
    offsets = []
    position = len(out[0])
    for number, body in enumerate(objects, start=1):
        offsets.append(position)
        chunk = b"%d 0 obj\n%s\nendobj\n" % (number, body)
        out.append(chunk)
        position += len(chunk)
    xref = [b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)]
    xref.extend(b"%010d 00000 n \n" % offset for offset in offsets)
    out.extend(xref)
    out.append(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n"
        % (len(objects) + 1, position)
    )
    return b"".join(out)


# --- pieces ---------------------------------------------------------------------------------------


def _obx_variants(analyte: Analyte, rng: random.Random) -> list[str]:
    """`_VARIANTS` ready OBX tails (from OBX-3 to OBX-13, OBX-14 appended per message) for
    one analyte: values around the reference range, ~15 % of them flagged L or H."""
    low, high = analyte.low, analyte.high
    width = (high - low) or 1.0
    reference = f"{low:.{analyte.decimals}f}-{high:.{analyte.decimals}f}"
    tails = []
    for _ in range(_VARIANTS):
        value = max(0.0, rng.gauss((low + high) / 2, width / 3))
        shown = f"{value:.{analyte.decimals}f}"
        number = float(shown)
        flag = "L" if number < low else "H" if number > high else "N"
        tails.append(
            f"{analyte.code}^{analyte.label}^LN||{shown}|{analyte.unit}^^UCUM|{reference}"
            f"|{flag}|||F|||"
        )
    return tails


def _xcn(rpps: str) -> str:
    """A clinician as the ANS profile writes one: IDNPS (8 + RPPS), name, authority, type."""
    rpps = rpps.strip()
    if not (len(rpps) == 11 and rpps.isdigit()):
        raise ValueError(f"{rpps!r} is not an RPPS number (11 digits)")
    family, given = _clinician_name(int(rpps[2:10]) if rpps.startswith("10") else int(rpps))
    return f"8{rpps}^{family}^{given}^^^DR^^^{_IDNPS_AUTHORITY}^D^^^IDNPS"


def _clinician_name(number: int) -> tuple[str, str]:
    return (
        FAMILY_NAMES[(number * 7) % len(FAMILY_NAMES)],
        GIVEN_NAMES[(number * 11) % len(GIVEN_NAMES)],
    )


def _pid(patient: int, laboratory: str) -> str:
    """A synthetic patient from 32 random bits: local IPP, test-range INS, name, birth date,
    sex, town."""
    family = FAMILY_NAMES[patient % len(FAMILY_NAMES)]
    given = GIVEN_NAMES[(patient >> 6) % len(GIVEN_NAMES)]
    sex = "F" if patient & 1 else "M"
    born = EPOCH - timedelta(days=365 * 2 + (patient >> 12) % (365 * 90))
    nir = (
        f"{2 if sex == 'F' else 1}{born:%y%m}{(patient >> 8) % 95 + 1:02d}"
        f"{(patient >> 16) % 999 + 1:03d}{(patient >> 4) % 999 + 1:03d}"
    )
    ins = f"{nir}{97 - int(nir) % 97:02d}"
    return (
        f"PID|1||IPP{patient:010d}^^^{laboratory}^PI~{ins}^^^{_INS_AUTHORITY}^INS"
        f"||{family}^{given}^^^^^L||{born:%Y%m%d}|{sex}|||12 rue des Tilleuls^^LILLE^^59000^FRA"
    )


def _luhn_digit(digits: str) -> int:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return (10 - total % 10) % 10


def _check_laboratory(laboratory: str) -> None:
    if not laboratory.strip() or _HL7_DELIMITERS & set(laboratory):
        raise LabdispatchError(
            f"laboratory {laboratory!r} cannot be a sending facility (MSH-4): give a"
            " non-empty name without HL7 separators (| ^ ~ \\ &) or line breaks"
        )


def _reissue(
    template: x509.Certificate,
    person: BenchRecipient,
    ca_certificate: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
) -> x509.Certificate:
    """A certificate for `person` over the template's key: same issuer, validity and
    extensions (those `create_demo_pki` gives a recipient), own serial, name and address."""
    subject = x509.Name(
        [
            attribute
            if attribute.oid != NameOID.COMMON_NAME
            else x509.NameAttribute(NameOID.COMMON_NAME, f"{person.key} (TEST)")
            for attribute in template.subject
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_certificate.subject)
        .public_key(template.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(template.not_valid_before_utc)
        .not_valid_after(template.not_valid_after_utc)
    )
    for extension in template.extensions:
        value: x509.ExtensionType = extension.value
        if isinstance(value, x509.SubjectAlternativeName):
            value = x509.SubjectAlternativeName([x509.RFC822Name(person.address)])
        builder = builder.add_extension(value, critical=extension.critical)
    return builder.sign(ca_key, hashes.SHA256())


def _pair_names(key: str) -> tuple[str, str]:
    return f"{key}.crt", f"{key}.key"


def _pair_exists(folder: Path, key: str) -> bool:
    return all((folder / name).exists() for name in _pair_names(key))
