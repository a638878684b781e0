"""The MLLP clients: reading ACKs as a sender would, addresses, and the pipelined `push`."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.hl7.ack import AckContext, AckIssue, build_ack
from pipeline.hl7.errors import Location
from pipeline.ledger.models import Message
from tests.workers.mllp.conftest import FIXTURES, RunningServer, result_message
from workers.mllp.client import AckReply, MllpError, parse_address, push


def test_ack_reply_reads_code_control_id_and_v25_reasons() -> None:
    context = AckContext(control_id="C\\F\\1", version="2.5")  # as written in MSH-10
    ack = build_ack(
        context,
        "AE",
        [AckIssue("OBX-5 is not a number"), AckIssue.warning("only a warning")],
    )
    reply = AckReply.parse(ack.encode())
    assert (reply.code, reply.control_id) == ("AE", "C|1")
    assert reply.reasons == ("OBX-5 is not a number",)  # warnings are not reasons
    assert not reply.accepted


def test_ack_reply_reads_v23_err_1_text() -> None:
    context = AckContext(control_id="OLD-1", version="2.3")
    issue = AckIssue("MSH-10 is empty", "101", "Required field missing", "E", Location("MSH"))
    reply = AckReply.parse(build_ack(context, "AR", [issue]).encode())
    assert reply.code == "AR"
    # Before 2.5 the reason rides in MSA-3; ERR-1 carries only the table 0357 text.
    assert reply.reasons == ("MSH-10 is empty",)


def test_ack_reply_of_a_latin1_ack() -> None:
    context = AckContext(control_id="É-1", charset="8859/1")
    ack = build_ack(context, "CA").encode("iso8859-1")
    reply = AckReply.parse(ack)
    assert (reply.code, reply.control_id, reply.accepted) == ("CA", "É-1", True)


def test_ack_reply_of_something_else_says_so() -> None:
    reply = AckReply.parse(b"HTTP/1.1 400 Bad Request\r\n")
    assert reply.code == ""
    assert reply.reasons == ("the answer is not an HL7 ACK",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mllp://lis.example:2600", ("lis.example", 2600)),
        ("MLLP://10.0.0.5:2575/", ("10.0.0.5", 2575)),
        ("lis.example:2601", ("lis.example", 2601)),
        ("lis.example", ("lis.example", 2575)),
        ("mllp://[::1]:2602", ("::1", 2602)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["http://lis:80", "mllp://:2575", "mllp://lis:port", "lis:70000"])
def test_parse_address_refuses_what_it_cannot_use(text: str) -> None:
    with pytest.raises(MllpError):
        parse_address(text)


def test_push_sends_everything_and_times_every_ack(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    messages = [result_message(f"PUSH-{n:04d}") for n in range(300)]
    messages.append((FIXTURES / "no_obr.hl7").read_bytes())
    report = asyncio.run(push("127.0.0.1", mllp.port, messages, connections=3, window=16))
    assert len(report.latencies) == 301
    assert all(0 < latency < 30 for latency in report.latencies)
    assert report.codes == {"AA": 300, "AE": 1}
    assert report.accepted == 300
    with ledger() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 300


def test_push_to_nothing_listening_says_it_cannot_connect(unused_port: int) -> None:
    with pytest.raises(MllpError, match=f"cannot connect to mllp://127.0.0.1:{unused_port}"):
        asyncio.run(push("127.0.0.1", unused_port, [b"MSH|"], connections=1))
