from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pipeline.db import database_url as parse_url
from workers.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_import_prints_a_summary_and_exits_0(
    cli_env: str, directory_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["directory", "import", str(directory_dir / "valid.csv")])

    out, err = capsys.readouterr()
    assert status == 0
    assert out == "imported 4 rows: 4 created, 0 updated, 0 unchanged; 0 rejected\n"
    assert err == ""


def test_reimport_counts_unchanged_rows(
    cli_env: str, directory_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["directory", "import", str(directory_dir / "valid.csv")])
    capsys.readouterr()

    status = main(["directory", "import", str(directory_dir / "valid.csv")])

    assert status == 0
    assert capsys.readouterr().out.startswith("imported 4 rows: 0 created, 0 updated, 4 unchanged")


def test_rejected_rows_go_to_stderr_by_line_and_column_and_exit_1(
    cli_env: str, directory_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = directory_dir / "bad_rows.csv"

    status = main(["directory", "import", str(path)])

    out, err = capsys.readouterr()
    assert status == 1
    assert out == "imported 3 rows: 3 created, 0 updated, 0 unchanged; 7 rejected\n"
    lines = err.splitlines()
    assert len(lines) == 8
    assert lines[0].startswith(f"{path}:3: column kind: ")
    assert any(line.startswith(f"{path}:13: column channels: ") for line in lines)


def test_kept_rows_are_committed(
    cli_env: str, directory_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["directory", "import", str(directory_dir / "bad_rows.csv")])
    capsys.readouterr()

    assert main(["directory", "show", "good-two"]) == 0
    assert "LABO-NORD=T3" in capsys.readouterr().out


def test_show_prints_the_recipient(
    cli_env: str, directory_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["directory", "import", str(directory_dir / "valid.csv")])
    capsys.readouterr()

    status = main(["directory", "show", "IDNPS:810001234567"])

    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith("dr-martin  Dr Claire Martin\n")
    assert "1. mail:claire.martin@mssante.example" in out
    assert "2. https:https://dpi.clinique.example:8443/inbox" in out


def test_show_json(cli_env: str, directory_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["directory", "import", str(directory_dir / "valid.csv")])
    capsys.readouterr()

    status = main(["directory", "show", "LABO-SUD=DR7", "--json"])

    data = json.loads(capsys.readouterr().out)
    assert status == 0
    assert data["key"] == "dr-bernard"
    assert data["certificates"][0]["expired"] is True


def test_show_unknown_is_one_line_and_exit_2(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["directory", "show", "RPPS:19999999999"])

    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert err == "labdispatch: RPPS 19999999999 is not in the directory\n"


def _run(*args: str, database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LABDISPATCH_DATABASE_URL": database_url,
        "LABDISPATCH_VAR_DIR": str(tmp_path / "var"),
    }
    env.pop("LABDISPATCH_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_missing_file_in_a_real_process_is_one_line_without_traceback(
    database_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.csv"

    result = _run("directory", "import", str(missing), database_url=database_url, tmp_path=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"labdispatch: cannot read directory file {missing}: No such file or directory"
    ]


def test_bad_header_in_a_real_process_is_one_line_without_traceback(
    database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("key,kind,fullname\ndr-a,clinician,Dr A\n", encoding="utf-8")

    result = _run("directory", "import", str(path), database_url=database_url, tmp_path=tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"{path}:1: unknown column(s) 'fullname'; missing required column(s) name"
    )


def test_import_keeps_no_patient_identity_in_clear_and_show_finds_the_patient_by_ins(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example directory's patient row (name, INS) through the command line: neither
    is stored, and `directory show INS:...` still finds the patient."""
    path = tmp_path / "directory.csv"
    path.write_text(
        "key,kind,name,identifiers,channels\n"
        "p-0001,patient,DUPONT Hélène,INS:248125612345678,mailbox:p-0001\n",
        encoding="utf-8",
    )
    assert main(["directory", "import", str(path)]) == 0
    capsys.readouterr()

    status = main(["directory", "show", "INS:248125612345678", "--json"])

    shown = json.loads(capsys.readouterr().out)
    assert status == 0 and shown["key"] == "p-0001" and shown["name"] == "(patient)"
    assert "248125612345678" not in json.dumps(shown)
    engine = create_engine(parse_url(cli_env))
    try:
        with engine.connect() as connection:
            rows = [
                str(value)
                for table in ("recipients", "recipient_identifiers", "recipient_channels")
                for row in connection.execute(text(f"SELECT * FROM {table}"))
                for value in row
            ]
    finally:
        engine.dispose()
    assert rows and not [v for v in rows if "248125612345678" in v or "DUPONT" in v]


def test_import_national_prints_a_summary_then_no_change_and_refuses_a_bad_file_in_one_line(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.bench.national_files import Person, person_row, write_mssante

    name = "Extraction_Correspondance_MSSante_202612040800.txt"
    people = [
        Person(f"1000000000{n}", f"NOM{n}", "Prénom", f"dr{n}@x.mssante.fr") for n in range(3)
    ]
    path = write_mssante(tmp_path / name, [person_row(p) for p in people])

    assert main(["directory", "import-national", str(path)]) == 0
    first = capsys.readouterr()
    assert main(["directory", "import-national", str(path)]) == 0
    again = capsys.readouterr()
    write_mssante(path, [person_row(people[0]), person_row(people[1]).replace("|true|", "|maybe|")])
    status = main(["directory", "import-national", str(path)])
    refused = capsys.readouterr()

    assert "recipients 3 created" in first.out and "mailboxes 3 added" in first.out
    assert first.err == ""  # no progress line when not on a terminal
    assert again.out.rstrip().endswith("(no change)")
    assert status == 2 and refused.out == ""
    assert refused.err == (
        f"labdispatch: {path}:3: column 18 (Dématérialisation): 'maybe' is neither true nor "
        "false; nothing was imported\n"
    )
