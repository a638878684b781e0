"""The delivery commands as an operator runs them: pki init, deliver, trace, receipts.

They run on the test database (SQLite and PostgreSQL) with the embedded defaults for the
rest: mail with no relay configured lands in the outbox Maildir, where stock `openssl`
opens it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ledger.storage import StorageCipher
from tests.pipeline.delivery.scenario import directory_csv, oru
from tests.pipeline.sealing.helpers import attachments, open_envelope
from workers.cli import main


def mdn(original_message_id: str) -> bytes:
    return (
        "From: sophie.martin@martin.mssante.example\r\n"
        "Message-ID: <mdn-cli-1@martin.mssante.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n'
        "\r\n--b\r\nContent-Type: text/plain\r\n\r\nDisplayed.\r\n"
        "--b\r\nContent-Type: message/disposition-notification\r\n\r\n"
        f"Original-Message-ID: {original_message_id}\r\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\r\n--b--\r\n"
    ).encode()


@pytest.fixture
def equipped(cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A directory imported, a test PKI made for it and attached: the PKI folder."""
    csv = directory_csv(tmp_path)
    assert main(["directory", "import", str(csv)]) == 0
    pki = tmp_path / "pki"
    assert main(["pki", "init", str(pki)]) == 0
    assert main(["directory", "import", str(pki / "directory.csv")]) == 0
    capsys.readouterr()
    return pki


