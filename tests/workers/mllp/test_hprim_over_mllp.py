"""HPRIM over MLLP: refused with an AR that says where HPRIM goes, never recorded and left
unanswered (HPRIM has no acknowledgement an MLLP sender could wait for)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.ledger.models import Message, Rejection
from tests.pipeline.hprim.builders import medecins, medecins_report, sante, simple
from tests.workers.mllp.conftest import RunningServer, result_message


def test_an_hprim_frame_gets_ar_saying_where_hprim_goes_and_is_only_quarantined(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    with mllp.client() as client:
        replies = [
            client.exchange(sante(*simple())),
            client.exchange(medecins(medecins_report())),
            client.exchange(result_message("AFTER-HPRIM")),
        ]
    for reply in replies[:2]:
        assert reply.code == "AR", reply.reasons
        assert any("not taken over MLLP" in reason for reason in reply.reasons), reply.reasons
        assert any("/v1/results" in reason for reason in reply.reasons)
    assert replies[2].code == "AA"
    with ledger() as session:
        assert session.scalars(select(Message.control_id)).all() == ["AFTER-HPRIM"]
        rejections = session.scalars(select(Rejection)).all()
        assert [(r.ack_code, r.source) for r in rejections] == [("AR", "mllp")] * 2
