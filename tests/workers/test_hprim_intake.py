"""HPRIM at the edges: `labdispatch inspect`, the folder watcher, and delivery end to end
through the real processes (watcher, worker, SMTP receiver), opened with stock openssl."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery, Message, Rejection
from tests.conftest import scratch_postgres
from tests.pipeline.hprim.builders import CORPUS, end, header, order, patient, result, sante
from tests.pipeline.sealing.helpers import attachments, open_envelope
from tests.workers.stack_fixtures import LABORATORY, FaultStack, PrivateRedis, wait_for
from workers.cli import main
from workers.watch import FolderWatcher

ROOT = Path(__file__).resolve().parents[2]
HL7_EXAMPLE = ROOT / "examples" / "results" / "batch_labo_bio_centre.hl7"
SANTE_FILES = ["libhprim__hprim_sante_oru_h2.1.hpr", "instamed__hprim_sante_oru_h2.2.hpr"]


def _inspect(capsys: pytest.CaptureFixture[str], *paths: Path) -> list[dict[str, object]]:
    main(["inspect", "--json", "--no-directory", *map(str, paths)])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_inspect_json_on_the_corpus_hprim_files_has_the_hl7_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    [hl7, *_] = _inspect(capsys, HL7_EXAMPLE)
    hprim = _inspect(capsys, *(Path(CORPUS, name) for name in SANTE_FILES))
    assert [(r["sender"], r["control_id"], r["version"], r["format"]) for r in hprim] == [
        ("PO", "Test1.HPR-201204292059-1", "H2.1", "hprim-sante"),
        ("001", "0.HPR-201301011200-1", "H2.2", "hprim-sante"),
    ]
    for record in hprim:
        assert set(record) == set(hl7)
        recipients = record["recipients"]
        assert isinstance(recipients, list)
        assert set(recipients[0]) == set(hl7["recipients"][0])  # type: ignore[index]
        assert [r["roles"] for r in recipients] == [["ordering"], ["receiver"]]
    assert [r["id"] for r in hprim[0]["recipients"]] == ["PILO", "HPRIM"]  # type: ignore[union-attr]


def test_inspect_refuses_the_headerless_medecins_fragment_saying_where(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = Path(CORPUS, "hprimtool__hprim_medecins_tags_only.hpr")
    status = main(["inspect", "--json", "--no-directory", str(path)])
    captured = capsys.readouterr()
    [record] = [json.loads(line) for line in captured.out.splitlines()]
    assert status == 1 and record["ok"] is False and record["format"] == "hprim-medecins"
    assert record["error"]["location"] == "line 1"  # type: ignore[index]
    assert "12 header lines" in captured.err


# --- the folder watcher, in process ----------------------------------------------------


def _drop(folder: Path, name: str, data: bytes) -> None:
    path = folder / name
    path.write_bytes(data)
    os.utime(path, (0, 1))  # long settled


def test_a_truncated_hprim_file_is_quarantined_with_line_field_and_reason(
    tmp_path: Path, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    watcher = FolderWatcher(folder, ledger, services, settle=1.0)
    _drop(folder, "cut.hpr", sante(header(), patient(), order(), result()))
    _drop(folder, "good.hpr", sante(header(f3="GOOD.HPR"), patient(), order(), result(), end()))

    reports = {report.name: report for report in watcher.poll()}

    assert reports["good.hpr"].outcome == "done" and reports["good.hpr"].recorded == 1
    assert reports["cut.hpr"].outcome == "rejected"
    reason = (folder / "rejected" / "cut.hpr.reason.txt").read_text()
    assert (
        "message 1 (control ID RES0042.HPR): AE MissingEndRecord: line 5 (L record): no L "
        "(end) record" in reason
    )
    assert list((folder / "acks").iterdir()) == []  # HPRIM: no HL7 ACK file
    with ledger() as session:
        rejection = session.scalars(select(Rejection)).one()
        assert (rejection.laboratory, rejection.control_id) == ("LAB01", "RES0042.HPR")
        message = session.scalars(select(Message)).one()
        assert (message.format, message.version, message.control_id) == (
            "hprim-sante",
            "H2.2",
            "GOOD.HPR-202611281015-1",
        )


def test_the_laboratory_charset_lets_latin1_hprim_in(
    tmp_path: Path, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    from pipeline.recipients.laboratories import set_laboratory

    folder = tmp_path / "drop"
    folder.mkdir()
    data = sante(header(), patient(name="HÉLÈNE~Zoé"), order(), result(), end())
    _drop(folder, "first.hpr", data)
    [report] = FolderWatcher(folder, ledger, services, settle=1.0).poll()
    assert report.outcome == "rejected"
    assert "byte 0xC9" in (folder / "rejected" / "first.hpr.reason.txt").read_text()

    with ledger.begin() as session:
        set_laboratory(session, "LAB01", charset="ISO-8859-1")
    _drop(folder, "again.hpr", data)
    [report] = FolderWatcher(folder, ledger, services, settle=1.0).poll()
    assert report.outcome == "done"
    with ledger() as session:
        assert session.scalars(select(Message.charset)).one() == "iso8859-1"


# --- end to end through the real processes --------------------------------------------


@pytest.fixture
def stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_admin: Engine
) -> Iterator[FaultStack]:
    with (
        scratch_postgres(postgres_admin) as url,
        PrivateRedis(tmp_path / "redis").start() as redis_server,
        FaultStack(
            tmp_path, monkeypatch, database_url=url, broker_url=redis_server.url, recipients=2
        ) as fault_stack,
    ):
        yield fault_stack


def test_an_hprim_sante_file_dropped_in_the_folder_reaches_its_recipients_unchanged(
    stack: FaultStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    stack.sink.handler.outbox = outbox
    folder = tmp_path / "drop"
    folder.mkdir()
    # The laboratory's LIS writes Latin-1 and cannot say so: the directory does.
    assert main(["directory", "laboratory", LABORATORY, "--charset", "ISO-8859-1"]) == 0
    data = sante(
        header(f5=f"{LABORATORY}~Laboratoire Fautes", f10="DR2~ROUX Noël"),
        patient(name="HÉLÈNE~Zoé"),
        order(prescriber="DR1~DUBOIS Anne~L"),
        result(),
        end("1", "5"),
        end_with="\r\n",
    )
    stack.start_worker("worker")
    stack.stack.start("watch", "watch", str(folder), "--settle", "0.2", "--interval", "0.2")
    (folder / "result.hpr.tmp").write_bytes(data)
    os.rename(folder / "result.hpr.tmp", folder / "result.hpr")

    stack.settle(messages=1, timeout=90)
    with stack.sessions() as session:
        message = session.scalars(select(Message)).one()
        assert (message.format, message.laboratory) == ("hprim-sante", LABORATORY)
        deliveries = session.scalars(select(Delivery).order_by(Delivery.recipient_key)).all()
        assert [(d.recipient_key, d.state) for d in deliveries] == [
            ("dr1", "accepted"),
            ("dr2", "accepted"),
        ]
    wait_for(lambda: len(list(outbox.glob("*.eml"))) == 2, timeout=30, what="two envelopes")
    assert (folder / "done" / "result.hpr").read_bytes() == data
    assert main(["trace", "RES0042.HPR-202611281015-1"]) == 0
    assert "  hprim-sante ORU vH2.2, status final" in capsys.readouterr().out
    pki = tmp_path / "pki"
    for eml in sorted(outbox.glob("*.eml")):
        key = "dr1" if b"dr1@" in eml.read_bytes()[:4000] else "dr2"
        opened = open_envelope(
            eml.read_bytes(), pki / f"{key}.crt", pki / f"{key}.key", pki / "ca.crt"
        )
        files = attachments(opened)
        [(name, (content_type, body))] = [
            (name, item) for name, item in files.items() if name.endswith(".hpr")
        ]
        assert body == data  # the laboratory's bytes, CRLF and Latin-1 as sent
        assert content_type == "application/octet-stream"
        assert name == "RES0042.HPR-202611281015-1.hpr"