def test_pki_init_writes_test_material_and_a_directory_file_to_attach_it(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"

    status = main(["pki", "init", str(pki), "--directory", str(directory_csv(tmp_path))])

    out = capsys.readouterr().out
    assert status == 0 and "TEST MATERIAL" in out
    for name in ("ca.crt", "lab.crt", "lab.key", "sophie.martin.crt", "sophie.martin.key"):
        assert (pki / name).is_file()
    assert (pki / "directory.csv").read_text().splitlines()[1] == (
        "sophie.martin,clinician,MARTIN Sophie,sophie.martin.crt"
    )


def test_pki_init_with_an_empty_directory_says_what_to_do(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["pki", "init", str(tmp_path / "pki")])

    assert status == 2
    assert "import a directory first" in capsys.readouterr().err


def test_deliver_seals_into_the_outbox_and_trace_and_receipts_follow(
    equipped: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LABDISPATCH_SIGNING_CERT", str(equipped / "lab.crt"))
    monkeypatch.setenv("LABDISPATCH_SIGNING_KEY", str(equipped / "lab.key"))
    result = tmp_path / "result.hl7"
    result.write_bytes(oru("CLI-0001"))

    status = main(["deliver", str(result)])

    out = capsys.readouterr().out
    assert status == 0, out
    assert f"{result} #1: LABO-TEST CLI-0001: recorded, 2 recipient(s)" in out
    assert "→ sophie.martin via mail:sophie.martin@martin.mssante.example: accepted" in out
    assert "→ paul.leroy via mailbox:paul.leroy: delivered" in out
    (queued,) = (tmp_path / "var" / "outbox" / "new").iterdir()
    opened = open_envelope(
        queued.read_bytes(),
        equipped / "sophie.martin.crt",
        equipped / "sophie.martin.key",
        equipped / "ca.crt",
    )
    assert attachments(opened)["CLI-0001.hl7"][1] == oru("CLI-0001")

    assert main(["trace", "CLI-0001", "--json"]) == 0
    (trace,) = json.loads(capsys.readouterr().out)
    states = {d["recipient"]: d["state"] for d in trace["deliveries"]}
    assert states == {"sophie.martin": "accepted", "paul.leroy": "delivered"}
    (sophie,) = [d for d in trace["deliveries"] if d["recipient"] == "sophie.martin"]

    receipts = tmp_path / "var" / "receipts"
    for folder in ("tmp", "new", "cur"):
        (receipts / folder).mkdir(parents=True, exist_ok=True)
    (receipts / "new" / "mdn-1").write_bytes(mdn(sophie["envelope_message_id"]))
    assert main(["receipts", "collect"]) == 0
    assert capsys.readouterr().out == "1 mdn displayed\n"
    assert main(["receipts", "collect"]) == 0
    assert capsys.readouterr().out == "no new report\n"

    assert main(["trace", "CLI-0001"]) == 0
    text = capsys.readouterr().out
    assert "→ sophie.martin (ordering) via mail:sophie.martin@martin.mssante.example: READ" in text
    assert "DUPONT" not in text and "Potassium" not in text


def test_deliver_without_a_signing_key_sends_nothing_and_says_why(
    equipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = tmp_path / "result.hl7"
    result.write_bytes(oru("CLI-0002"))

    status = main(["deliver", str(result)])

    out = capsys.readouterr().out
    assert status == 1
    assert "sophie.martin via mail:sophie.martin@martin.mssante.example: failed" in out
    assert "no signing key for laboratory LABO-TEST" in out
    assert not (tmp_path / "var" / "outbox").exists() or not any(
        (tmp_path / "var" / "outbox" / "new").iterdir()
    )


def test_deliver_names_a_refused_message_and_exits_1(
    equipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.hl7"
    bad.write_bytes(oru("CLI-0003").replace(b"ORU^R01^ORU_R01", b"ADT^A01^ADT_A01"))

    status = main(["deliver", str(bad)])

    assert status == 1
    assert f"{bad} #1: REJECTED AR (UnsupportedMessageType)" in capsys.readouterr().out


def test_trace_of_an_unknown_control_id_is_one_clear_line(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["trace", "NOPE-1", "--lab", "LABO-TEST"])

    assert status == 2
    assert capsys.readouterr().err == (
        "labdispatch: no result with control ID NOPE-1 from laboratory LABO-TEST in the ledger\n"
    )


def test_dispatch_with_nothing_due_says_so(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dispatch"]) == 0
    assert capsys.readouterr().out == "nothing due\n"


def test_an_internal_error_is_logged_as_one_line_without_traceback_or_data() -> None:
    script = (
        "import logging\n"
        "from workers.cli import _configure_logging\n"
        "_configure_logging()\n"
        "try:\n"
        "    raise RuntimeError('DUPONT Hélène K+ 5.9')\n"
        "except RuntimeError:\n"
        "    logging.getLogger('pipeline.delivery.deliver').exception("
        "'sending delivery %s failed', 7)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "LABDISPATCH_DEBUG"},
    )

    assert done.returncode == 0
    assert done.stderr == "labdispatch: ERROR: sending delivery 7 failed\n"


def test_deliver_says_a_training_message_is_held(
    equipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = tmp_path / "training.hl7"
    result.write_bytes(oru("CLI-T").replace(b"|P|2.5|", b"|T|2.5|"))

    status = main(["deliver", str(result)])

    assert status == 0
    assert capsys.readouterr().out == (
        f"{result} #1: LABO-TEST CLI-T: recorded and held, not delivered: processing ID T is "
        "not delivered here (LABDISPATCH_DELIVER_PROCESSING_IDS)\n"
    )


def test_a_ledger_copied_without_its_storage_key_is_refused_naming_the_key_id(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ledger holds results; its key file is gone (a copy made without it) or replaced:
    no command makes up a new key over it. It says which key id is missing, exits 2, shows
    no traceback, and writes nothing (the next run with the key restored works)."""
    first = tmp_path / "first.hl7"
    first.write_bytes(oru("KEY-1"))
    assert main(["deliver", "--no-send", str(first)]) == 1  # recorded; unroutable (no directory)
    key_file = Path(os.environ.get("LABDISPATCH_STORAGE_KEY_FILE", tmp_path / "var/storage.key"))
    original = key_file.read_bytes()
    key_id = StorageCipher.from_file(key_file).current
    capsys.readouterr()
    second = tmp_path / "second.hl7"
    second.write_bytes(oru("KEY-2"))

    if cli_env.startswith("sqlite"):
        key_file.unlink()  # the embedded key would be created afresh
    else:
        key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")  # replaced
    status = main(["deliver", "--no-send", str(second)])

    err = capsys.readouterr().err
    assert status == 2
    assert f"storage key id {key_id}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    if cli_env.startswith("sqlite"):
        assert not key_file.exists()  # no new key was written over the ledger's rows
    key_file.write_bytes(original)
    assert main(["deliver", "--no-send", str(second)]) == 1
    assert main(["trace", "KEY-2"]) == 0  # recorded once the key was back


def test_under_debug_a_logged_traceback_shows_where_but_not_the_exceptions_text() -> None:
    """LABDISPATCH_DEBUG=1 is for a developer; an exception's text may still quote a result
    (a process's `exc_info`, e.g. the MLLP listener's or the folder watcher's)."""
    script = (
        "import logging\n"
        "from workers.cli import _configure_logging\n"
        "_configure_logging()\n"
        "value = 'DUPONT ' + 'Hélène K+ 5.9'\n"
        "def deliver():\n"
        "    raise RuntimeError(value)\n"
        "try:\n"
        "    deliver()\n"
        "except RuntimeError:\n"
        "    logging.getLogger('workers.mllp.server').error('frame failed', exc_info=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LABDISPATCH_DEBUG": "1"},
    )

    assert done.returncode == 0
    assert done.stderr.startswith("labdispatch: ERROR workers.mllp.server: frame failed\n")
    assert "Traceback (most recent call last):" in done.stderr
    assert ", in deliver\n" in done.stderr and "RuntimeError (its text is not logged" in done.stderr
    assert "DUPONT" not in done.stderr and "5.9" not in done.stderr
