"""The MLLP listener over real sockets and a real ledger (SQLite and PostgreSQL)."""

from __future__ import annotations

import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import make_engine, session_factory
from pipeline.delivery.intake import UNAVAILABLE_REASON
from pipeline.ledger.models import Event, Message, Rejection
from pipeline.settings import Settings
from tests.support import eventually, set_msh
from tests.workers.mllp.conftest import FIXTURES, RunningServer, StartServer, result_message
from workers.mllp.client import AckReply, MllpClient
from workers.mllp.framing import FrameDecoder, frame


def _messages(ledger: sessionmaker[Session], control_id: str | None = None) -> list[Message]:
    with ledger() as session:
        query = select(Message).order_by(Message.id)
        if control_id is not None:
            query = query.where(Message.control_id == control_id)
        return list(session.scalars(query))


def _count(ledger: sessionmaker[Session], model: type[Message] | type[Rejection]) -> int:
    with ledger() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _read_acks(sock: socket.socket, count: int, timeout: float = 30.0) -> list[AckReply]:
    """Read `count` ACK frames from a raw socket."""
    decoder = FrameDecoder()
    acks: list[AckReply] = []
    sock.settimeout(timeout)
    while len(acks) < count:
        data = sock.recv(65536)
        if not data:
            break
        acks.extend(AckReply.parse(item) for item in decoder.feed(data) if isinstance(item, bytes))
    return acks


