"""The floor per result: the work no design can avoid, measured with the project's own code.

For each result: one HL7 read (`read_results`), the MIME content to sign (`build_content`
with the documents it carries), one signature as the laboratory (`smime.sign`), and one
envelope per recipient (`smime.envelope`: AES-256 content key, RSA key wrap, headers).
The delivery path does all of this and more (ledger writes, broker, SMTP client); the ratio
of its CPU per result to this floor is how far the design is from the machine's limit.

Measured in the bench process before the load, on results of the run itself (the first of
its stream, enough to hold some with a PDF when the mix has them), as thread CPU time. The
mix's share of PDF results is small and they cost several times more, so each step is
averaged apart for results with and without a PDF, then weighted by the run's own share.
Not in this floor: the SMTP client and the ledger writes (ARCHITECTURE.md, "Performance",
puts them at ~0.3 ms a result together).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from pipeline.errors import LabdispatchError
from pipeline.hl7.documents import extract_documents, message_charset
from pipeline.hl7.intake import read_results
from pipeline.sealing.content import ResultSummary, build_content
from pipeline.sealing.keys import Signer, load_signer, recipient_certificate
from pipeline.sealing.smime import EnvelopeHeaders, envelope, sign, subject_for
from workers.bench.synthetic import BenchRecipient, SyntheticResult

#: Results measured: at least this many without a PDF, and with one when the mix has them.
PLAIN_SAMPLE = 200
PDF_SAMPLE = 20
#: Never read more of the run's stream than this looking for PDF results.
SAMPLE_LIMIT = 2_000
WARM_UP = 10
STEPS = ("HL7 read", "signature", "envelopes", "MIME")


@dataclass(frozen=True)
class Floor:
    """Milliseconds of CPU per result for each step, weighted for the run's mix."""

    steps: dict[str, float]
    envelopes_per_result: float
    sampled: int
    sampled_with_pdf: int

    @property
    def total(self) -> float:
        return sum(self.steps.values())

    def line(self) -> str:
        parts = " + ".join(
            f"{name} {ms:.2f}"
            + (f" ({self.envelopes_per_result:.2f} x {ms / self.envelopes_per_result:.2f})"
               if name == "envelopes" and self.envelopes_per_result else "")
            for name, ms in self.steps.items()
        )  # fmt: skip
        return (
            f"floor per result     {self.total:.2f} ms CPU = {parts} "
            f"(measured here before the load on {self.sampled} results of the run, "
            f"{self.sampled_with_pdf} with a PDF)"
        )


def measure_floor(
    results: Iterable[SyntheticResult],
    pki: Path,
    people: list[BenchRecipient],
    *,
    pdf_share: float,
    envelopes_per_result: float,
) -> Floor:
    """Time each step on a sample of `results` (the run's stream); `pdf_share` and
    `envelopes_per_result` are the whole run's, to weight the sample."""
    signer = load_signer(certificate=pki / "lab.crt", key=pki / "lab.key")
    now = datetime.now(UTC)
    by_rpps = {person.rpps: person for person in people}
    certificates: dict[str, x509.Certificate] = {}
    plain: list[dict[str, float]] = []
    with_pdf: list[dict[str, float]] = []
    envelopes: list[int] = []  # envelopes per sampled result, to scale to the run's
    for index, result in enumerate(results):
        if index >= SAMPLE_LIMIT or (
            len(plain) >= PLAIN_SAMPLE and (len(with_pdf) >= PDF_SAMPLE or pdf_share == 0)
        ):
            break
        keep = with_pdf if result.has_pdf else plain
        if len(keep) >= (PDF_SAMPLE if result.has_pdf else PLAIN_SAMPLE):
            continue
        recipients = []
        for rpps in result.recipients:
            person = by_rpps[rpps]
            if person.key not in certificates:
                pem = (pki / f"{person.key}.crt").read_bytes()
                certificates[person.key] = recipient_certificate(person.key, [pem], now)
            recipients.append((person, certificates[person.key]))
        if index == 0:
            for _ in range(WARM_UP):  # first calls fill caches (imports, OpenSSL tables)
                _one(result, signer, recipients, now)
        keep.append(_one(result, signer, recipients, now))
        envelopes.append(len(recipients))
    if not plain and not with_pdf:
        raise LabdispatchError("no result to measure the floor on")

    def mean(sample: list[dict[str, float]], step: str) -> float:
        return statistics.fmean(costs[step] for costs in sample) if sample else 0.0

    share = pdf_share if with_pdf else 0.0
    if not plain:
        share = 1.0
    steps = {}
    for step in STEPS:
        per_result = (1 - share) * mean(plain, step) + share * mean(with_pdf, step)
        if step == "envelopes":  # the sample's recipients per result → the run's
            sampled = statistics.fmean(envelopes)
            per_result *= envelopes_per_result / sampled if sampled else 0.0
        steps[step] = per_result * 1000
    return Floor(steps, envelopes_per_result, len(plain) + len(with_pdf), len(with_pdf))


def _one(
    result: SyntheticResult,
    signer: Signer,
    recipients: list[tuple[BenchRecipient, x509.Certificate]],
    now: datetime,
) -> dict[str, float]:
    """Seconds of thread CPU for each step on one result (as `pipeline.delivery` does them)."""
    clock = time.thread_time
    start = clock()
    read = next(read_results(result.data))
    if read.message is None or read.facts is None:
        raise LabdispatchError(f"a synthetic result does not read: {read.error}")
    after_read = clock()
    facts = read.facts
    content = build_content(
        result.data,
        message_charset(read.message),
        facts.control_id,
        ResultSummary.from_facts(facts),
        extract_documents(read.message),
    )
    after_mime = clock()
    signed = sign(content, signer)
    after_sign = clock()
    subject = subject_for(facts.sender, facts.control_id, facts.result_status)
    for person, certificate in recipients:
        headers = EnvelopeHeaders(
            message_id=f"<{facts.control_id}.{person.key}@labdispatch.bench>",
            from_address="results@labo-bench.example",
            to_address=person.address,
            subject=subject,
            disposition_notification_to="results@labo-bench.example",
            date=now,
        )
        envelope(signed, certificate, headers)
    done = clock()
    return {
        "HL7 read": after_read - start,
        "MIME": after_mime - after_read,
        "signature": after_sign - after_mime,
        "envelopes": done - after_sign,
    }
