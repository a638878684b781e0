"""POST /v1/results with HPRIM: recognised from its first bytes, recorded like HL7, and a
laboratory's token may not submit a file another laboratory's H record names."""

from __future__ import annotations

from sqlalchemy import select

from pipeline.ledger.models import Message, Rejection
from tests.pipeline.hprim.builders import end, header, order, patient, result, sante
from tests.support import eventually
from tests.workers.api.conftest import LAB_A, LAB_B, Api


def _file(laboratory: str, file_id: str) -> bytes:
    return sante(header(f3=file_id, f5=f"{laboratory}~Labo"), patient(), order(), result(), end())


def test_hprim_sent_as_text_plain_is_recorded_and_routed(api: Api) -> None:
    response = api.post_result(_file(LAB_A, "F1.HPR"), "lab_a", **{"Content-Type": "text/plain"})
    assert response.status_code == 200, response.text
    (entry,) = response.json()["messages"]
    assert (entry["control_id"], entry["status"], entry["ack"]) == (
        "F1.HPR-202611281015-1",
        "accepted",
        None,
    )
    with api.sessions() as session:
        stored = session.scalars(select(Message)).one()
        assert (stored.format, stored.laboratory) == ("hprim-sante", LAB_A)
    eventually(lambda: api.routed == [stored.id])


def test_a_malformed_hprim_file_is_refused_with_line_field_and_reason(api: Api) -> None:
    data = _file(LAB_A, "F2.HPR").replace(b"L|1|||\r", b"L|1||3|\r")
    response = api.post_result(data, "lab_a", **{"Content-Type": "application/octet-stream"})
    assert response.status_code == 422
    (entry,) = response.json()["messages"]
    assert entry["status"] == "rejected"
    assert entry["reason"].startswith("line 5 (L record), field 4: L-4 says 3 P")
    with api.sessions() as session:
        rejection = session.scalars(select(Rejection)).one()
        assert (rejection.laboratory, rejection.control_id) == (LAB_A, "F2.HPR")


def test_a_lab_token_cannot_submit_another_laboratorys_hprim_file(api: Api) -> None:
    response = api.post_result(_file(LAB_B, "F3.HPR"), "lab_a", **{"Content-Type": "text/plain"})
    assert response.status_code == 422
    (entry,) = response.json()["messages"]
    assert entry["status"] == "rejected" and "H-5 names laboratory" in entry["reason"]
    with api.sessions() as session:
        assert session.scalars(select(Message)).all() == []
        assert session.scalars(select(Rejection)).all() == []
