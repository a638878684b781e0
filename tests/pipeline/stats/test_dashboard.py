"""The dashboard snapshot on a small ledger, every figure worked out by hand.

now = 2026-11-29 10:30:15 UTC: the throughput buckets are the minutes 09:31 ... 10:30
(index i is 09:31 + i minutes); "the last 24 hours" starts 2026-11-28 10:30:15.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from pipeline.stats.dashboard import dashboard_snapshot, destination_name
from tests.pipeline.stats.seed import VALID, at, delivery, message, recipient, rejection

NOW = at("2026-11-29T10:30:15")


def seed(session: Session) -> None:
    r1 = recipient(session, "r1", "cardiology", ("mail", "r1@alpha.example"), VALID)
    recipient(session, "r2", None, ("mailbox", "r2"), VALID)
    recipient(session, "r3", None, ("mail", "r3@alpha.example"), None)  # no certificate
    session.flush()

    m1 = message("LAB", "M1", at("2026-11-29T10:30:05"), format="hprim-sante")  # bucket 59
    m2 = message("LAB", "M2", at("2026-11-29T09:31:00"))  # bucket 0
    m3 = message("LAB", "M3", at("2026-11-29T09:30:59"))  # before the window
    m4 = message("LAB", "M4", at("2026-11-29T10:00:00"), state="received")  # bucket 29
    old = message("LAB", "OLD", at("2026-11-27T08:00:00"), format="hprim-medecins")
    # The first instant of the last 24 hours, and the second before it.
    first = message("LAB", "FIRST", at("2026-11-28T10:30:15"), format="hprim-medecins")
    before = message("LAB", "BEFORE", at("2026-11-28T10:30:14"), format="hprim-sante")
    session.add_all([m1, m2, m3, m4, old, first, before])
    session.flush()
    session.add_all(
        [
            # Handed over at 10:30:10: bucket 59.
            delivery(m1, r1, "mail", "r1@Alpha.example", "accepted", attempts=1,
                     accepted=at("2026-11-29T10:30:10")),
            # Delivered 09:45 (bucket 14), read 10:10: counted once, at the first.
            delivery(m2, r1, "mailbox", "r1", "read", attempts=1,
                     delivered=at("2026-11-29T09:45:00"), read=at("2026-11-29T10:10:00")),
            # Failed at 10:00:30: bucket 29.
            delivery(m2, None, "https", "https://portal.example/x", "failed", attempts=3,
                     failed=at("2026-11-29T10:00:30")),
            delivery(old, r1, "mail", "r1@alpha.example", "delivered", attempts=1,
                     accepted=at("2026-11-27T08:00:05"), created=at("2026-11-27T08:00:01")),
            # Open: waiting to be sealed for 600 s.
            delivery(m3, None, "mail", "x@alpha.example", "pending",
                     created=at("2026-11-29T10:20:15")),
            # Open with an envelope: waiting to be sent for 3600 s and 300 s.
            delivery(m3, None, "mail", "y@beta.example", "retrying", attempts=2,
                     created=at("2026-11-29T09:30:15"), updated=at("2026-11-29T10:25:00"),
                     envelope=b"sealed"),
            delivery(m3, None, "https", "https://PORTAL.example/y", "pending",
                     created=at("2026-11-29T10:25:15"), envelope=b"sealed"),
            # Failed 2026-11-28 12:00, inside the last 24 hours.
            delivery(old, None, "mail", "z@ALPHA.example", "failed", attempts=5,
                     created=at("2026-11-28T11:00:00"), failed=at("2026-11-28T12:00:00")),
            # Failed 2026-11-28 09:00, before them.
            delivery(old, None, "mail", "w@alpha.example", "failed", attempts=5,
                     created=at("2026-11-28T08:00:00"), failed=at("2026-11-28T09:00:00")),
            delivery(m3, None, None, None, "unroutable", wanted="RPPS:1",
                     created=at("2026-11-29T09:30:59")),
        ]
    )  # fmt: skip
    for minute in range(21):  # 10:00 ... 10:20; the oldest falls off the 20 shown
        session.add(
            rejection("LAB", at("2026-11-29T10:00:00") + timedelta(minutes=minute), "AE",
                      control_id=f"R{minute}")
        )  # fmt: skip
    session.commit()


def test_snapshot_figures(session: Session) -> None:
    seed(session)

    figures = dashboard_snapshot(session, NOW).as_json()

    assert figures["generated_at"] == "2026-11-29T10:30:15+00:00"
    throughput = figures["throughput"]
    assert throughput["minutes"][0] == "2026-11-29T09:31:00+00:00"
    assert throughput["minutes"][-1] == "2026-11-29T10:30:00+00:00"
    assert len(throughput["minutes"]) == 60

    def only(**buckets: int) -> list[int]:
        counts = [0] * 60
        for index, count in buckets.items():
            counts[int(index[1:])] = count
        return counts

    # M2 at 09:31:00, M4 at 10:00, M1 at 10:30:05 (M3 at 09:30:59 is before).
    assert throughput["received"] == only(i0=1, i29=1, i59=1)
    assert throughput["delivered"] == only(i14=1, i59=1)
    assert throughput["failed"] == only(i29=1)
    # Created since 2026-11-28 10:30:15: all but the 11-27 delivery and the 11-28 08:00 one.
    assert figures["deliveries_by_state"] == {
        "pending": 2,
        "retrying": 1,
        "accepted": 1,
        "delivered": 0,
        "read": 1,
        "failed": 2,
        "unroutable": 1,
    }
    # Received since 2026-11-28 10:30:15: M2 M3 M4 (HL7 v2), M1 (HPRIM Santé), FIRST
    # (HPRIM Médecins, on the boundary); OLD and BEFORE are older.
    assert figures["received_by_format"] == {"hl7v2": 3, "hprim-sante": 1, "hprim-medecins": 1}
    assert figures["stages"] == [
        {"stage": "route", "waiting": 1, "oldest_age_seconds": 1815.0},  # M4, 10:00:00
        {"stage": "seal", "waiting": 1, "oldest_age_seconds": 600.0},
        {"stage": "send", "waiting": 2, "oldest_age_seconds": 3600.0},
    ]
    assert figures["slowest_destinations"] == [
        {"destination": "mail:beta.example", "open": 1, "oldest_age_seconds": 3600.0,
         "failed_24h": 0},
        # z@ALPHA.example failed at 11-28 12:00 (w@ at 09:00 is older than 24 h).
        {"destination": "mail:alpha.example", "open": 1, "oldest_age_seconds": 600.0,
         "failed_24h": 1},
        {"destination": "https:portal.example", "open": 1, "oldest_age_seconds": 300.0,
         "failed_24h": 1},
    ]  # fmt: skip
    rejects = figures["recent_rejects"]
    assert len(rejects) == 20
    assert rejects[0] == {
        "at": "2026-11-29T10:20:00+00:00",
        "laboratory": "LAB",
        "control_id": "R20",
        "ack_code": "AE",
        "reason": "OBR segment missing",
    }
    assert rejects[-1]["control_id"] == "R1"
    # r1 and r2 equipped (r3 has no certificate); r1 read a result on 11-29.
    assert figures["adoption"] == {"from": "2026-10-31", "to": "2026-11-29", "equipped": 2,
                                   "active": 1}  # fmt: skip


def test_an_empty_ledger_has_zeros_and_no_ages(session: Session) -> None:
    figures = dashboard_snapshot(session, NOW).as_json()

    assert figures["throughput"]["received"] == [0] * 60
    assert set(figures["deliveries_by_state"].values()) == {0}
    assert figures["received_by_format"] == {"hl7v2": 0, "hprim-sante": 0, "hprim-medecins": 0}
    assert [s["oldest_age_seconds"] for s in figures["stages"]] == [None, None, None]
    assert figures["slowest_destinations"] == []
    assert figures["recent_rejects"] == []


def test_destination_names() -> None:
    assert destination_name("mail", "Dr.Who@MSSante.example") == "mail:mssante.example"
    assert destination_name("https", "https://Dpi.example:8443/inbox") == "https:dpi.example"
    assert destination_name("mailbox", "dr-who") == "mailbox"
