"""Adoption on the hand-built ledger of `seed.py` (directory as of 2026-12-10)."""

from __future__ import annotations

from datetime import date

from sqlalchemy.orm import Session

from pipeline.stats.adoption import AdoptionStats, adoption_stats, directory_adoption
from pipeline.stats.period import day_period
from tests.pipeline.stats.seed import NOW, seed_november

NOVEMBER = day_period(date(2026, 11, 1), date(2026, 11, 30))

Row = AdoptionStats


def test_per_laboratory_per_specialty_and_whole_directory(session: Session) -> None:
    seed_november(session)

    rows = adoption_stats(session, NOVEMBER, now=NOW)

    assert rows == [
        # Equipped: r-gp1, r-gp2 (general practice), r-card (cardiology), r-unk (unknown);
        # not r-nocert (expired certificate) nor r-nochan (no channel).
        # Active in November: r-gp1 (d1 read 11-02; e1's MDN processed 11-16) and r-card
        # (d9 read 11-05). Not: r-gp2 (a DSN and an MDN "failed" only, its MDN displayed is
        # December), r-unk (read on 12-05).
        Row("*", "*", 4, 2),
        Row("*", "cardiology", 1, 1),
        Row("*", "general practice", 2, 1),
        Row("*", "unknown", 1, 0),
        # LABA addressed r-gp1 r-gp2 r-card r-unk (and r-nocert, not equipped): 4; active on
        # LABA's deliveries: r-gp1 (d1), r-card (d9: an October message, read in November).
        Row("LABA", "*", 4, 2),
        Row("LABA", "cardiology", 1, 1),
        Row("LABA", "general practice", 2, 1),
        Row("LABA", "unknown", 1, 0),
        # LABB addressed r-gp1, r-card, r-gp2: 3; active on LABB's deliveries: r-gp1 (MDN
        # processed on e1). r-card read only a LABA result: not active for LABB.
        Row("LABB", "*", 3, 1),
        Row("LABB", "cardiology", 1, 0),
        Row("LABB", "general practice", 2, 1),
    ]
    assert rows[0].rate == 0.5
    assert rows[-3].rate == 1 / 3  # LABB


def test_a_laboratory_sees_only_its_own_rows(session: Session) -> None:
    seed_november(session)

    rows = adoption_stats(session, NOVEMBER, laboratory="LABB", now=NOW)

    assert [(r.laboratory, r.specialty, r.equipped, r.active) for r in rows] == [
        ("LABB", "*", 3, 1),
        ("LABB", "cardiology", 1, 0),
        ("LABB", "general practice", 2, 1),
    ]


def test_december_counts_the_reads_and_receipts_of_december(session: Session) -> None:
    seed_november(session)
    december = day_period(date(2026, 12, 1), date(2026, 12, 31))

    # Active in December: r-unk (d5 read 12-05), r-gp2 (MDN displayed on d7, 12-02).
    assert directory_adoption(session, december, now=NOW) == (4, 2)


def test_no_rate_without_equipped_recipients() -> None:
    assert Row("LABX", "*", 0, 0).rate is None