def test_aa_arrives_only_once_the_message_is_committed(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    with mllp.client() as client:
        reply = client.exchange(result_message("COMMIT-1"))
        # Read through another connection the moment the ACK is in: the row is committed.
        (stored,) = _messages(ledger, "COMMIT-1")
    assert (reply.code, reply.control_id, reply.reasons) == ("AA", "COMMIT-1", ())
    assert stored.laboratory == "LABO-BIO-CENTRE"
    assert stored.state == "received"  # the route stage takes it from here
    eventually(lambda: mllp.routed == [stored.id])  # the hook runs after the ACKs are out


def test_malformed_gets_ae_with_the_reason_and_is_quarantined(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    with mllp.client() as client:
        content = client.exchange((FIXTURES / "no_obr.hl7").read_bytes())
        unsupported = client.exchange((FIXTURES / "adt_a01.hl7").read_bytes())
    assert (content.code, content.control_id) == ("AE", "NO-OBR")
    assert any("OBR" in reason for reason in content.reasons)
    assert (unsupported.code, unsupported.control_id) == ("AR", "ADT-1")
    assert any("ADT^A01" in reason for reason in unsupported.reasons)
    with ledger() as session:
        rejections = session.scalars(select(Rejection).order_by(Rejection.id)).all()
        assert [(r.control_id, r.ack_code, r.source) for r in rejections] == [
            ("NO-OBR", "AE", "mllp"),
            ("ADT-1", "AR", "mllp"),
        ]
        assert rejections[0].source_name.startswith("127.0.0.1:")
    assert _messages(ledger) == []
    assert mllp.routed == []


def test_lis_closing_mid_message_stores_nothing_and_the_next_connection_is_served(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    message = result_message("CUT-1")
    with socket.create_connection(("127.0.0.1", mllp.port)) as sock:
        sock.sendall(frame(message)[: len(message) // 2])  # start block, half the message
    with mllp.client() as client:
        reply = client.exchange(result_message("AFTER-CUT"))
    assert reply.code == "AA"
    assert [m.control_id for m in _messages(ledger)] == ["AFTER-CUT"]
    assert _count(ledger, Rejection) == 0


def test_resend_after_a_lost_ack_is_one_message_recorded_as_a_duplicate(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    message = result_message("LOST-ACK-1")
    with socket.create_connection(("127.0.0.1", mllp.port)) as sock:
        sock.sendall(frame(message))  # and gone before reading the ACK
    eventually(lambda: len(_messages(ledger, "LOST-ACK-1")) == 1)
    with mllp.client() as client:
        resent = client.exchange(message)
        again = client.exchange(message)
    assert (resent.code, again.code) == ("AA", "AA")
    (stored,) = _messages(ledger, "LOST-ACK-1")
    with ledger() as session:
        kinds = session.scalars(
            select(Event.kind).where(Event.message_id == stored.id).order_by(Event.id)
        ).all()
    assert kinds.count("received") == 1
    assert kinds.count("duplicate") == 2
    eventually(lambda: len(mllp.routed) >= 1)
    assert mllp.routed == [stored.id]  # routed once, never for the resends


def test_many_connections_each_get_their_acks_in_order(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    clients, per_client = 20, 20
    replies: dict[int, list[AckReply]] = {}
    errors: list[BaseException] = []

    def lis(number: int) -> None:
        ids = [f"C{number:02d}-M{n:02d}" for n in range(per_client)]
        try:
            with socket.create_connection(("127.0.0.1", mllp.port)) as sock:
                # All frames at once, then the ACKs: the listener must keep them in order.
                sock.sendall(b"".join(frame(result_message(i)) for i in ids))
                replies[number] = _read_acks(sock, per_client)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=lis, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for number in range(clients):
        got = [(reply.code, reply.control_id) for reply in replies[number]]
        assert got == [("AA", f"C{number:02d}-M{n:02d}") for n in range(per_client)]
    assert _count(ledger, Message) == clients * per_client
    stored = [m.id for m in _messages(ledger)]
    eventually(lambda: sorted(mllp.routed) == stored)
    # Group commit: far fewer transactions than messages.
    assert mllp.server.committer.batches < clients * per_client


def test_enhanced_mode_commit_accept_and_never(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    with mllp.client() as client:
        always = client.exchange(result_message("ENH-AL", accept="AL", application="NE"))
        # NE: no answer at all; the next ACK on the connection is the next message's.
        client.send(result_message("ENH-NE", accept="NE", application="NE"))
        error_only_ok = result_message("ENH-ER", accept="ER")
        client.send(error_only_ok)
        refused = client.exchange(
            set_msh((FIXTURES / "no_obr.hl7").read_bytes(), {15: "AL", 16: "NE"})
        )
    assert (always.code, always.control_id) == ("CA", "ENH-AL")
    assert (refused.code, refused.control_id) == ("CE", "NO-OBR")
    assert [m.control_id for m in _messages(ledger)] == ["ENH-AL", "ENH-NE", "ENH-ER"]


def test_oversized_frame_is_refused_and_the_connection_goes_on(
    start_server: StartServer, ledger: sessionmaker[Session]
) -> None:
    server = start_server(max_frame_bytes=1024)
    big = result_message("TOO-BIG")
    assert len(big) > 1024
    small = (FIXTURES / "v23_local_codes_latin1.hl7").read_bytes()
    assert len(small) < 1024
    with server.client() as client:
        refused = client.exchange(big)
        next_one = client.exchange(small)
    assert (refused.code, refused.control_id) == ("AR", "TOO-BIG")
    assert "1024" in refused.reasons[0]
    assert next_one.code == "AA"
    assert [m.control_id for m in _messages(ledger)] == ["LS-000777"]
    assert _count(ledger, Rejection) == 0  # too large to keep; the LIS was told


def test_after_commit_hook_failure_is_swallowed(
    mllp: RunningServer, ledger: sessionmaker[Session]
) -> None:
    mllp.hook_error = RuntimeError("broker down")
    with mllp.client() as client:
        first = client.exchange(result_message("HOOK-1"))
        second = client.exchange(result_message("HOOK-2"))
    assert (first.code, second.code) == ("AA", "AA")
    eventually(lambda: len(mllp.routed) == 2)
    assert [m.control_id for m in _messages(ledger)] == ["HOOK-1", "HOOK-2"]


# --- the ledger unavailable: AE, never AA ------------------------------------------------


def _break_the_ledger(settings: Settings, postgres_admin: Callable[[], Engine]) -> None:
    """A real failure: PostgreSQL loses the database; SQLite loses the messages table."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        with sqlite3.connect(url.database) as connection:
            connection.execute("PRAGMA foreign_keys=OFF")
            connection.execute("DROP TABLE messages")
        return
    admin = postgres_admin()
    with admin.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": url.database},
        )
        connection.execute(text(f'DROP DATABASE "{url.database}"'))


def test_ledger_lost_while_serving_answers_ae_not_aa(
    mllp: RunningServer,
    service_settings: Settings,
    request: pytest.FixtureRequest,
) -> None:
    with mllp.client() as client:
        assert client.exchange(result_message("BEFORE-LOSS")).code == "AA"
        _break_the_ledger(service_settings, lambda: request.getfixturevalue("postgres_admin"))
        lost = client.exchange(result_message("DURING-LOSS"))
        enhanced = client.exchange(result_message("DURING-LOSS-2", accept="AL"))
    assert (lost.code, lost.control_id) == ("AE", "DURING-LOSS")
    assert lost.reasons == (UNAVAILABLE_REASON,)
    assert (enhanced.code, enhanced.control_id) == ("CE", "DURING-LOSS-2")
    assert len(mllp.routed) == 1  # only the message stored before the loss


def test_ledger_that_cannot_be_opened_answers_ae(
    start_server: StartServer, service_settings: Settings, tmp_path: Path
) -> None:
    url = make_url(service_settings.database_url)
    if url.get_backend_name() == "sqlite":
        missing = url.set(database=str(tmp_path))  # a directory: SQLite cannot open it
    else:
        missing = url.set(database=f"labdispatch_missing_{uuid.uuid4().hex[:12]}")
    settings = Settings(
        var_dir=service_settings.var_dir,
        database_url=missing.render_as_string(hide_password=False),
    )
    engine = make_engine(settings)
    try:
        server = start_server(sessions=session_factory(engine))
        with server.client() as client:
            reply = client.exchange(result_message("NO-LEDGER"))
            second = client.exchange(result_message("NO-LEDGER-2"))
    finally:
        engine.dispose()
    assert (reply.code, reply.control_id) == ("AE", "NO-LEDGER")
    assert reply.reasons == (UNAVAILABLE_REASON,)
    assert second.code == "AE"
    assert server.routed == []


def test_client_sees_ack_bytes_in_the_senders_charset(mllp: RunningServer) -> None:
    data = (FIXTURES / "v23_local_codes_latin1.hl7").read_bytes()
    with MllpClient("127.0.0.1", mllp.port) as client:
        client.send(data)
        raw = client.receive()
    assert b"8859/1" in raw.split(b"\r")[0]
    assert AckReply.parse(raw).code == "AA"
