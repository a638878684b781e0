from __future__ import annotations

from pipeline.stats.adoption import AdoptionStats
from pipeline.stats.deliveries import DeliveryStats
from pipeline.stats.render import as_csv, as_rows_json, as_table

ROWS = [
    DeliveryStats("LAB,A", "mail", 2, None, None, 0, 2, 2, 1, 4, 55.0, 95.5),
    DeliveryStats("LABB", "none", 1, None, None, 1, 0, 0, 0, 0, None, None),
]


def test_csv_is_rfc_4180_with_a_stable_header() -> None:
    assert as_csv(ROWS) == (
        "laboratory,group,received,duplicates,rejected,unroutable,delivered,read,failed,"
        "retries,median_seconds_to_delivery,p95_seconds_to_delivery\r\n"
        '"LAB,A",mail,2,,,0,2,2,1,4,55.0,95.5\r\n'
        "LABB,none,1,,,1,0,0,0,0,,\r\n"
    )


def test_csv_of_no_rows_is_the_header() -> None:
    assert as_csv([], AdoptionStats) == "laboratory,specialty,equipped,active,rate\r\n"


def test_json_rows_keep_nulls_and_add_derived_columns() -> None:
    assert as_rows_json([AdoptionStats("LABA", "*", 4, 1)]) == [
        {"laboratory": "LABA", "specialty": "*", "equipped": 4, "active": 1, "rate": 0.25}
    ]
    assert as_rows_json(ROWS)[1]["duplicates"] is None


def test_table_aligns_figures_right_and_shows_dashes() -> None:
    table = as_table([AdoptionStats("LABA", "*", 4, 1), AdoptionStats("LABB", "oncology", 10, 0)])

    assert table.splitlines() == [
        "laboratory  specialty  equipped  active   rate",
        "----------  ---------  --------  ------  -----",
        "LABA        *                 4       1  25.0%",
        "LABB        oncology         10       0   0.0%",
    ]
    assert "-" in as_table(ROWS).splitlines()[3].split()


def test_table_of_no_rows_says_so() -> None:
    assert as_table([], DeliveryStats) == "(nothing in this period)"
