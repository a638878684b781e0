"""Synthetic results for the benchmark: realistic, deterministic, and accepted by our intake."""

from __future__ import annotations

import csv
import io
import re
import subprocess
from collections import Counter

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from pipeline.errors import LabdispatchError
from pipeline.hl7.documents import extract_documents
from pipeline.hl7.intake import read_results
from pipeline.hl7.participants import COPY_TO, ORDERING
from pipeline.identifiers import RPPS
from pipeline.recipients.directory_csv import import_directory
from pipeline.recipients.models import Recipient
from pipeline.recipients.routing import route
from pipeline.sealing.demo_pki import DemoPki
from workers.bench.synthetic import (
    PDF_SIZE,
    SyntheticResult,
    bench_pki,
    bench_recipients,
    generate_labelled_results,
    generate_results,
    minimal_pdf,
    rpps_number,
    synthetic_directory,
)

LAB = "LABO-BENCH"
RPPS_IDS = [person.rpps for person in bench_recipients(20)]


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def labelled(n: int, seed: int = 1, pdf_ratio: float = 0.05) -> list[SyntheticResult]:
    return list(generate_labelled_results(n, seed, LAB, RPPS_IDS, pdf_ratio))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return bench_pki(tmp_path_factory.mktemp("pki"), 12, LAB, keys=3)


# --- results --------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_bytes_and_another_seed_others() -> None:
    first = list(generate_results(200, 42, LAB, RPPS_IDS))
    again = list(generate_results(200, 42, LAB, RPPS_IDS))
    other = list(generate_results(200, 43, LAB, RPPS_IDS))

    assert first == again
    assert [r.data for r in labelled(200, seed=42)] == first
    assert not set(first) & set(other)


def test_every_result_passes_intake_naming_the_recipients_it_was_made_for() -> None:
    results = labelled(400)

    control_ids = set()
    for result in results:
        [read] = read_results(result.data)
        assert read.ok, read.error
        facts = read.facts
        assert facts is not None
        assert facts.warnings == ()
        assert (facts.control_id, facts.sending_facility) == (result.control_id, LAB)
        assert (facts.message_type, facts.version, facts.processing_id) == ("ORU^R01", "2.5", "P")
        assert facts.result_status == "final"
        named = [(p.id_type, p.id) for p in facts.participants]
        assert named == [(RPPS, rpps) for rpps in result.recipients]
        assert facts.participants[0].roles == (ORDERING,)
        assert all(p.roles == (COPY_TO,) for p in facts.participants[1:])
        [order] = facts.orders
        numeric = order.observations - len(facts.documents)
        assert 10 <= numeric <= 30
        assert facts.patient_ids  # a synthetic patient, identified
        control_ids.add(facts.control_id)
    assert len(control_ids) == len(results)


def test_segments_end_with_cr_only_and_the_header_is_as_a_lab_writes_it() -> None:
    [result] = labelled(1)
    text = result.data.decode("utf-8")

    assert "\n" not in text and text.endswith("\r")
    msh = text.split("\r")[0].split("|")
    assert msh[3] == LAB and msh[9] == result.control_id and msh[10] == "P"
    assert msh[8] == "ORU^R01^ORU_R01" and msh[11] == "2.5"
    assert [line[:3] for line in text.split("\r")[:5]] == ["MSH", "PID", "PV1", "ORC", "OBR"]


def test_recipients_per_result_are_one_to_three_uniformly() -> None:
    results = labelled(3000, pdf_ratio=0.0)

    counts = Counter(len(result.recipients) for result in results)
    assert set(counts) == {1, 2, 3}
    for count in (1, 2, 3):
        assert abs(counts[count] / len(results) - 1 / 3) < 0.04, counts
    assert all(len(set(result.recipients)) == len(result.recipients) for result in results)
    assert {rpps for result in results for rpps in result.recipients} == set(RPPS_IDS)


def test_with_fewer_than_three_clinicians_a_result_names_at_most_those() -> None:
    results = list(generate_labelled_results(200, 3, LAB, RPPS_IDS[:2], 0.0))

    assert {len(result.recipients) for result in results} == {1, 2}


def test_a_twentieth_of_results_carry_a_100_kb_pdf_that_intake_extracts() -> None:
    results = labelled(2000)

    with_pdf = [result for result in results if result.has_pdf]
    assert 0.035 <= len(with_pdf) / len(results) <= 0.065
    for result in with_pdf[:10]:
        [read] = read_results(result.data)
        assert read.message is not None and read.facts is not None
        [document] = read.facts.documents
        assert (document.mime_type, document.encoding, document.problem) == (
            "application/pdf",
            "Base64",
            "",
        )
        [extracted] = extract_documents(read.message)
        assert extracted.filename == f"{result.control_id}-1.pdf"
        assert extracted.data.startswith(b"%PDF-1.4\n") and extracted.data.endswith(b"%%EOF\n")
        assert 0.95 * PDF_SIZE <= len(extracted.data) <= 1.05 * PDF_SIZE
        assert f"Compte rendu {result.control_id}".encode() in extracted.data
    without = next(result for result in results if not result.has_pdf)
    [read] = read_results(without.data)
    assert read.facts is not None and read.facts.documents == ()


