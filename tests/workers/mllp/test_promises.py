"""The listener's promises that one-line breaks of the code must not slip past.

- AA only after the commit: the commit itself fails (a session hook, or the connection's
  COMMIT), and the LIS gets AE, nothing is stored, nothing is routed.
- No patient name in the listener's logs, at DEBUG, whatever the sender sends.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.intake import FAILED_REASON, UNAVAILABLE_REASON
from pipeline.ledger.models import Message, Rejection
from tests.support import eventually, set_msh
from tests.workers.mllp.conftest import FIXTURES, RunningServer, StartServer, result_message
from workers.mllp.client import AckReply
from workers.mllp.framing import frame


class CommitRefused(RuntimeError):
    """Raised from inside the commit: the transaction never becomes durable."""


def _count(ledger: sessionmaker[Session], model: type[Message] | type[Rejection]) -> int:
    with ledger() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _refuse(*_: Any) -> None:
    raise CommitRefused("the commit failed")


#: A row no commit can keep: a deferred foreign key to nothing, checked only at COMMIT.
GUARD_TABLES = (
    "CREATE TABLE commit_guard_parent (id INTEGER PRIMARY KEY)",
    "CREATE TABLE commit_guard (parent INTEGER REFERENCES commit_guard_parent (id)"
    " DEFERRABLE INITIALLY DEFERRED)",
)
SQLITE_TRIGGER = (
    "CREATE TRIGGER commit_guard_{table} AFTER INSERT ON {table}"
    " BEGIN INSERT INTO commit_guard (parent) VALUES (1); END"
)
POSTGRES_TRIGGER = (
    "CREATE FUNCTION commit_guard_row() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN INSERT INTO commit_guard (parent) VALUES (1); RETURN NEW; END $$",
    "CREATE TRIGGER commit_guard_{table} AFTER INSERT ON {table}"
    " FOR EACH ROW EXECUTE FUNCTION commit_guard_row()",
)


def _guard_database(ledger: sessionmaker[Session]) -> Callable[[], None]:
    """Every transaction that stores a message or a rejection fails at its COMMIT, in the
    database itself (a deferred constraint); returns what lifts the guard."""
    engine = ledger.kw["bind"]
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as connection:
        for statement in GUARD_TABLES:
            connection.exec_driver_sql(statement)
        if not sqlite:
            connection.exec_driver_sql(POSTGRES_TRIGGER[0])
        for table in ("messages", "rejections"):
            trigger = SQLITE_TRIGGER if sqlite else POSTGRES_TRIGGER[1]
            connection.exec_driver_sql(trigger.format(table=table))

    def lift() -> None:
        with engine.begin() as connection:
            for table in ("messages", "rejections"):
                on = "" if sqlite else f" ON {table}"
                connection.exec_driver_sql(f"DROP TRIGGER commit_guard_{table}{on}")

    return lift


@pytest.fixture(params=["session-commit-hook", "database-commit"])
def failing_commit(
    request: pytest.FixtureRequest, ledger: sessionmaker[Session]
) -> Iterator[Callable[[], None]]:
    """Makes every commit of the listener's ledger fail; yields the function that stops it.

    `session-commit-hook`: `Session.commit()` raises (a `before_commit` hook);
    `database-commit`: the flush succeeds and the database refuses the COMMIT itself."""
    if request.param == "database-commit":
        lift = _guard_database(ledger)
    else:
        event.listen(ledger, "before_commit", _refuse)

        def lift() -> None:
            event.remove(ledger, "before_commit", _refuse)

    lifted = False

    def stop() -> None:
        nonlocal lifted
        if not lifted:
            lift()
            lifted = True

    yield stop
    stop()


def test_a_commit_that_fails_answers_ae_stores_nothing_and_routes_nothing(
    mllp: RunningServer,
    ledger: sessionmaker[Session],
    failing_commit: Callable[[], None],
) -> None:
    with mllp.client() as client:
        good = client.exchange(result_message("COMMIT-FAILS-1"))
        enhanced = client.exchange(result_message("COMMIT-FAILS-2", accept="AL"))
        refused = client.exchange((FIXTURES / "adt_a01.hl7").read_bytes())
        # Several frames in one batch: the batch is retried one by one, each fails alike.
        # Several frames at once, likely one batch: each is answered AE alike.
        for number in (3, 4, 5):
            client.send(result_message(f"COMMIT-FAILS-{number}"))
        batch = [AckReply.parse(client.receive()) for _ in range(3)]
    assert (good.code, good.control_id) == ("AE", "COMMIT-FAILS-1")
    assert good.reasons[0] in (FAILED_REASON, UNAVAILABLE_REASON)
    assert (enhanced.code, enhanced.control_id) == ("CE", "COMMIT-FAILS-2")
    # Even a refusal is an answer about a stored quarantine row: not stored, not AR.
    assert (refused.code, refused.reasons) == ("AE", good.reasons)
    assert [(reply.code, reply.control_id) for reply in batch] == [
        ("AE", f"COMMIT-FAILS-{number}") for number in (3, 4, 5)
    ]
    assert _count(ledger, Message) == 0
    assert _count(ledger, Rejection) == 0
    assert mllp.routed == []
    # The ledger commits again: the same message resent is now accepted and routed.
    failing_commit()
    with mllp.client() as client:
        again = client.exchange(result_message("COMMIT-FAILS-1"))
    assert again.code == "AA"
    with ledger() as session:
        (stored,) = session.scalars(select(Message)).all()
    assert stored.control_id == "COMMIT-FAILS-1"
    eventually(lambda: mllp.routed == [stored.id])


# --- no patient name in the logs ---------------------------------------------------------

#: PID-5 of the fixtures (DUPONT^Hélène, GARCIA^José), as text, escaped or as Latin-1 bytes.
PATIENT_NAMES = ("dupont", "hélène", "h\\xe9l", "h\\u00e9l", "garcia", "josé", "jos\\xe9")


@pytest.mark.parametrize("debug", ["", "1"], ids=["plain", "LABDISPATCH_DEBUG"])
def test_no_patient_name_in_the_listeners_logs_at_debug(
    start_server: StartServer,
    ledger: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    debug: str,
) -> None:
    monkeypatch.setenv("LABDISPATCH_DEBUG", debug)
    caplog.set_level(logging.DEBUG)
    server = start_server(max_frame_bytes=4096)
    accepted = (FIXTURES / "v23_local_codes_latin1.hl7").read_bytes()
    big = result_message("LOG-BIG") + b"NTE|1||" + b"DUPONT Helene " * 400 + b"\r"
    assert len(big) > 4096
    sent = [
        accepted,
        (FIXTURES / "adt_a01.hl7").read_bytes(),  # refused: AR
        (FIXTURES / "no_obr.hl7").read_bytes(),  # malformed: AE
        (FIXTURES / "control_char.hl7").read_bytes(),
        (FIXTURES / "declared_utf8_invalid_bytes.hl7").read_bytes(),
        (FIXTURES / "unknown_charset.hl7").read_bytes(),
        (FIXTURES / "wrapped_line.hl7").read_bytes(),
        set_msh(accepted, {4: "L" * 80}),  # header too long
        big,  # over the frame limit
        b"DUPONT^Helene outside any MSH",  # not HL7 at all
    ]
    with server.client() as client:
        codes = [client.exchange(data).code for data in sent]
    assert codes[0] == "AA" and all(code in ("AE", "AR") for code in codes[1:]), codes
    # Bytes outside any frame, a frame cut short by a new one, a connection closed mid-frame.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GARCIA^Jose noise" + b"\x0b" + big[:500] + frame(result_message("LOG-2")))
        sock.settimeout(15)
        assert sock.recv(65536)
        sock.sendall(b"\x0b" + accepted[: len(accepted) // 2])
    # A hook whose error quotes a value (a broker error echoing its payload, say).
    server.hook_error = RuntimeError("DUPONT Hélène K+ 5.9")
    with server.client() as client:
        assert client.exchange(set_msh(accepted, {10: "LOG-HOOK"})).code == "AA"
    eventually(lambda: len(server.routed) == 3)
    server.stop()
    logged = "\n".join(
        [record.getMessage() for record in caplog.records]
        + [
            logging.Formatter().formatException(record.exc_info)
            for record in caplog.records
            if record.exc_info
        ]
    ).lower()
    assert "mllp" in logged  # the capture did see the listener's lines
    assert "after-commit hook failed" in logged
    found = [name for name in PATIENT_NAMES if name in logged]
    assert found == [], found
