"""A result's trace shows the same steps, with the same times, whatever way the workers
take it through (issue 12: the delivery path was redesigned into one pass per result).

The expected timeline below was recorded on the three-stage path (route, seal, send, each a
task) before the redesign; the test drives the path the workers run today and compares.
"""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.services import DeliveryServices
from pipeline.delivery.trace import trace_result
from tests.pipeline.delivery.conftest import (
    ADAM_XCN,
    CORPUS_RESULT,
    UNEQUIPPED_XCN,
    Clock,
    received,
)
from tests.pipeline.delivery.scenario import oru
from tests.pipeline.delivery.workers_path import deliver_as_workers_do
from tests.support import CORPUS

SIGNED = (
    "signed by CN=labdispatch demo laboratory (TEST),O=labdispatch TEST PKI, "
    "encrypted for certificate serial <serial>"
)

#: (kind, recipient, seconds after reception, detail) — certificate serials and the relay's
#: queue number stand as `<serial>` / `<n>`; they differ from run to run.
EXPECTED = {
    "TRACE-1": [
        ("received", None, 0, "from mllp 127.0.0.1:40000"),
        ("parsed", None, 0, "ORU^R01 v2.5, status final, 1 order(s), 0 document(s)"),
        ("routed", "adam.hoda", 3, "adam.hoda (ordering) via mail"),
        ("routed", "no.certificate", 3, "no.certificate (copy_to) via mail"),
        ("sealed", "adam.hoda", 3, f"for adam.hoda: {SIGNED}"),
        (
            "failed",
            "no.certificate",
            3,
            "not sealed: recipient no.certificate has no certificate: add their encryption "
            "certificate to the directory",
        ),
        ("sent", "adam.hoda", 3, "attempt 1 via mail to smtp://<relay>"),
        ("accepted", "adam.hoda", 3, "250 2.0.0 Ok: queued as Q<n>"),
    ],
    "015": [
        ("received", None, 0, "from mllp 127.0.0.1:40000"),
        (
            "parsed",
            None,
            0,
            "ORU^R01 v2.5, status final, 1 order(s), 3 document(s), 1 warning(s)",
        ),
        ("unroutable", None, 3, "ordering no identifier: no identifier in the message"),
        ("routed", "adam.hoda", 3, "adam.hoda (copy_to) via mail"),
        ("routed", "dominique.pat", 3, "dominique.pat (patient) via mailbox"),
        ("sealed", "adam.hoda", 3, f"for adam.hoda: {SIGNED}"),
        ("sealed", "dominique.pat", 3, f"for dominique.pat: {SIGNED}"),
        ("sent", "adam.hoda", 3, "attempt 1 via mail to smtp://<relay>"),
        ("accepted", "adam.hoda", 3, "250 2.0.0 Ok: queued as Q<n>"),
        ("sent", "dominique.pat", 3, "attempt 1 via mailbox to maildir:<mailboxes>"),
        ("accepted", "dominique.pat", 3, "dominique/new/labdispatch.<id>"),
        ("delivered", "dominique.pat", 3, "into maildir:<mailboxes>"),
    ],
}


Row = tuple[str, str | None, int, str]


def _by_recipient(rows: list[Row]) -> dict[str | None, list[Row]]:
    """Each recipient's story in order (and the message's own steps): how the steps of
    different recipients interleave in the ledger is not part of the trace."""
    stories: dict[str | None, list[Row]] = {}
    for row in rows:
        stories.setdefault(row[1], []).append(row)
    return stories


def _rows(ledger: sessionmaker[Session], control_id: str) -> list[Row]:
    with ledger() as session:
        (trace,) = trace_result(session, control_id)
    rows = []
    for event in trace.events:
        detail = re.sub(r"serial [0-9a-f]+", "serial <serial>", event.detail)
        detail = re.sub(r"queued as Q\d+", "queued as Q<n>", detail)
        detail = re.sub(r"smtp://127\.0\.0\.1:\d+", "smtp://<relay>", detail)
        detail = re.sub(r"maildir:/\S+", "maildir:<mailboxes>", detail)
        detail = re.sub(r"labdispatch\.[0-9a-f]+", "labdispatch.<id>", detail)
        seconds = int((event.at - trace.received_at).total_seconds())
        rows.append((event.kind, event.recipient, seconds, detail))
    return rows


def test_a_results_trace_keeps_every_step_and_its_time(
    ledger: sessionmaker[Session], services: DeliveryServices, clock: Clock
) -> None:
    corpus = (CORPUS / CORPUS_RESULT).read_bytes()
    ids = received(
        ledger,
        services,
        oru("TRACE-1", ordering=ADAM_XCN, copy_to=UNEQUIPPED_XCN),
        corpus,
    )
    clock.advance(timedelta(seconds=3))
    deliver_as_workers_do(ledger, ids, services)

    for control_id, expected in EXPECTED.items():
        assert _by_recipient(_rows(ledger, control_id)) == _by_recipient(expected), control_id
