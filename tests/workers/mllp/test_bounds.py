"""What one sender can hold of the listener is bounded (issue 11): connections in all and
per address, a frame's time to finish, a connection's time without a frame, the bytes held
for unfinished frames; each limit hit is logged without flooding the log.

The limits are set small here so each test takes a second or two; the defaults are far
above what a LIS does (see `ServiceSettings`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.ledger.models import Message, Rejection
from tests.support import eventually
from tests.workers.mllp.conftest import RunningServer, StartServer, result_message
from workers.mllp.framing import START_BLOCK, frame
from workers.mllp.limits import ListenerLimits

#: Another loopback address: a second "laboratory" for the per-address cap.
OTHER_PEER = "127.0.0.2"


def _connect(server: RunningServer, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", server.port), timeout=10, source_address=(source, 0)
    )


def _closed_by_listener(sock: socket.socket, within: float) -> bool:
    """The listener closed (or reset) the connection within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def _count(ledger: sessionmaker[Session], model: type[Message] | type[Rejection]) -> int:
    with ledger() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        with contextlib.suppress(OSError):
            sock.close()


def _normal_sender_gets_aa(server: RunningServer, control_id: str, within: float = 5.0) -> None:
    started = time.monotonic()
    with server.client(timeout=within) as client:
        reply = client.exchange(result_message(control_id))
    assert reply.code == "AA"
    assert time.monotonic() - started < within


def test_connections_past_the_per_address_cap_are_closed_and_others_served(
    start_server: StartServer,
    sockets: list[socket.socket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.mllp.server")
    server = start_server(limits=ListenerLimits(max_connections_per_peer=3))
    held = [_connect(server, OTHER_PEER) for _ in range(3)]
    sockets.extend(held)
    eventually(lambda: server.server.connections == 3)
    extra = [_connect(server, OTHER_PEER) for _ in range(30)]
    sockets.extend(extra)
    assert all(_closed_by_listener(sock, 5) for sock in extra)
    assert not any(_closed_by_listener(sock, 0.05) for sock in held)
    _normal_sender_gets_aa(server, "PEER-CAP-1")  # another address is not held back
    refusals = [r for r in caplog.records if "MLLP_MAX_CONNECTIONS_PER_PEER" in r.getMessage()]
    assert 1 <= len(refusals) <= 2  # 30 refusals, one line (and the count of the others)


def test_connections_past_the_total_cap_are_closed(
    start_server: StartServer, sockets: list[socket.socket]
) -> None:
    server = start_server(limits=ListenerLimits(max_connections=4))
    held = [_connect(server) for _ in range(4)]
    sockets.extend(held)
    eventually(lambda: server.server.connections == 4)
    extra = _connect(server, OTHER_PEER)
    sockets.append(extra)
    assert _closed_by_listener(extra, 5)
    held.pop().close()
    eventually(lambda: server.server.connections == 3)
    _normal_sender_gets_aa(server, "TOTAL-CAP-1")


def test_a_frame_sent_a_byte_at_a_time_is_cut_off_at_the_frame_timeout(
    start_server: StartServer, ledger: sessionmaker[Session], sockets: list[socket.socket]
) -> None:
    server = start_server(limits=ListenerLimits(frame_timeout=0.5))
    slow = _connect(server)
    sockets.append(slow)
    message = frame(result_message("SLOW-1"))
    started = time.monotonic()
    closed = False
    for byte in message[:200]:  # bounded: 200 bytes, 20 ms apart = 4 s at most
        try:
            slow.sendall(bytes([byte]))
        except OSError:
            closed = True
            break
        slow.settimeout(0.02)
        with contextlib.suppress(TimeoutError):
            if not slow.recv(65536):
                closed = True
                break
    assert closed or _closed_by_listener(slow, 2)
    assert time.monotonic() - started < 3
    _normal_sender_gets_aa(server, "AFTER-SLOW")
    assert _count(ledger, Message) == 1  # only the normal sender's
    assert _count(ledger, Rejection) == 0


def test_a_connection_without_any_message_is_closed_at_the_idle_timeout(
    start_server: StartServer, sockets: list[socket.socket]
) -> None:
    server = start_server(limits=ListenerLimits(idle_timeout=0.5))
    idle = _connect(server)
    noisy = _connect(server)  # bytes outside any frame are not messages: still idle
    sockets.extend([idle, noisy])
    noisy.sendall(b"\r\n" * 10)
    assert _closed_by_listener(idle, 3)
    assert _closed_by_listener(noisy, 3)
    # A LIS sending a message more often than the timeout is never cut off.
    with server.client() as client:
        for number in range(4):
            assert client.exchange(result_message(f"BUSY-{number}")).code == "AA"
            time.sleep(0.3)  # the pace of the sender under test, not a wait for a result
        assert client.exchange(result_message("BUSY-LAST")).code == "AA"
    eventually(lambda: server.server.connections == 0)


def test_unfinished_frames_past_the_budget_are_dropped_largest_first(
    start_server: StartServer,
    ledger: sessionmaker[Session],
    sockets: list[socket.socket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.mllp.server")
    budget = 2 * 1024 * 1024
    server = start_server(max_frame_bytes=1024 * 1024, limits=ListenerLimits(buffer_bytes=budget))
    # A small unfinished frame from an ordinary LIS, held while the large ones arrive.
    small = _connect(server)
    sockets.append(small)
    small.sendall(START_BLOCK + result_message("SMALL-1")[:300])
    eventually(lambda: server.server.held >= 300)
    big = [_connect(server, OTHER_PEER) for _ in range(6)]
    sockets.extend(big)
    chunk = START_BLOCK + b"MSH|" + b"x" * (900 * 1024)
    for sock in big:
        with contextlib.suppress(OSError):
            sock.sendall(chunk)  # 6 x 900 KiB unfinished: 5.3 MiB, over the 2 MiB budget
    eventually(lambda: sum(_closed_by_listener(sock, 0.05) for sock in big) >= 4, 10)
    assert server.server.held <= budget
    assert not _closed_by_listener(small, 0.05)  # the small one is not what goes
    small.sendall(result_message("SMALL-1")[300:] + b"\x1c\r")
    small.settimeout(10)
    assert b"MSA|AA|SMALL-1" in small.recv(65536)
    _normal_sender_gets_aa(server, "AFTER-BUDGET")
    assert _count(ledger, Message) == 2
    lines = [r for r in caplog.records if "MLLP_BUFFER_BYTES" in r.getMessage()]
    assert 1 <= len(lines) <= 2


def test_many_connections_closing_mid_message_log_one_line_not_one_each(
    mllp: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.mllp.server")
    for number in range(30):
        with socket.create_connection(("127.0.0.1", mllp.port)) as sock:
            sock.sendall(b"noise" + START_BLOCK + result_message(f"CUT-{number}")[:100])
    eventually(lambda: mllp.server.connections == 0)
    _normal_sender_gets_aa(mllp, "AFTER-CUTS")
    messages = [record.getMessage() for record in caplog.records]
    assert 1 <= sum("in the middle of a message" in m for m in messages) <= 2
    assert 1 <= sum("outside any frame" in m for m in messages) <= 2