def test_the_pdf_cross_reference_table_points_at_each_object() -> None:
    pdf = minimal_pdf("Compte rendu (test)", bytes(range(256)) * 400)

    found = re.search(rb"startxref\n(\d+)\n%%EOF\n$", pdf)
    assert found is not None
    xref_at = int(found.group(1))
    assert pdf[xref_at:].startswith(b"xref\n0 7\n")
    offsets = re.findall(rb"(\d{10}) 00000 n ", pdf[xref_at:])
    assert len(offsets) == 6
    for number, offset in enumerate(offsets, start=1):
        assert pdf[int(offset) :].startswith(b"%d 0 obj\n" % number)
    assert b"(Compte rendu \\(test\\))" in pdf


def test_arguments_that_cannot_make_results_are_refused() -> None:
    with pytest.raises(LabdispatchError, match="sending facility"):
        next(generate_results(1, 1, "LAB|X", RPPS_IDS))
    with pytest.raises(ValueError, match="RPPS"):
        next(generate_results(1, 1, LAB, ["12345"]))
    with pytest.raises(ValueError, match="at least one"):
        next(generate_results(1, 1, LAB, []))
    with pytest.raises(ValueError, match="share"):
        next(generate_results(1, 1, LAB, RPPS_IDS, pdf_ratio=1.5))


# --- directory and PKI ----------------------------------------------------------------------------


def test_clinicians_have_valid_rpps_numbers_and_bench_addresses() -> None:
    people = bench_recipients(30)

    assert [p.key for p in people] == [f"dr{n}" for n in range(1, 31)]
    assert all(len(p.rpps) == 11 and p.rpps.isdigit() and luhn_valid(p.rpps) for p in people)
    assert len({p.rpps for p in people}) == 30
    assert people[4].address == "dr5@bench.example"
    assert rpps_number(5) == people[4].rpps


def test_directory_csv_lists_each_clinician_with_rpps_mail_and_local_code() -> None:
    rows = list(csv.DictReader(io.StringIO(synthetic_directory(5, LAB))))

    assert len(rows) == 5
    assert "certificate" not in rows[0]
    people = bench_recipients(5)
    for row, person in zip(rows, people, strict=True):
        assert row["key"] == person.key and row["kind"] == "clinician"
        assert row["identifiers"] == f"RPPS:{person.rpps}"
        assert row["channels"] == f"mail:{person.address}"
        assert row["local_codes"] == f"{LAB}={person.key.upper()}"


def test_bench_pki_gives_every_recipient_its_own_certificate_from_a_small_key_pool(
    pki: DemoPki,
) -> None:
    certificates = {
        key: x509.load_pem_x509_certificate(paths[0].read_bytes())
        for key, paths in pki.recipients.items()
    }

    assert sorted(certificates) == sorted(f"dr{n}" for n in range(1, 13))
    assert len({c.fingerprint(hashes.SHA256()) for c in certificates.values()}) == 12
    assert len({c.serial_number for c in certificates.values()}) == 12
    public = {
        c.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for c in certificates.values()
    }
    assert len(public) == 3
    for key, (_, key_path) in pki.recipients.items():
        san = certificates[key].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.value.get_values_for_type(x509.RFC822Name) == [f"{key}@bench.example"]
        private = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert private.public_key() == certificates[key].public_key(), key
    checked = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_certificate), "-purpose", "smimeencrypt"]
        + [str(paths[0]) for paths in pki.recipients.values()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.count(": OK") == 12


def test_bench_pki_run_again_keeps_what_is_there(pki: DemoPki) -> None:
    before = pki.recipients["dr9"][0].read_bytes()

    again = bench_pki(pki.directory, 12, LAB, keys=3)

    assert pki.recipients["dr9"][0].read_bytes() == before
    assert "dr9.crt" in again.kept and "dr1.crt" in again.kept and "ca.crt" in again.kept


def test_the_directory_imports_and_routes_every_result_to_its_clinicians(
    session: Session, pki: DemoPki
) -> None:
    report = import_directory(session, pki.directory / "directory.csv")
    session.commit()

    assert report.errors == []
    assert report.created == 12
    recipients = session.scalars(
        select(Recipient).options(selectinload(Recipient.certificates))
    ).all()
    assert all(len(recipient.certificates) == 1 for recipient in recipients)
    people = {p.rpps: p for p in bench_recipients(12)}
    for result in generate_labelled_results(30, 5, LAB, list(people)):
        [read] = read_results(result.data)
        assert read.facts is not None
        routed = route(session, read.facts)
        assert [r.resolution.recipient_key for r in routed] == [
            people[rpps].key for rpps in result.recipients
        ]
        assert [r.resolution.channels for r in routed] == [
            (f"mail:{people[rpps].address}",) for rpps in result.recipients
        ]
