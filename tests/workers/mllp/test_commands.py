"""`labdispatch submit` and `labdispatch mllp serve`, as labs and ops run them."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.ledger.models import Message
from tests.workers.mllp.conftest import FIXTURES, RunningServer, result_message
from workers.cli import main
from workers.mllp.client import AckReply, MllpClient
from workers.mllp.framing import FrameDecoder, frame

REPO = Path(__file__).resolve().parents[3]
#: `workers.celery_app.ROUTE_QUEUE`, written out: importing that module sets up the broker.
ROUTE_QUEUE = "labdispatch.route"


def _submit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    status = main(["submit", *args])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def test_submit_prints_each_message_and_exits_0_when_all_are_accepted(
    mllp: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    single, batch = FIXTURES / "fr_prt_idnps_utf8.hl7", FIXTURES / "batch_fhs_bhs.hl7"
    status, lines, err = _submit(capsys, "--to", mllp.address, str(single), str(batch))
    assert lines == [
        f"{single} #1: LBC-2026-000101: AA",
        f"{batch} #1: LBC-2026-000102: AA",
        f"{batch} #2: LBC-2026-000103: AA",
    ]
    assert (status, err) == (0, "")


def test_submit_prints_the_reason_and_exits_1_when_one_is_refused(
    mllp: RunningServer, capsys: pytest.CaptureFixture[str], ledger: sessionmaker[Session]
) -> None:
    good, bad = FIXTURES / "v23_local_codes_latin1.hl7", FIXTURES / "adt_a01.hl7"
    status, lines, _ = _submit(capsys, "--to", mllp.address, str(bad), str(good))
    assert lines == [
        f"{bad} #1: ADT-1: AR: message type ADT^A01 is not accepted; labdispatch takes "
        "laboratory results as ORU^R01",
        f"{good} #1: LS-000777: AA",
    ]
    assert status == 1
    with ledger() as session:
        assert session.scalars(select(Message.control_id)).all() == ["LS-000777"]


def test_submit_in_enhanced_mode(
    mllp: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "enhanced.hl7"
    path.write_bytes(
        result_message("ENH-1", accept="AL", application="NE")
        + result_message("ENH-2", accept="NE", application="NE")
        + result_message("ENH-3", accept="ER")
        + result_message("ENH-4", accept="SU")
    )
    status, lines, _ = _submit(capsys, "--to", mllp.address, "--timeout", "0.5", str(path))
    assert lines == [
        f"{path} #1: ENH-1: CA",
        f"{path} #2: ENH-2: sent; no ACK asked for (MSH-15 NE)",
        f"{path} #3: ENH-3: no ACK within 0.5 s, as MSH-15 ER asks when the message is accepted",
        f"{path} #4: ENH-4: CA",
    ]
    assert status == 0


def test_submit_uses_the_configured_listener_by_default(
    mllp: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABDISPATCH_MLLP_HOST", "127.0.0.1")
    monkeypatch.setenv("LABDISPATCH_MLLP_PORT", str(mllp.port))
    status, lines, _ = _submit(capsys, str(FIXTURES / "fr_prt_idnps_utf8.hl7"))
    assert (status, lines[0].rsplit(": ", 1)[1]) == (0, "AA")


def test_submit_to_nothing_listening_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], unused_port: int
) -> None:
    target = f"mllp://127.0.0.1:{unused_port}"
    status, lines, err = _submit(capsys, "--to", target, str(FIXTURES / "fr_prt_idnps_utf8.hl7"))
    assert status == 2
    assert lines == []
    assert err == f"labdispatch: cannot connect to {target}: Connection refused\n"


def test_submit_of_an_unreadable_file_says_so(
    mllp: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.hl7"
    status, lines, err = _submit(
        capsys, "--to", mllp.address, str(missing), str(FIXTURES / "fr_prt_idnps_utf8.hl7")
    )
    assert status == 2
    assert err.startswith(f"{missing}: cannot read:")
    assert lines[0].endswith(": AA")  # the other files are still sent


def test_submit_of_a_file_without_messages_exits_1(
    mllp: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(b"\r\n")
    status, lines, err = _submit(capsys, "--to", mllp.address, str(empty))
    assert (status, lines) == (1, [])
    assert err == f"{empty}: no HL7 message in it; nothing sent\n"


@pytest.fixture
def silent_listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP listener that reads and never answers; the second connection is closed at once.
    Yields its port and the count of bytes each connection sent."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[int] = []

    def run() -> None:
        with contextlib.suppress(OSError):
            for number in itertools.count():
                connection, _ = server.accept()
                with connection:
                    if number == 1:
                        continue  # closed without a word
                    total = 0
                    while data := connection.recv(65536):
                        total += len(data)
                    received.append(total)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    server.close()
    thread.join(5)
    assert not thread.is_alive()


def test_submit_reports_a_missing_ack_then_a_dropped_connection(
    capsys: pytest.CaptureFixture[str], silent_listener: tuple[int, list[int]]
) -> None:
    port, received = silent_listener
    source = FIXTURES / "batch_fhs_bhs.hl7"
    status, lines, err = _submit(
        capsys, "--to", f"127.0.0.1:{port}", "--timeout", "0.3", str(source)
    )
    assert lines == [f"{source} #1: LBC-2026-000102: no ACK within 0.3 s"]
    # After a missing ACK the client starts a new connection (a late ACK must not be taken
    # for the next message's); this listener closes that one.
    # (closed, or reset: whether our frame reached it first is up to the network)
    assert err.startswith(f"labdispatch: connection to mllp://127.0.0.1:{port} lost ")
    assert err.count("\n") == 1
    assert status == 2
    assert received and received[0] > 0


# --- the listener as a process ------------------------------------------------------------


@pytest.fixture
def route_queue(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The real Redis as the broker, its route queue emptied; yields a client on it."""
    monkeypatch.setenv("LABDISPATCH_BROKER_URL", redis_url)
    client = redis.Redis.from_url(redis_url)
    client.delete(ROUTE_QUEUE)
    yield client
    client.delete(ROUTE_QUEUE)
    client.close()


