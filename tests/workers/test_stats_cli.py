"""`labdispatch stats` on the hand-built ledger of tests/pipeline/stats/seed.py."""

from __future__ import annotations

import csv
import io
import json

import pytest

from pipeline.db import open_database
from pipeline.settings import Settings
from tests.pipeline.stats.seed import seed_hprim, seed_november
from workers.cli import main

NOVEMBER = ["--from", "2026-11-01", "--to", "2026-11-30"]


@pytest.fixture
def ledger(cli_env: str) -> None:
    sessions = open_database(Settings.from_env())
    with sessions() as session:
        seed_november(session)
    sessions.kw["bind"].dispose()


def test_deliveries_as_json(ledger: None, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["stats", "deliveries", *NOVEMBER, "--format", "json"])

    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    assert json.loads(out) == [
        {"laboratory": "LABA", "group": "2026-11", "received": 5, "duplicates": 2,
         "rejected": 2, "unroutable": 1, "delivered": 4, "read": 2, "failed": 1, "retries": 7,
         "median_seconds_to_delivery": 25.0, "p95_seconds_to_delivery": 89.5},
        {"laboratory": "LABB", "group": "2026-11", "received": 2, "duplicates": 0,
         "rejected": 1, "unroutable": 0, "delivered": 1, "read": 0, "failed": 1, "retries": 4,
         "median_seconds_to_delivery": 40.0, "p95_seconds_to_delivery": 40.0},
    ]  # fmt: skip


def test_deliveries_by_channel_as_csv_for_one_lab(
    ledger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["stats", "deliveries", "--lab", "LABB", *NOVEMBER, "--group-by", "channel",
         "--format", "csv"]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert [
        (r["group"], r["received"], r["duplicates"], r["failed"], r["retries"]) for r in rows
    ] == [
        ("https", "1", "", "1", "3"),
        ("mail", "1", "", "0", "0"),
        ("mailbox", "1", "", "0", "1"),
    ]


def test_deliveries_as_a_table(ledger: None, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["stats", "deliveries", *NOVEMBER, "--lab", "LABA", "--group-by", "day"])

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines[0].split() == [
        "laboratory", "group", "received", "duplicates", "rejected", "unroutable",
        "delivered", "read", "failed", "retries", "median_seconds_to_delivery",
        "p95_seconds_to_delivery",
    ]  # fmt: skip
    assert lines[2].split() == ["LABA", "2026-11-01", "1", "1", "0", "0", "2", "1", "0", "1",
                                "15.0", "19.5"]  # fmt: skip
    assert lines[3].split()[-2:] == ["-", "-"]  # 11-02: nothing delivered
    assert len(lines) == 2 + 5


@pytest.fixture
def with_hprim(cli_env: str) -> None:
    sessions = open_database(Settings.from_env())
    with sessions() as session:
        seed_november(session)
        seed_hprim(session)
    sessions.kw["bind"].dispose()


def test_deliveries_by_format_as_json_csv_and_a_table(
    with_hprim: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The figures of tests/pipeline/stats/test_deliveries.py::test_by_format_per_laboratory."""
    by_format = ["stats", "deliveries", *NOVEMBER, "--lab", "LABB", "--group-by", "format"]

    assert main([*by_format, "--format", "json"]) == 0
    as_json = capsys.readouterr().out
    assert main([*by_format, "--format", "csv"]) == 0
    as_csv = capsys.readouterr().out
    assert main(by_format) == 0
    table = capsys.readouterr().out.splitlines()

    assert json.loads(as_json) == [
        {"laboratory": "LABB", "group": "hl7v2", "received": 2, "duplicates": 0,
         "rejected": None, "unroutable": 0, "delivered": 1, "read": 0, "failed": 1,
         "retries": 4, "median_seconds_to_delivery": 40.0, "p95_seconds_to_delivery": 40.0},
        {"laboratory": "LABB", "group": "hprim-medecins", "received": 1, "duplicates": 0,
         "rejected": None, "unroutable": 0, "delivered": 0, "read": 0, "failed": 1,
         "retries": 2, "median_seconds_to_delivery": None, "p95_seconds_to_delivery": None},
    ]  # fmt: skip
    assert [
        (r["group"], r["received"], r["rejected"], r["failed"], r["median_seconds_to_delivery"])
        for r in csv.DictReader(io.StringIO(as_csv, newline=""))
    ] == [("hl7v2", "2", "", "1", "40.0"), ("hprim-medecins", "1", "", "1", "")]
    assert table[2].split() == ["LABB", "hl7v2", "2", "0", "-", "0", "1", "0", "1", "4",
                                "40.0", "40.0"]  # fmt: skip
    assert table[3].split() == ["LABB", "hprim-medecins", "1", "0", "-", "0", "0", "0", "1",
                                "2", "-", "-"]  # fmt: skip


def test_adoption_as_json(ledger: None, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["stats", "adoption", *NOVEMBER, "--lab", "LABB", "--format", "json"])

    assert status == 0
    assert json.loads(capsys.readouterr().out) == [
        {"laboratory": "LABB", "specialty": "*", "equipped": 3, "active": 1, "rate": 1 / 3},
        {"laboratory": "LABB", "specialty": "cardiology", "equipped": 1, "active": 0,
         "rate": 0.0},
        {"laboratory": "LABB", "specialty": "general practice", "equipped": 2, "active": 1,
         "rate": 0.5},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--from", "2026-13-01"], "labdispatch: --from 2026-13-01: not a date (YYYY-MM-DD)\n"),
        (
            ["--from", "2026-11-30", "--to", "2026-11-01"],
            "labdispatch: --from 2026-11-30 is after --to 2026-11-01: the period is empty\n",
        ),
    ],
)
def test_a_bad_period_is_one_line_and_exit_2(
    cli_env: str, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["stats", "deliveries", *arguments])

    out, err = capsys.readouterr()
    assert (status, out, err) == (2, "", message)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["deliveries", "--from", "2025-01-01", "--to", "2026-11-30", "--group-by", "day"],
            "labdispatch: a report by day covers at most 366 days; 2025-01-01 to 2026-11-30 is "
            "699 days: ask for a shorter period or group by month\n",
        ),
        (
            ["deliveries", "--from", "0001-01-01", "--to", "2026-11-30"],
            "labdispatch: a report by month covers at most 60 months; 0001-01-01 to 2026-11-30 "
            "is 24311 months: ask for a shorter period\n",
        ),
        (
            ["adoption", "--from", "2025-01-01", "--to", "2026-11-30"],
            "labdispatch: an adoption report covers at most 366 days; 2025-01-01 to 2026-11-30 "
            "is 699 days: ask for a shorter period\n",
        ),
    ],
)
def test_a_period_too_long_for_the_report_is_one_line_naming_the_limit_and_exit_2(
    cli_env: str, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["stats", *arguments])

    out, err = capsys.readouterr()
    assert (status, out, err) == (2, "", message)
