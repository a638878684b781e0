"""POST /v1/results: the MLLP terms over HTTP (committed before the answer, one ACK per
message, refusals quarantined), and a laboratory's token submitting its own results only."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.ledger.models import Message, Rejection
from tests.support import eventually
from tests.workers.api.conftest import HL7, LAB_A, LAB_B, Api, result_of
from workers.api import results as results_module
from workers.api.results import NOT_STORED_REASON


def _messages(sessions: sessionmaker[Session]) -> list[Message]:
    with sessions() as session:
        return list(session.scalars(select(Message).order_by(Message.id)))


def _rejections(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Rejection)) or 0


def test_a_result_is_committed_then_answered_with_its_ack_and_handed_to_routing(
    api: Api,
) -> None:
    response = api.post_result(result_of(LAB_A, "A-1"), "lab_a")
    (stored,) = _messages(api.sessions)  # committed: visible to another session at once

    assert response.status_code == 200
    (entry,) = response.json()["messages"]
    assert entry["message_id"] == stored.id
    assert (entry["control_id"], entry["status"], entry["ack_code"]) == ("A-1", "accepted", "AA")
    assert entry["ack"].startswith("MSH|^~\\&|LABDISPATCH|LABDISPATCH|SIL-DEMO|LABO-A|")
    assert "\rMSA|AA|A-1\r" in entry["ack"]
    assert (stored.laboratory, stored.control_id, stored.source) == (LAB_A, "A-1", "api")
    assert stored.source_name.startswith(f"token #{api.token_ids['lab_a']} (lab {LAB_A}) from ")
    eventually(lambda: api.routed == [stored.id])


def test_a_batch_gets_one_answer_per_message_in_order_and_422_for_the_refused_one(
    api: Api,
) -> None:
    # Text before the first MSH is a message of its own, which intake refuses.
    body = b"PID|not a message header\r" + result_of(LAB_A, "B-1") + result_of(LAB_A, "B-2")

    response = api.post_result(body, "lab_a")

    assert response.status_code == 422
    answers = response.json()["messages"]
    assert [(a["control_id"], a["status"], a["ack_code"]) for a in answers] == [
        ("", "rejected", "AR"),
        ("B-1", "accepted", "AA"),
        ("B-2", "accepted", "AA"),
    ]
    assert answers[0]["message_id"] is None and "MSH" in answers[0]["reason"]
    assert [m.control_id for m in _messages(api.sessions)] == ["B-1", "B-2"]
    assert _rejections(api.sessions) == 1  # quarantined, as over MLLP
    eventually(lambda: sorted(api.routed) == [a["message_id"] for a in answers if a["message_id"]])


def test_a_resent_result_is_a_duplicate_recorded_and_routed_once(api: Api) -> None:
    first = api.post_result(result_of(LAB_A, "D-1"), "lab_a").json()["messages"][0]
    again = api.post_result(result_of(LAB_A, "D-1"), "lab_a")

    assert again.status_code == 200
    (entry,) = again.json()["messages"]
    assert (entry["status"], entry["ack_code"], entry["message_id"]) == (
        "duplicate",
        "AA",
        first["message_id"],
    )
    assert len(_messages(api.sessions)) == 1
    eventually(lambda: api.routed == [first["message_id"]])
    time.sleep(0.05)  # a second hand-over would come right behind the first; none does
    assert api.routed == [first["message_id"]]


def test_a_training_message_is_held_and_said_so(api: Api) -> None:
    response = api.post_result(result_of(LAB_A, "T-1", msh_11="T"), "lab_a")

    assert response.status_code == 200
    (entry,) = response.json()["messages"]
    assert entry["status"] == "held" and "processing ID T" in entry["reason"]
    assert _messages(api.sessions)[0].state == "held"


def test_a_lab_token_cannot_submit_another_laboratorys_result(api: Api) -> None:
    response = api.post_result(result_of(LAB_A, "FOREIGN-1"), "lab_b")

    assert response.status_code == 422
    (entry,) = response.json()["messages"]
    assert (entry["status"], entry["ack_code"], entry["message_id"]) == ("rejected", "AR", None)
    assert "MSH-4" in entry["reason"] and LAB_A in entry["reason"] and LAB_B in entry["reason"]
    assert "\rMSA|AR|FOREIGN-1|" in entry["ack"]
    # Recorded nowhere: not as a result, not in quarantine under LABO-A's name.
    assert _messages(api.sessions) == [] and _rejections(api.sessions) == 0
    assert api.routed == []


def test_a_lab_tokens_mixed_batch_records_its_own_and_refuses_the_rest_in_order(
    api: Api,
) -> None:
    body = result_of(LAB_A, "M-1") + result_of(LAB_B, "M-2") + result_of(LAB_A, "M-3")

    response = api.post_result(body, "lab_a")

    assert response.status_code == 422
    answers = response.json()["messages"]
    assert [(a["control_id"], a["status"]) for a in answers] == [
        ("M-1", "accepted"),
        ("M-2", "rejected"),
        ("M-3", "accepted"),
    ]
    stored = _messages(api.sessions)
    assert [(m.laboratory, m.control_id) for m in stored] == [(LAB_A, "M-1"), (LAB_A, "M-3")]
    assert _rejections(api.sessions) == 0


def test_an_admin_token_submits_for_any_laboratory(api: Api) -> None:
    body = result_of(LAB_A, "ADM-1") + result_of(LAB_B, "ADM-2")

    response = api.post_result(body, "admin")

    assert response.status_code == 200
    assert [m.laboratory for m in _messages(api.sessions)] == [LAB_A, LAB_B]


def test_accept_hl7_answers_with_the_acks_themselves(api: Api) -> None:
    body = result_of(LAB_A, "E-1") + result_of(LAB_A, "E-2")

    response = api.post_result(body, "lab_a", Accept="application/hl7-v2")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/hl7-v2"
    acks = response.content.split(b"MSH|")[1:]
    assert [b"\rMSA|AA|E-1\r" in acks[0], b"\rMSA|AA|E-2\r" in acks[1]] == [True, True]


def test_enhanced_mode_gets_the_accept_ack_it_asked_for_or_none(api: Api) -> None:
    body = result_of(LAB_A, "C-1", msh_15="AL") + result_of(LAB_A, "C-2", msh_15="NE")

    response = api.post_result(body, "lab_a")

    first, second = response.json()["messages"]
    assert (first["ack_code"], "\rMSA|CA|C-1\r" in first["ack"]) == ("CA", True)
    assert (second["status"], second["ack"]) == ("accepted", None)  # MSH-15 NE: no ACK


@pytest.mark.parametrize("content_type", ["x-application/hl7-v2+er7", "text/plain; charset=utf-8"])
def test_the_other_hl7_content_types_are_taken(api: Api, content_type: str) -> None:
    response = api.post_result(result_of(LAB_A, "CT-1"), "lab_a", **{"Content-Type": content_type})

    assert response.status_code == 200


def test_a_body_that_is_not_hl7_by_its_type_is_refused_with_415(api: Api) -> None:
    response = api.post_result(b'{"hl7": "no"}', "lab_a", **{"Content-Type": "application/json"})

    assert response.status_code == 415
    assert "application/hl7-v2" in response.json()["error"]
    assert _messages(api.sessions) == []


def test_an_oversized_body_is_refused_with_413_and_not_recorded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "MAX_BODY_BYTES", 2000)
    body = result_of(LAB_A, "BIG-1") * 3  # three messages, ~2.8 kB

    declared = api.post_result(body, "lab_a")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield from (body[start : start + 500] for start in range(0, len(body), 500))

    streamed = api.client.post(
        "/v1/results", content=chunks(), headers={**HL7, **api.auth("lab_a")}
    )

    for response in (declared, streamed):
        assert response.status_code == 413
        assert "2000 bytes" in response.json()["error"]
    assert _messages(api.sessions) == [] and _rejections(api.sessions) == 0


def _break_the_ledger(engine: Engine) -> None:
    """The results table is gone: the token still reads, intake cannot write."""
    url = make_url(str(engine.url.render_as_string(hide_password=False)))
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        with sqlite3.connect(url.database) as connection:
            connection.execute("PRAGMA foreign_keys=OFF")
            connection.execute("DROP TABLE messages")
        return
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE messages CASCADE"))


def test_when_the_ledger_cannot_record_the_answer_is_503_ae_send_again(
    api: Api, engine: Engine
) -> None:
    _break_the_ledger(engine)

    response = api.post_result(result_of(LAB_A, "LOST-1", msh_15="AL"), "lab_a")
    er7 = api.post_result(result_of(LAB_A, "LOST-2"), "lab_a", Accept="application/hl7-v2")

    assert response.status_code == 503 and response.headers["retry-after"]
    (entry,) = response.json()["messages"]
    assert (entry["status"], entry["message_id"], entry["ack_code"]) == ("not_stored", None, "CE")
    assert entry["reason"] == NOT_STORED_REASON
    assert er7.status_code == 503 and b"\rMSA|AE|LOST-2|not stored" in er7.content
    assert api.routed == []


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("commit refused"),
        OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error")),
    ],
    ids=["error", "database-error"],
)
def test_when_the_commit_itself_fails_the_answer_is_ae_503_nothing_stored_nothing_routed(
    api: Api, failure: Exception
) -> None:
    """ARCHITECTURE rule 1 at its sharpest: intake recorded everything (flushed), then the
    COMMIT fails. No AA may leave, nothing may be kept, nothing may be routed."""

    def refuse(session: Session) -> None:
        # Intake's COMMIT only: not a SAVEPOINT's release inside it, nor another thread's.
        if threading.current_thread().name == "api-committer" and (
            not session.in_nested_transaction()
        ):
            raise failure

    body = result_of(LAB_A, "COMMIT-1") + b"MSH|^~\\&|LIS|" + LAB_A.encode() + b"\rPID|\r"
    event.listen(api.sessions, "before_commit", refuse)
    try:
        response = api.post_result(body, "lab_a")
        er7 = api.post_result(result_of(LAB_A, "COMMIT-2"), "lab_a", Accept="application/hl7-v2")
    finally:
        event.remove(api.sessions, "before_commit", refuse)

    assert response.status_code == er7.status_code == 503
    entries = response.json()["messages"]
    assert [(e["status"], e["message_id"], e["ack_code"]) for e in entries] == [
        ("not_stored", None, "AE"),
        ("not_stored", None, "AE"),
    ]
    assert all("\rMSA|AE|" in e["ack"] and "\rMSA|AA|" not in e["ack"] for e in entries)
    assert b"\rMSA|AE|COMMIT-2|not stored" in er7.content and b"MSA|AA" not in er7.content
    assert _messages(api.sessions) == [] and _rejections(api.sessions) == 0
    # The ledger itself is fine: the same result sent again is recorded and routed. The
    # committer's thread hands work to routing in order, so once this one is there, any
    # (wrongful) routing of the refused commits would be there before it.
    again = api.post_result(result_of(LAB_A, "COMMIT-2"), "lab_a")
    assert again.status_code == 200
    eventually(lambda: bool(api.routed))
    assert api.routed == [again.json()["messages"][0]["message_id"]]


def _undecodable(laboratory: str, control_id: str, how: str) -> bytes:
    """A result that cannot be decoded: a Latin-1 byte (é as 0xE9) in a message that says
    UTF-8, or a character set MSH-18 names that does not exist."""
    if how == "bad-byte":
        data = result_of(laboratory, control_id)
        assert "Hélène".encode() in data
        return data.replace("Hélène".encode(), "Hélène".encode("latin-1"))
    return result_of(laboratory, control_id, msh_18="KLINGON")


def _rejected_under(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions() as session:
        rows = session.execute(select(Rejection.laboratory, Rejection.control_id))
        return sorted((laboratory, control_id) for laboratory, control_id in rows)


@pytest.mark.parametrize("how", ["bad-byte", "unknown-charset"])
def test_a_lab_tokens_undecodable_message_naming_another_laboratory_is_stored_nowhere(
    api: Api, how: str
) -> None:
    """LABO-B's token sends, in LABO-A's name, what cannot be decoded: AR naming MSH-4, and
    no quarantine row under LABO-A (it would show on LABO-A's dashboard and be billed to it
    as `rejected`), as for a readable message in another's name (docs/api.md)."""
    alone = api.post_result(_undecodable(LAB_A, "ENC-1", how), "lab_b")
    batch = api.post_result(result_of(LAB_B, "ENC-2") + _undecodable(LAB_A, "ENC-3", how), "lab_b")

    assert alone.status_code == batch.status_code == 422
    (refused,) = alone.json()["messages"]
    own, foreign = batch.json()["messages"]
    for entry in (refused, foreign):
        assert (entry["status"], entry["ack_code"], entry["message_id"]) == ("rejected", "AR", None)
        assert "MSH-4" in entry["reason"] and LAB_A in entry["reason"]
    assert own["status"] == "accepted"
    assert [(m.laboratory, m.control_id) for m in _messages(api.sessions)] == [(LAB_B, "ENC-2")]
    assert _rejected_under(api.sessions) == []


@pytest.mark.parametrize("how", ["bad-byte", "unknown-charset"])
def test_a_lab_tokens_own_undecodable_message_is_quarantined_under_its_laboratory(
    api: Api, how: str
) -> None:
    response = api.post_result(_undecodable(LAB_B, "ENC-4", how), "lab_b")

    assert response.status_code == 422
    (entry,) = response.json()["messages"]
    assert (entry["status"], entry["ack_code"]) == ("rejected", "AR")
    assert _rejected_under(api.sessions) == [(LAB_B, "ENC-4")]
