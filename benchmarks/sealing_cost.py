"""Sealing cost per envelope: what labdispatch spends turning one result into one S/MIME
message for one recipient, measured.

Prints medians (and p95) of `build_content` + `seal` (sign with RSA-2048 / SHA-256, then
AES-256-CBC envelope, then the outer headers) for a ~2 KB result and a ~200 KB result
carrying a PDF-like embedded document, beside the one-off per-message costs (reading the
result and extracting its documents) that are paid once however many recipients there are.
Keys come from a fresh demo PKI in a temporary folder.

    python benchmarks/sealing_cost.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import base64
import random
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from timing import measure  # benchmarks/timing.py (scripts run from this folder)

from pipeline.hl7.documents import extract_documents, message_charset
from pipeline.hl7.intake import IntakeResult, read_results
from pipeline.sealing.content import ResultSummary, build_content
from pipeline.sealing.demo_pki import create_demo_pki
from pipeline.sealing.keys import Signer, load_signer, recipient_certificate
from pipeline.sealing.smime import EnvelopeHeaders, seal, subject_for


def result_message(control_id: str, pdf_size: int = 0) -> bytes:
    """MSH, PID, PV1, ORC, OBR and OBX lines of a chemistry panel; with `pdf_size`, one more
    OBX carrying a PDF-like report as Base64 wrapped at 76 columns (\\.br\\ breaks)."""
    segments = [
        "MSH|^~\\&|SIL|LABO-BIO-CENTRE|LABDISPATCH|LABDISPATCH|20261128093000||ORU^R01^ORU_R01"
        f"|{control_id}|P|2.5|||||FRA|UNICODE UTF-8",
        "PID|||248125612345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||DUPONT^Hélène"
        "||19481215|F",
        "PV1|1|O",
        "ORC|RE|CMD-1|LAB-1||CM||||202611280715|||810001234567^MARTIN^Sophie^^^DR^^^"
        "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
        "OBR|1|CMD-1|LAB-1|24326-1^Ionogramme^LN|||202611280700|||||||||810001234567^MARTIN^"
        "Sophie^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS||||||202611280925|||F",
    ]
    for number in range(1, 19):
        segments.append(
            f"OBX|{number}|NM|{2950 + number}-2^Analyte number {number}^LN||{100 + number}"
            "|mmol/L|135-145|N|||F|||202611280900"
        )
    if pdf_size:
        pdf = b"%PDF-1.4\n" + random.Random(1).randbytes(pdf_size) + b"\n%%EOF\n"
        encoded = base64.encodebytes(pdf).decode().rstrip("\n").replace("\n", "\\.br\\")
        segments.append(
            f"OBX|19|ED|11502-2^CR d'examens biologiques^LN||^APPLICATION^PDF^Base64^{encoded}"
            "||||||F"
        )
    return ("\r".join(segments) + "\r").encode("utf-8")


def envelope_maker(
    result: IntakeResult, signer: Signer, recipient: x509.Certificate
) -> Callable[[], bytes]:
    assert result.message is not None and result.facts is not None
    message, facts = result.message, result.facts
    documents = extract_documents(message)
    summary = ResultSummary.from_facts(facts)
    charset = message_charset(message)
    headers = EnvelopeHeaders(
        message_id=f"<{facts.control_id}.sophie.martin@labdispatch.example>",
        from_address="resultats@labo-bio-centre.example",
        to_address="sophie.martin@cabinet.example",
        subject=subject_for(facts.sender, facts.control_id, facts.result_status),
        disposition_notification_to="resultats@labo-bio-centre.example",
        date=datetime.now(UTC),
    )

    def run() -> bytes:
        content = build_content(result.data, charset, facts.control_id, summary, documents)
        return seal(content, signer, recipient, headers)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        pki = create_demo_pki(Path(folder), {"sophie.martin": "sophie.martin@cabinet.example"})
        signer = load_signer(certificate=pki.lab_certificate, key=pki.lab_key)
        recipient = recipient_certificate(
            "sophie.martin", [pki.recipients["sophie.martin"][0].read_bytes()], datetime.now(UTC)
        )

    cases = [
        ("result, no document", result_message("BENCH-SMALL")),
        ("result + PDF-like ED document", result_message("BENCH-LARGE", pdf_size=145_000)),
    ]
    print(
        f"{'message':<32} {'bytes':>8} {'envelope':>8} {'build_content + seal':>26}"
        f" {'read + extract (once)':>26}"
    )
    for label, data in cases:
        [result] = list(read_results(data))
        assert result.ok, result.error
        run = envelope_maker(result, signer, recipient)
        size = len(run())
        per_envelope = measure(run, args.rounds)

        def once(data: bytes = data) -> object:
            [read] = list(read_results(data))
            assert read.message is not None
            return extract_documents(read.message)

        per_message = measure(once, max(20, args.rounds // 4))
        print(
            f"{label:<32} {len(data):>8} {size:>8}"
            f" {per_envelope[0]:9.3f} ms p95 {per_envelope[1]:7.3f}"
            f" {per_message[0]:9.3f} ms p95 {per_message[1]:7.3f}"
        )


if __name__ == "__main__":
    main()
