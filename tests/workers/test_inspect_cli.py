"""`labdispatch inspect`: what an ops engineer sees of a laboratory's file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FIXTURES = ROOT / "tests" / "fixtures" / "hl7"
REQUIRED_KEYS = {
    "file",
    "control_id",
    "sender",
    "message_type",
    "version",
    "ok",
    "error",
    "recipients",
}
RECIPIENT_KEYS = {"id_type", "id", "name", "roles", "address"}


def _json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def test_json_gives_one_object_per_message_with_the_documented_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(
        [
            "inspect",
            "--json",
            "--no-directory",
            str(EXAMPLES / "results" / "batch_labo_bio_centre.hl7"),
        ]
    )

    records = _json_lines(capsys.readouterr().out)
    assert status == 0
    assert [record["control_id"] for record in records] == ["LBC-2026-000102", "LBC-2026-000103"]
    for record in records:
        assert set(record) >= REQUIRED_KEYS
        assert record["ok"] is True and record["error"] is None
        assert record["sender"] == "LABO-BIO-CENTRE"
        assert record["message_type"] == "ORU^R01"
        assert record["version"] == "2.5"
        for recipient in record["recipients"]:  # type: ignore[attr-defined]
            assert set(recipient) >= RECIPIENT_KEYS
    first = records[0]["recipients"][0]  # type: ignore[index]
    assert first["id_type"] == "RPPS" and first["id"] == "10001234567"
    assert first["roles"] == ["ordering"]


def test_rejected_message_names_file_index_and_reason_on_stderr_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = FIXTURES / "fr_prt_idnps_utf8.hl7"
    bad = FIXTURES / "declared_utf8_invalid_bytes.hl7"

    status = main(["inspect", "--json", "--no-directory", str(good), str(bad)])

    out, err = capsys.readouterr()
    assert status == 1
    records = _json_lines(out)
    assert [record["ok"] for record in records] == [True, False]
    assert records[1]["error"]["type"] == "UndecodableMessage"  # type: ignore[index]
    assert records[1]["error"]["location"] == "PID-5"  # type: ignore[index]
    assert records[1]["control_id"] == "BAD-UTF8"  # read from the refused message's MSH
    assert records[1]["sender"] == "LABO-BIO-CENTRE"
    assert err.startswith(f"{bad}: message 1: rejected (AR 102 UndecodableMessage): PID-5: ")


def test_every_message_of_a_batch_is_judged_on_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed = tmp_path / "mixed.hl7"
    mixed.write_bytes(
        (FIXTURES / "fr_prt_idnps_utf8.hl7").read_bytes()
        + (FIXTURES / "adt_a01.hl7").read_bytes()
        + (FIXTURES / "lf_only.hl7").read_bytes().replace(b"\n", b"\r")
    )

    status = main(["inspect", "--json", "--no-directory", str(mixed)])

    out, err = capsys.readouterr()
    assert status == 1
    assert [record["ok"] for record in _json_lines(out)] == [True, False, True]
    assert err.count("rejected") == 1 and ": message 2: " in err


def test_directory_knowledge_is_shown_per_recipient(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["directory", "import", str(EXAMPLES / "directory.csv")]) == 0
    capsys.readouterr()

    status = main(
        ["inspect", "--json", str(EXAMPLES / "results" / "glycemie_labsud_v23_latin1.hl7")]
    )

    (record,) = _json_lines(capsys.readouterr().out)
    assert status == 0
    known = {r["name"]: r["directory"] for r in record["recipients"]}  # type: ignore[attr-defined]
    assert known["DURAND Claire"]["known"] is True  # LABSUD's local code DR042
    assert known["DURAND Claire"]["key"] == "claire.durand"
    assert known["PETIT Marc"]["known"] is False
    assert "DR777" in known["PETIT Marc"]["reason"]
    assert known["ROUX Anne"]["known"] is False


def test_human_output_lists_recipients_and_directory_state(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["directory", "import", str(EXAMPLES / "directory.csv")])
    capsys.readouterr()

    status = main(["inspect", str(EXAMPLES / "results" / "cr_bio_labo_bio_centre.hl7")])

    out = capsys.readouterr().out
    assert status == 0
    assert "control LBC-2026-000101" in out and "status final" in out
    assert "directory: sophie.martin" in out
    assert "directory: helene.dupont" in out
    assert "NOT IN DIRECTORY" not in out


def test_strict_adds_hl7apy_conformance_findings(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "v23_local_codes_latin1.hl7"

    main(["inspect", "--json", "--strict", "--no-directory", str(path)])

    (record,) = _json_lines(capsys.readouterr().out)
    findings = record["conformance"]
    assert isinstance(findings, list)
    assert any(finding.startswith("ORC (line 4)") for finding in findings)


def test_missing_file_is_reported_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["inspect", "--no-directory", str(tmp_path / "nope.hl7")])

    err = capsys.readouterr().err
    assert status == 2
    assert err == f"{tmp_path / 'nope.hl7'}: cannot read: No such file or directory\n"


def test_no_traceback_reaches_the_user_on_garbage(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    env = {**os.environ, "LABDISPATCH_VAR_DIR": str(tmp_path / "var")}
    env.pop("LABDISPATCH_DEBUG", None)

    run = subprocess.run(
        [sys.executable, "-m", "workers.cli", "inspect", "--no-directory", str(garbage)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )

    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert "rejected" in run.stderr


def test_output_cut_short_by_a_pipe_is_not_an_internal_error(tmp_path: Path) -> None:
    env = {**os.environ, "LABDISPATCH_VAR_DIR": str(tmp_path / "var")}
    env.pop("LABDISPATCH_DEBUG", None)
    many = [str(EXAMPLES / "results" / "cr_bio_labo_bio_centre.hl7")] * 2000
    command = [sys.executable, "-m", "workers.cli", "inspect", "--no-directory", *many]

    run = subprocess.run(
        ["bash", "-c", '"$@" | head -n 1; echo "status ${PIPESTATUS[0]}" >&2', "_", *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )

    assert run.stdout.count("\n") == 1
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.strip().endswith("status 141")


def test_dash_reads_the_message_from_standard_input(tmp_path: Path) -> None:
    env = {**os.environ, "LABDISPATCH_VAR_DIR": str(tmp_path / "var")}
    data = (EXAMPLES / "results" / "cr_bio_labo_bio_centre.hl7").read_bytes()

    run = subprocess.run(
        [sys.executable, "-m", "workers.cli", "inspect", "--json", "--no-directory", "-"],
        input=data,
        capture_output=True,
        cwd=ROOT,
        env=env,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    (record,) = _json_lines(run.stdout.decode())
    assert record["file"] == "-" and record["control_id"] == "LBC-2026-000101"


def test_empty_file_says_so_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(b"\r\n\r\n")

    status = main(["inspect", "--no-directory", str(empty)])

    assert status == 1
    assert capsys.readouterr().err == f"{empty}: no HL7 message in the file\n"
