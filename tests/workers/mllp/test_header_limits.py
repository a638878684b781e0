"""Header fields longer than the ledger keeps: the same AR on SQLite and PostgreSQL, and the
message kept in quarantine (never an AE "send it again" the LIS would repeat forever)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.ledger.models import Message, Rejection
from tests.support import set_msh
from tests.workers.mllp.conftest import RunningServer, result_message


@pytest.mark.parametrize(
    ("fields", "named", "limit"),
    [
        ({4: "L" * 65}, "MSH-4", 64),
        ({10: "C" * 200}, "MSH-10", 199),
        ({3: "A" * 65, 4: ""}, "MSH-3", 64),
    ],
    ids=["sending-facility", "control-id", "application-without-facility"],
)
def test_an_over_long_header_field_is_refused_with_ar_naming_it_and_quarantined(
    mllp: RunningServer,
    ledger: sessionmaker[Session],
    fields: dict[int, str],
    named: str,
    limit: int,
) -> None:
    message = set_msh(result_message("LONG-1"), fields)
    with mllp.client() as client:
        reply = client.exchange(message)
        after = client.exchange(result_message("AFTER-LONG"))
    assert reply.code == "AR", reply.reasons
    assert any(named in reason and str(limit) in reason for reason in reply.reasons)
    assert after.code == "AA"
    with ledger() as session:
        assert session.scalars(select(Message.control_id)).all() == ["AFTER-LONG"]
        (rejection,) = session.scalars(select(Rejection)).all()
        assert (rejection.ack_code, rejection.source) == ("AR", "mllp")
        assert named in rejection.reason
        assert len(rejection.laboratory) <= 64
        assert len(rejection.control_id) <= 199


def test_a_field_at_its_limit_is_accepted(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    message = set_msh(result_message("X"), {4: "L" * 64, 10: "C" * 199})
    with mllp.client() as client:
        assert client.exchange(message).code == "AA"
    with ledger() as session:
        (stored,) = session.scalars(select(Message)).all()
        assert (stored.laboratory, stored.control_id) == ("L" * 64, "C" * 199)


def test_a_refused_message_whose_header_holds_a_nul_is_still_quarantined(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    """PostgreSQL text cannot hold U+0000: the quarantine row must not carry it raw."""
    message = set_msh(result_message("X"), {4: "LAB\x00" + "L" * 80, 10: "NUL\x00ID"})
    with mllp.client() as client:
        reply = client.exchange(message)
    assert reply.code in ("AE", "AR")
    assert not any("unavailable" in reason for reason in reply.reasons), reply.reasons
    with ledger() as session:
        (rejection,) = session.scalars(select(Rejection)).all()
        assert "\x00" not in rejection.laboratory + rejection.control_id
        assert len(rejection.laboratory) <= 64