@pytest.fixture
def serve(cli_env: str, route_queue: redis.Redis) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`labdispatch mllp serve --port 0` in its own process; yields it and its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "mllp", "serve", "--host", "127.0.0.1", "--port=0"],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = _read_line(process.stdout, 60)
        assert line.startswith("labdispatch: MLLP listener on 127.0.0.1:"), line
        yield process, int(line.rsplit(":", 1)[1])
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def _read_line(stream: object, seconds: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
    if not selector.select(seconds):
        raise AssertionError(f"the listener printed nothing within {seconds:g} s")
    line: bytes = stream.readline()  # type: ignore[attr-defined]
    return line.decode().strip()


def test_serve_answers_queues_the_route_stage_and_stops_cleanly_on_sigterm(
    serve: tuple[subprocess.Popen[bytes], int],
    ledger: sessionmaker[Session],
    route_queue: redis.Redis,
) -> None:
    process, port = serve
    with MllpClient("127.0.0.1", port, timeout=30) as client:
        assert client.exchange(result_message("SERVED-1")).code == "AA"
    with ledger() as session:
        (message_id,) = session.scalars(select(Message.id)).all()
    deadline = time.monotonic() + 30
    while not route_queue.llen(ROUTE_QUEUE) and time.monotonic() < deadline:
        time.sleep(0.02)
    (queued,) = [json.loads(raw) for raw in route_queue.lrange(ROUTE_QUEUE, 0, -1)]
    assert queued["headers"]["task"] == "labdispatch.deliver"
    assert queued["headers"]["argsrepr"] == f"[[{message_id}]]"
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert process.stderr is not None
    assert process.stderr.read() == b""  # INFO lines are off by default; no warnings
    with ledger() as session:
        assert session.scalars(select(Message.control_id)).all() == ["SERVED-1"]


def test_sigterm_mid_stream_acks_exactly_what_was_stored(
    serve: tuple[subprocess.Popen[bytes], int], ledger: sessionmaker[Session]
) -> None:
    process, port = serve
    total = 3000
    acks: list[AckReply] = []
    stream = b"".join(frame(result_message(f"STREAM-{n:04d}")) for n in range(total))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        # Sent from a thread: the listener stops reading when too many ACKs wait unread.
        sender = threading.Thread(target=_send_quietly, args=(sock, stream))
        sender.start()
        decoder = FrameDecoder()
        sock.settimeout(30)
        signalled = False
        while True:
            data = sock.recv(65536)
            if not data:
                break
            acks += [AckReply.parse(i) for i in decoder.feed(data) if isinstance(i, bytes)]
            if acks and not signalled:
                process.send_signal(signal.SIGTERM)  # with most frames still in flight
                signalled = True
        sender.join(30)
    assert process.wait(30) == 0
    with ledger() as session:
        stored = session.scalars(select(Message.control_id).order_by(Message.id)).all()
    # Every ACK is AA for a stored message, in order; nothing stored went unanswered; what
    # was not read before the shutdown was neither stored nor answered (the LIS resends it).
    assert [(a.code, a.control_id) for a in acks] == [("AA", c) for c in stored]
    assert 1 <= len(acks) < total


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the listener closes before taking it all
        sock.sendall(data)
