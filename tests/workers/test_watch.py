"""Folder intake as a laboratory's exporter meets it: real files, real renames, a real ledger.

Every test runs on SQLite and on PostgreSQL. Settling is driven by file mtimes (os.utime),
never by sleeping; the two-process test waits on real conditions with a deadline.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import make_engine, migrate, session_factory
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Message, Rejection
from pipeline.settings import Settings
from tests.conftest import FIXTURES
from workers.bench.scratch import drop_database
from workers.cli import main
from workers.watch import DropFolderError, FileReport, FolderWatcher

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "results"
HL7 = FIXTURES / "hl7"

BATCH = (EXAMPLES / "batch_labo_bio_centre.hl7").read_bytes()  # FHS/BHS, 2 messages
GOOD = (EXAMPLES / "cr_bio_labo_bio_centre.hl7").read_bytes()  # LBC-2026-000101
GOOD_LATIN1 = (EXAMPLES / "glycemie_labsud_v23_latin1.hl7").read_bytes()  # LS-000777
NO_OBR = (HL7 / "no_obr.hl7").read_bytes()  # NO-OBR, refused AE

DEADLINE = 30.0


def oru(control_id: str) -> bytes:
    """The example result under another control ID: a distinct message per file."""
    return GOOD.replace(b"|LBC-2026-000101|", f"|{control_id}|".encode())


def drop(folder: Path, name: str, data: bytes, *, age: float = 60.0) -> Path:
    """A file as an exporter leaves it, last written `age` seconds ago."""
    path = folder / name
    path.write_bytes(data)
    backdate(path, age)
    return path


def backdate(path: Path, age: float, *, now: float | None = None) -> None:
    moment = (time.time() if now is None else now) - age
    os.utime(path, (moment, moment), follow_symlinks=False)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.is_dir())


def acks_of(path: Path) -> list[list[bytes]]:
    """The ACKs of an ack file: one per line, each a list of CR-ended segments."""
    data = path.read_bytes()
    acks = data.split(b"\n")
    for ack in acks:
        assert ack.endswith(b"\r")
    return [ack.rstrip(b"\r").split(b"\r") for ack in acks]


def read_reason(path: Path) -> str:
    """A reason file's text with its wrapping undone (refusal lines are never wrapped)."""
    return " ".join(path.read_text(encoding="utf-8").split())


def msa(ack: list[bytes]) -> bytes:
    (segment,) = [s for s in ack if s.startswith(b"MSA|")]
    return segment


def ledger_messages(ledger: sessionmaker[Session]) -> list[tuple[str, int, str, str]]:
    with ledger() as session:
        rows = session.execute(
            select(Message.control_id, Message.revision, Message.source, Message.source_name)
        ).all()
    return sorted((r[0], r[1], r[2], r[3]) for r in rows)


def count(ledger: sessionmaker[Session], model: type[Message] | type[Rejection]) -> int:
    with ledger() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


class Routed(list[int]):
    """The after-commit hook: remembers the message IDs it was handed."""

    def __call__(self, message_ids: Sequence[int]) -> None:
        self.extend(message_ids)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "drop"
    path.mkdir()
    return path


@pytest.fixture
def routed() -> Routed:
    return Routed()


@pytest.fixture
def watcher(
    folder: Path, ledger: sessionmaker[Session], services: DeliveryServices, routed: Routed
) -> FolderWatcher:
    return FolderWatcher(folder, ledger, services, settle=1.0, after_commit=routed)


# --- what happens to a file --------------------------------------------------------------


def test_a_batch_file_is_split_and_each_message_recorded_with_its_ack(
    watcher: FolderWatcher, folder: Path, ledger: sessionmaker[Session], routed: Routed
) -> None:
    drop(folder, "batch.hl7", BATCH)

    reports = watcher.poll()

    assert reports == [FileReport("batch.hl7", "done", 2, 0, "done/batch.hl7")]
    assert reports[0].line() == "batch.hl7: 2 recorded, 0 refused → done/batch.hl7"
    assert (folder / "done" / "batch.hl7").read_bytes() == BATCH
    assert names(folder) == [] and names(folder / "processing") == []
    assert ledger_messages(ledger) == [
        ("LBC-2026-000102", 1, "file", "batch.hl7"),
        ("LBC-2026-000103", 1, "file", "batch.hl7"),
    ]
    acks = acks_of(folder / "acks" / "batch.hl7.ack")
    assert [msa(ack) for ack in acks] == [b"MSA|AA|LBC-2026-000102", b"MSA|AA|LBC-2026-000103"]
    with ledger() as session:
        assert sorted(routed) == sorted(session.scalars(select(Message.id)).all())


def test_a_good_file_goes_to_done_with_an_aa_ack(
    watcher: FolderWatcher, folder: Path, ledger: sessionmaker[Session]
) -> None:
    drop(folder, "cr.hl7", GOOD)

    (report,) = watcher.poll()

    assert (report.outcome, report.recorded, report.refused) == ("done", 1, 0)
    assert names(folder / "done") == ["cr.hl7"] and names(folder / "rejected") == []
    (ack,) = acks_of(folder / "acks" / "cr.hl7.ack")
    assert ack[0].startswith(b"MSH|^~\\&|LABDISPATCH|LABDISPATCH|SIL-DEMO|LABO-BIO-CENTRE|")
    assert msa(ack) == b"MSA|AA|LBC-2026-000101"
    assert ledger_messages(ledger) == [("LBC-2026-000101", 1, "file", "cr.hl7")]


@pytest.mark.parametrize(
    ("fixture", "code", "refusal"),
    [
        (
            "no_obr.hl7",
            b"AE",
            "message 1 (control ID NO-OBR): AE MissingSegment: OBR: no OBR segment",
        ),
        (
            "adt_a01.hl7",
            b"AR",
            "message 1 (control ID ADT-1): AR UnsupportedMessageType: MSH-9.1: message type "
            "ADT^A01 is not accepted",
        ),
        (
            "missing_control_id.hl7",
            b"AE",
            "message 1 (control ID none): AE MissingField: MSH-10 (message control ID) is empty",
        ),
    ],
)
def test_a_refused_file_goes_to_rejected_with_a_reason_naming_the_field(
    watcher: FolderWatcher,
    folder: Path,
    ledger: sessionmaker[Session],
    routed: Routed,
    fixture: str,
    code: bytes,
    refusal: str,
) -> None:
    data = (HL7 / fixture).read_bytes()
    drop(folder, fixture, data)

    (report,) = watcher.poll()

    assert report == FileReport(fixture, "rejected", 0, 1, f"rejected/{fixture}")
    assert (folder / "rejected" / fixture).read_bytes() == data
    reason = read_reason(folder / "rejected" / f"{fixture}.reason.txt")
    assert refusal in reason
    assert "No message of this file was recorded" in reason
    (ack,) = acks_of(folder / "acks" / f"{fixture}.ack")
    assert msa(ack).startswith(b"MSA|" + code + b"|")
    assert count(ledger, Message) == 0 and count(ledger, Rejection) == 1  # quarantined
    assert routed == []


def test_a_mixed_file_records_the_good_messages_and_a_corrected_drop_adds_only_the_fix(
    watcher: FolderWatcher, folder: Path, ledger: sessionmaker[Session], routed: Routed
) -> None:
    drop(folder, "mixed.hl7", GOOD + NO_OBR)

    (report,) = watcher.poll()

    assert report.line() == "mixed.hl7: 1 recorded, 1 refused → rejected/mixed.hl7"
    reason = read_reason(folder / "rejected" / "mixed.hl7.reason.txt")
    assert "mixed.hl7: 1 of 2 message(s) refused" in reason
    assert "message 2 (control ID NO-OBR): AE MissingSegment: OBR: no OBR segment" in reason
    assert "message 1 " not in reason
    assert "The other 1 message(s) of this file WERE recorded" in reason
    acks = acks_of(folder / "acks" / "mixed.hl7.ack")
    assert [msa(a)[:24] for a in acks] == [b"MSA|AA|LBC-2026-000101", b"MSA|AE|NO-OBR|no OBR seg"]
    assert ledger_messages(ledger) == [("LBC-2026-000101", 1, "file", "mixed.hl7")]
    first_routed = list(routed)
    assert len(first_routed) == 1

    # The lab fixes the refused message and drops the whole file again.
    drop(folder, "mixed.hl7", GOOD + GOOD_LATIN1)
    (report,) = watcher.poll()

    assert report.line() == "mixed.hl7: 2 recorded, 0 refused → done/mixed.hl7"
    assert ledger_messages(ledger) == [
        ("LBC-2026-000101", 1, "file", "mixed.hl7"),  # recognised: not a second copy
        ("LS-000777", 1, "file", "mixed.hl7"),
    ]
    assert len(routed) == 2 and routed[0] == first_routed[0]  # only the new one routed
    assert len(names(folder / "acks")) == 2  # the first ACK file is not overwritten


def test_the_same_name_dropped_twice_is_kept_twice_never_overwritten(
    folder: Path, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    now = time.time()
    watcher = FolderWatcher(folder, ledger, services, settle=1.0, clock=lambda: now)
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    contents = [GOOD, GOOD_LATIN1, oru("LBC-AGAIN-3")]

    for data in contents:
        path = folder / "result.hl7"
        path.write_bytes(data)
        backdate(path, 60, now=now)
        (report,) = watcher.poll()
        assert report.outcome == "done"

    done = folder / "done"
    assert [(done / n).read_bytes() for n in ("result.hl7", f"result.{stamp}.hl7")] == contents[:2]
    assert (done / f"result.{stamp}-2.hl7").read_bytes() == contents[2]
    assert names(folder / "acks") == [
        f"result.hl7.{stamp}-2.ack",
        f"result.hl7.{stamp}.ack",
        "result.hl7.ack",
    ]


def test_an_empty_file_is_rejected_as_such(
    watcher: FolderWatcher, folder: Path, ledger: sessionmaker[Session]
) -> None:
    drop(folder, "empty.hl7", b"")

    (report,) = watcher.poll()

    assert report.line() == "empty.hl7: empty file → rejected/empty.hl7"
    assert (folder / "rejected" / "empty.hl7").read_bytes() == b""
    reason = read_reason(folder / "rejected" / "empty.hl7.reason.txt")
    assert reason.startswith("empty.hl7: empty file The file is empty")
    assert names(folder / "acks") == []  # no message, nothing to acknowledge
    assert count(ledger, Message) == 0


def test_a_failing_after_commit_hook_is_logged_and_the_file_still_done(
    folder: Path,
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_broker(message_ids: Sequence[int]) -> None:
        raise ConnectionError("broker unreachable")

    watcher = FolderWatcher(folder, ledger, services, after_commit=broken_broker)
    drop(folder, "cr.hl7", GOOD)

    (report,) = watcher.poll()

    assert report.outcome == "done" and names(folder / "done") == ["cr.hl7"]
    assert count(ledger, Message) == 1
    assert any(
        r.levelno == logging.ERROR
        and r.getMessage().startswith("cr.hl7: recorded, but routing could not be queued")
        for r in caplog.records
    )


# --- when a file is taken -------------------------------------------------------------------


def test_a_file_is_not_taken_before_it_has_settled(
    folder: Path, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    watcher = FolderWatcher(folder, ledger, services, settle=30.0)
    path = drop(folder, "slow.hl7", GOOD[:200], age=0)  # half written, just now

    assert watcher.poll() == []
    backdate(path, 20)
    with path.open("ab") as still_writing:
        still_writing.write(GOOD[200:])  # the exporter writes again: mtime is now
    assert watcher.poll() == []
    assert names(folder) == ["slow.hl7"] and count(ledger, Message) == 0

    backdate(path, 31)  # nobody has written it for longer than the settle time
    (report,) = watcher.poll()

    assert report.line() == "slow.hl7: 1 recorded, 0 refused → done/slow.hl7"
    assert (folder / "done" / "slow.hl7").read_bytes() == GOOD


def test_partial_names_dotfiles_folders_and_links_are_never_taken(
    watcher: FolderWatcher, folder: Path, tmp_path: Path
) -> None:
    waiting = [".result.hl7", "a.hl7.tmp", "b.hl7.PART", "c.hl7.filepart"]
    for name in waiting:
        drop(folder, name, GOOD)
    (folder / "sub").mkdir()
    drop(folder / "sub", "nested.hl7", GOOD)
    outside = drop(tmp_path, "outside.hl7", GOOD)
    (folder / "link.hl7").symlink_to(outside)
    backdate(folder / "link.hl7", 60)

    assert watcher.poll() == []
    assert names(folder) == sorted([*waiting, "link.hl7"])

    (folder / "a.hl7.tmp").rename(folder / "a.hl7")  # the exporter's final rename
    (report,) = watcher.poll()
    assert report.line() == "a.hl7: 1 recorded, 0 refused → done/a.hl7"


def test_a_file_dated_in_the_future_is_taken_once_seen_unchanged_for_the_settle_time(
    folder: Path, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    """A share whose clock is ahead: its mtimes say nothing, so we watch the file instead."""
    now = [time.time()]
    watcher = FolderWatcher(folder, ledger, services, settle=5.0, clock=lambda: now[0])
    path = drop(folder, "ahead.hl7", GOOD[:300], age=-3600)

    assert watcher.poll() == []
    now[0] += 4
    with path.open("ab") as handle:
        handle.write(GOOD[300:])  # still being written: the watch starts over
    backdate(path, -3600)
    now[0] += 4
    assert watcher.poll() == []
    now[0] += 4
    assert watcher.poll() == []  # unchanged for 4 s only
    now[0] += 1.5

    (report,) = watcher.poll()

    assert report.outcome == "done"
    assert (folder / "done" / "ahead.hl7").read_bytes() == GOOD


# --- several watchers, crashes --------------------------------------------------------------


def test_two_watchers_on_one_folder_process_each_file_exactly_once(
    folder: Path, settings: Settings, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    files = [f"r{n:03}.hl7" for n in range(24)]
    for name in files:
        drop(folder, name, oru(f"TWO-{name}"))
    engines = [make_engine(settings) for _ in range(2)]
    watchers = [
        FolderWatcher(folder, session_factory(engine), services, settle=1.0) for engine in engines
    ]
    processed: list[list[FileReport]] = [[], []]
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def work(index: int) -> None:
        try:
            start.wait()
            deadline = time.monotonic() + DEADLINE
            while len(names(folder / "done")) < len(files) and time.monotonic() < deadline:
                processed[index] += watchers[index].poll()
        except BaseException as error:  # reported below, in the test's thread
            failures.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()

    assert failures == []
    assert {r.outcome for reports in processed for r in reports} == {"done"}
    first, second = ({r.name for r in reports} for reports in processed)
    assert first.isdisjoint(second)
    assert sorted(first | second) == files
    assert sum(len(reports) for reports in processed) == len(files)
    assert names(folder / "done") == files  # no suffixed second copy
    assert names(folder / "acks") == [f"{name}.ack" for name in files]
    assert count(ledger, Message) == len(files)


def test_a_file_taken_by_another_watcher_after_listing_is_skipped_silently(
    folder: Path, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    drop(folder, "a.hl7", GOOD)
    drop(folder, "b.hl7", GOOD_LATIN1)
    slow = FolderWatcher(folder, ledger, services)
    fast = FolderWatcher(folder, ledger, services)

    listed = slow.settled_files()
    assert len(fast.poll()) == 2

    assert [slow.take(path) for path in listed] == [None, None]
    assert names(folder / "done") == ["a.hl7", "b.hl7"]


def test_a_file_left_in_processing_by_a_crashed_watcher_is_processed_first(
    watcher: FolderWatcher, folder: Path, ledger: sessionmaker[Session]
) -> None:
    drop(folder, "new.hl7", GOOD_LATIN1, age=3600)  # older than the orphan, still second
    drop(folder / "processing", "orphan.hl7", GOOD)

    reports = watcher.poll()

    assert [r.line() for r in reports] == [
        "orphan.hl7: 1 recorded, 0 refused → done/orphan.hl7",
        "new.hl7: 1 recorded, 0 refused → done/new.hl7",
    ]
    assert names(folder / "processing") == []
    assert [m[0] for m in ledger_messages(ledger)] == ["LBC-2026-000101", "LS-000777"]


def test_a_file_a_live_watcher_holds_in_processing_is_left_to_it(
    watcher: FolderWatcher, folder: Path
) -> None:
    path = drop(folder / "processing", "busy.hl7", GOOD)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what the watcher working on it holds
    try:
        assert watcher.poll() == []
        assert names(folder / "processing") == ["busy.hl7"]
    finally:
        os.close(fd)  # that watcher dies: the kernel drops its lock

    (report,) = watcher.poll()
    assert report.line() == "busy.hl7: 1 recorded, 0 refused → done/busy.hl7"


def test_recovering_a_file_already_recorded_before_the_crash_adds_nothing(
    watcher: FolderWatcher, folder: Path, ledger: sessionmaker[Session], routed: Routed
) -> None:
    drop(folder, "cr.hl7", GOOD)
    watcher.poll()
    # A watcher killed after its commit, before its move, leaves the file in processing/.
    shutil.copy(folder / "done" / "cr.hl7", folder / "processing" / "cr.hl7")
    routed_before = list(routed)

    (report,) = watcher.poll()

    assert (report.outcome, report.recorded, report.refused) == ("done", 1, 0)
    assert ledger_messages(ledger) == [("LBC-2026-000101", 1, "file", "cr.hl7")]
    assert routed == routed_before  # a duplicate is not routed again
    assert len(names(folder / "done")) == 2 and names(folder / "processing") == []
    acks = [acks_of(p)[0] for p in sorted((folder / "acks").iterdir())]
    assert [msa(a) for a in acks] == [b"MSA|AA|LBC-2026-000101"] * 2


# --- the ledger down ------------------------------------------------------------------------


def break_ledger(request: pytest.FixtureRequest, engine: Engine) -> Callable[[], None]:
    """Take the ledger away for real; returns how to bring it back.

    PostgreSQL: the database is dropped under the running watcher (its connections
    killed). SQLite: the messages table is renamed away, so every write is refused by the
    database itself (a read-only file would not stop a root test runner)."""
    if engine.dialect.name == "postgresql":
        admin: Engine = request.getfixturevalue("postgres_admin")
        name = engine.url.database
        assert name is not None
        drop_database(admin, name)

        def restore() -> None:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            migrate(engine)

        return restore

    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE messages RENAME TO messages_away"))

    def restore_sqlite() -> None:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE messages_away RENAME TO messages"))

    return restore_sqlite


def test_a_file_goes_back_to_the_folder_while_the_ledger_is_down_and_nothing_is_lost(
    request: pytest.FixtureRequest,
    engine: Engine,
    watcher: FolderWatcher,
    folder: Path,
    ledger: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    drop(folder, "first.hl7", GOOD, age=120)
    drop(folder, "second.hl7", GOOD_LATIN1, age=60)
    restore = break_ledger(request, engine)
    caplog.set_level(logging.INFO, logger="workers.watch")

    (report,) = watcher.poll()  # the second is not tried: it would fail the same way

    assert report.outcome == "retry" and report.moved_to == "first.hl7"
    assert report.line().startswith("first.hl7: not recorded (the ledger is unavailable: ")
    assert names(folder) == ["first.hl7", "second.hl7"]
    assert (folder / "first.hl7").read_bytes() == GOOD
    for sub in ("processing", "done", "rejected", "acks"):
        assert names(folder / sub) == [], sub
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith("first.hl7: not recorded, the ledger is unavailable: ")

    restore()
    reports = watcher.poll()

    assert [r.line() for r in reports] == [
        "first.hl7: 1 recorded, 0 refused → done/first.hl7",
        "second.hl7: 1 recorded, 0 refused → done/second.hl7",
    ]
    assert [m[0] for m in ledger_messages(ledger)] == ["LBC-2026-000101", "LS-000777"]


def test_the_running_watcher_retries_until_the_ledger_is_back(
    request: pytest.FixtureRequest,
    engine: Engine,
    watcher: FolderWatcher,
    folder: Path,
    ledger: sessionmaker[Session],
) -> None:
    restore = break_ledger(request, engine)
    reports: list[FileReport] = []
    stop = threading.Event()
    running = threading.Thread(
        target=watcher.run, kwargs={"interval": 0.01, "stop": stop, "on_report": reports.append}
    )
    running.start()
    try:
        drop(folder, "cr.hl7", GOOD)
        wait_for(lambda: any(r.outcome == "retry" for r in reports), "a failed try")
        assert names(folder / "done") == []
        restore()
        wait_for(lambda: names(folder / "done") == ["cr.hl7"], "the file recorded")
    finally:
        stop.set()
        running.join(DEADLINE)

    assert not running.is_alive()
    assert reports[-1].line() == "cr.hl7: 1 recorded, 0 refused → done/cr.hl7"
    assert {r.outcome for r in reports[:-1]} == {"retry"}
    assert ledger_messages(ledger) == [("LBC-2026-000101", 1, "file", "cr.hl7")]


# --- the command ----------------------------------------------------------------------------


def test_stopping_finishes_the_current_file_then_returns(
    folder: Path, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    stop = threading.Event()
    watcher = FolderWatcher(folder, ledger, services, after_commit=lambda ids: stop.set())
    for n in range(3):
        drop(folder, f"r{n}.hl7", oru(f"STOP-{n}"), age=60 - n)

    watcher.run(interval=0.01, stop=stop)

    assert names(folder / "done") == ["r0.hl7"]
    assert names(folder) == ["r1.hl7", "r2.hl7"] and names(folder / "processing") == []


def test_once_prints_a_line_per_file_and_exits_1_when_something_was_rejected(
    cli_env: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    drop(folder, "good.hl7", GOOD, age=120)
    drop(folder, "bad.hl7", NO_OBR, age=60)
    drop(folder, "fresh.hl7", GOOD_LATIN1, age=0)  # not settled: not taken

    status = main(["watch", str(folder), "--once", "--settle", "30"])

    assert status == 1
    assert capsys.readouterr().out.splitlines() == [
        "good.hl7: 1 recorded, 0 refused → done/good.hl7",
        "bad.hl7: 0 recorded, 1 refused → rejected/bad.hl7",
    ]
    assert names(folder) == ["fresh.hl7"]

    backdate(folder / "fresh.hl7", 60)
    assert main(["watch", str(folder), "--once"]) == 0
    assert capsys.readouterr().out == "fresh.hl7: 1 recorded, 0 refused → done/fresh.hl7\n"
    assert main(["watch", str(folder), "--once"]) == 0
    assert capsys.readouterr().out == ""


def test_watching_a_folder_that_does_not_exist_says_so(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["watch", str(tmp_path / "nowhere"), "--once"])

    assert status == 2
    assert "nowhere is not a folder" in capsys.readouterr().err


def _command(*args: str) -> list[str]:
    """The CLI in a child process; as root, without the right to read others' files (so a
    file's permissions bind, as they do for the service's own user)."""
    command = [sys.executable, "-m", "workers.cli", *args]
    if os.geteuid() == 0:
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    return command


needs_permissions = pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="running as root without setpriv (util-linux): file permissions do not bind",
)


@needs_permissions
def test_an_unreadable_file_is_rejected_with_the_reason(cli_env: str, folder: Path) -> None:
    path = drop(folder, "secret.hl7", GOOD)
    path.chmod(0)

    done = subprocess.run(
        _command("watch", str(folder), "--once"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )

    assert done.stderr == ""
    assert done.stdout == (
        "secret.hl7: cannot read the file (Permission denied) → rejected/secret.hl7\n"
    )
    assert done.returncode == 1
    reason = read_reason(folder / "rejected" / "secret.hl7.reason.txt")
    assert "cannot read this file (Permission denied)" in reason


@needs_permissions
def test_two_watcher_processes_share_a_folder_and_stop_cleanly_on_sigterm(
    cli_env: str, folder: Path, tmp_path: Path, ledger: sessionmaker[Session]
) -> None:
    logs = [tmp_path / f"watcher{n}.log" for n in range(2)]
    processes = []
    for log in logs:
        with log.open("w") as stderr:
            processes.append(
                subprocess.Popen(
                    [*_command("watch", str(folder), "--interval", "0.05", "--settle", "0")],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                )
            )
    try:
        wait_for(lambda: all("watching" in log.read_text() for log in logs), "both watching")
        files = [f"p{n:03}.hl7" for n in range(40)]
        for name in files:  # written under a dotname, then renamed: as we ask labs to
            drop(folder, f".{name}", oru(f"PROC-{name}")).rename(folder / name)
        wait_for(lambda: len(names(folder / "done")) == len(files), "every file done")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=DEADLINE)[0] for process in processes]

    assert [process.returncode for process in processes] == [0, 0]
    assert outputs == ["", ""]  # nothing printed per file outside --once
    handled = [
        {line.split(": ")[2] for line in log.read_text().splitlines() if "→ done/" in line}
        for log in logs
    ]
    assert handled[0].isdisjoint(handled[1])
    assert sorted(handled[0] | handled[1]) == files
    assert names(folder / "done") == files
    assert count(ledger, Message) == len(files)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.02)


# --- hostile or clumsy names (issue 11) -----------------------------------------------------

#: "résultat.hl7" as a Latin-1 exporter writes it: not valid UTF-8.
LATIN1_NAME = os.fsdecode(b"r\xe9sultat.hl7")
ADT = (HL7 / "adt_a01.hl7").read_bytes()  # ADT-1, refused AR


def test_a_file_name_that_is_not_utf8_is_recorded_and_shown_with_escapes(
    cli_env: str, folder: Path, ledger: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    drop(folder, LATIN1_NAME, GOOD)

    status = main(["watch", str(folder), "--once"])

    out = capsys.readouterr().out
    assert status == 0
    assert out == "r\\xe9sultat.hl7: 1 recorded, 0 refused → done/r\\xe9sultat.hl7\n"
    assert names(folder / "processing") == [] and names(folder) == []
    assert (folder / "done" / LATIN1_NAME).read_bytes() == GOOD  # its own bytes kept
    (ack,) = acks_of(folder / "acks" / (LATIN1_NAME + ".ack"))
    assert msa(ack) == b"MSA|AA|LBC-2026-000101"
    assert ledger_messages(ledger) == [("LBC-2026-000101", 1, "file", "r\\xe9sultat.hl7")]
    assert main(["watch", str(folder), "--once"]) == 0  # the next start has nothing to do
    assert capsys.readouterr().out == ""


def test_a_refused_file_whose_name_is_not_utf8_or_holds_a_newline_is_named_safely(
    watcher: FolderWatcher, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    drop(folder, LATIN1_NAME, NO_OBR, age=120)
    drop(folder, "forged\nlabdispatch: ERROR: x.hl7", NO_OBR.replace(b"NO-OBR", b"NL-1"))

    reports = watcher.poll()

    assert [r.line() for r in reports] == [
        "r\\xe9sultat.hl7: 0 recorded, 1 refused → rejected/r\\xe9sultat.hl7",
        "forged\\nlabdispatch: ERROR: x.hl7: 0 recorded, 1 refused → "
        "rejected/forged\\nlabdispatch: ERROR: x.hl7",
    ]
    reason = read_reason(folder / "rejected" / (LATIN1_NAME + ".reason.txt"))
    assert reason.startswith("r\\xe9sultat.hl7: 1 of 1 message(s) refused")
    assert names(folder / "processing") == []
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_a_file_name_that_is_not_utf8_left_in_processing_does_not_stop_the_next_start(
    watcher: FolderWatcher, folder: Path
) -> None:
    drop(folder / "processing", LATIN1_NAME, GOOD)  # what the crash of issue 11 left

    (report,) = watcher.poll()

    assert report.line() == "r\\xe9sultat.hl7: 1 recorded, 0 refused → done/r\\xe9sultat.hl7"
    assert names(folder / "processing") == []


def _fits(name: str) -> bool:
    return len(os.fsencode(name)) <= 255


def test_a_refused_file_with_a_long_name_gets_a_bounded_reason_file_and_holds_up_no_other(
    watcher: FolderWatcher, folder: Path, ledger: sessionmaker[Session], routed: Routed
) -> None:
    long_name = "a" * 246 + ".hl7"  # with ".reason.txt": 261 bytes, over NAME_MAX
    drop(folder, long_name, ADT, age=120)
    drop(folder, "later.hl7", GOOD, age=60)

    reports = watcher.poll()

    assert [(r.name, r.outcome) for r in reports] == [
        (long_name, "rejected"),
        ("later.hl7", "done"),
    ]
    assert names(folder / "processing") == [] and names(folder) == []
    (kept, reason_file) = names(folder / "rejected")
    assert (folder / "rejected" / kept).read_bytes() == ADT
    assert reason_file == kept + ".reason.txt" and _fits(reason_file)
    assert kept.startswith("a" * 200) and kept.endswith(".hl7")
    assert reports[0].moved_to == f"rejected/{kept}"
    reason = read_reason(folder / "rejected" / reason_file)
    assert reason.startswith(f"{long_name}: 1 of 1 message(s) refused")
    assert "ADT^A01 is not accepted" in reason
    assert sorted(names(folder / "acks")) == sorted([long_name + ".ack", "later.hl7.ack"])
    assert count(ledger, Rejection) == 1 and count(ledger, Message) == 1
    assert len(routed) == 1

    assert watcher.poll() == []  # nothing left over, nothing quarantined twice
    assert count(ledger, Rejection) == 1


@pytest.mark.parametrize(
    "long_name",
    ["b" * 251 + ".hl7", "é" * 125 + ".hl7"],  # 255 bytes and 254 bytes (2 per é)
    ids=["ascii-255", "utf8-254"],
)
def test_accepted_files_with_long_names_get_their_ack_even_dropped_twice(
    folder: Path, ledger: sessionmaker[Session], services: DeliveryServices, long_name: str
) -> None:
    now = time.time()
    watcher = FolderWatcher(folder, ledger, services, clock=lambda: now)
    for data in (GOOD, GOOD_LATIN1):
        drop(folder, long_name, data)
        (report,) = watcher.poll()
        assert report.outcome == "done", report.line()

    done = names(folder / "done")
    assert len(done) == 2 and long_name in done and all(_fits(n) for n in done)
    (second,) = [n for n in done if n != long_name]
    assert (folder / "done" / second).read_bytes() == GOOD_LATIN1
    assert second.endswith(".hl7") and second.isprintable()  # cut between characters
    acks = names(folder / "acks")
    assert len(acks) == 2 and all(_fits(n) and n.endswith(".ack") for n in acks)
    assert sorted(msa(acks_of(folder / "acks" / n)[0]) for n in acks) == [
        b"MSA|AA|LBC-2026-000101",
        b"MSA|AA|LS-000777",
    ]
    assert [m[0] for m in ledger_messages(ledger)] == ["LBC-2026-000101", "LS-000777"]
    assert not any(n.startswith(".") for n in os.listdir(folder / "acks"))  # no temp left


def test_a_file_the_folder_will_not_let_go_is_recorded_once_and_holds_up_no_other(
    folder: Path,
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """rejected/ swapped for a link to another filesystem: the move out of processing/
    fails for real (EXDEV) after the commit."""
    now = [time.time()]
    watcher = FolderWatcher(folder, ledger, services, clock=lambda: now[0])
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        assert elsewhere.stat().st_dev != folder.stat().st_dev
        (folder / "rejected").rmdir()
        (folder / "rejected").symlink_to(elsewhere)
        drop(folder, "refused.hl7", NO_OBR, age=120)
        drop(folder, "good.hl7", GOOD, age=60)

        reports = watcher.poll()

        assert [r.line() for r in reports] == ["good.hl7: 1 recorded, 0 refused → done/good.hl7"]
        assert names(folder / "processing") == ["refused.hl7"]
        assert count(ledger, Rejection) == 1
        assert any(
            r.levelno == logging.WARNING and r.getMessage().startswith("refused.hl7: ")
            for r in caplog.records
        )
        assert watcher.poll() == []  # not tried again before its time
        now[0] += 60
        with pytest.raises(DropFolderError, match=r"^processing/refused\.hl7: "):
            watcher.poll()  # the only file tried failed: the folder itself is in doubt
        assert count(ledger, Rejection) == 1  # tried again: moved only, never recorded again
    finally:
        (folder / "rejected").unlink()
        shutil.rmtree(elsewhere)
    (folder / "rejected").mkdir()
    now[0] += 120

    (report,) = watcher.poll()

    assert report.line() == "refused.hl7: 0 recorded, 1 refused → rejected/refused.hl7"
    assert names(folder / "rejected") == ["refused.hl7", "refused.hl7.reason.txt"]
    assert count(ledger, Rejection) == 1  # one file, one quarantine row
    assert len(names(folder / "acks")) == 2


# --- the size limit ---------------------------------------------------------------------------


def _bytes_read() -> int:
    """Bytes this process has read through read() so far (the kernel's count)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_file_over_the_size_limit_is_refused_from_its_size_and_never_read(
    folder: Path, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    watcher = FolderWatcher(folder, ledger, services, max_bytes=len(GOOD))
    drop(folder, "exact.hl7", GOOD, age=120)  # at the limit: taken
    big = drop(folder, "big.hl7", GOOD, age=60)
    os.truncate(big, 64 * 1024 * 1024)  # a valid message, then 64 MiB (sparse) of nothing
    backdate(big, 60)
    before = _bytes_read()

    reports = watcher.poll()

    assert _bytes_read() - before < 1024 * 1024  # the 64 MiB were never read
    assert [r.line() for r in reports] == [
        "exact.hl7: 1 recorded, 0 refused → done/exact.hl7",
        f"big.hl7: file of {64 * 1024 * 1024} bytes, over the {len(GOOD)}-byte limit "
        "→ rejected/big.hl7",
    ]
    reason = read_reason(folder / "rejected" / "big.hl7.reason.txt")
    assert "split it into several files" in reason
    assert names(folder / "acks") == ["exact.hl7.ack"]  # nothing of big.hl7 answered
    assert count(ledger, Message) == 1 and count(ledger, Rejection) == 0


def test_the_size_limit_is_the_setting_every_intake_shares(
    cli_env: str,
    folder: Path,
    ledger: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABDISPATCH_MAX_MESSAGE_BYTES", "2000")
    padded = GOOD.rstrip(b"\r\n") + b"\rNTE|1||" + b"x" * 1000 + b"\r"  # valid, 2.4 KB
    drop(folder, "padded.hl7", padded)

    assert main(["watch", str(folder), "--once"]) == 1

    assert capsys.readouterr().out == (
        f"padded.hl7: file of {len(padded)} bytes, over the 2000-byte limit → rejected/padded.hl7\n"
    )
    assert count(ledger, Message) == 0 and names(folder / "acks") == []
    assert Settings.from_env({}).max_message_bytes == 16 * 1024 * 1024  # MLLP's and the API's


# --- knowing a file is complete: markers (issue 11) -------------------------------------------


def test_with_markers_a_file_is_taken_only_once_its_marker_is_there(
    folder: Path, ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    watcher = FolderWatcher(folder, ledger, services, settle=1.0, ready="marker")
    path = drop(folder, "slow.hl7", GOOD[:200], age=3600)  # paused far longer than --settle

    assert watcher.poll() == []
    assert names(folder) == ["slow.hl7"]  # settled by its mtime, but no marker: not taken

    with path.open("ab") as writer:
        writer.write(GOOD[200:])
    drop(folder, "slow.hl7.ok", b"")  # the exporter's word that it is complete
    drop(folder, "orphan-marker.hl7.ok", b"")  # a marker alone is never data

    (report,) = watcher.poll()

    assert report.line() == "slow.hl7: 1 recorded, 0 refused → done/slow.hl7"
    assert (folder / "done" / "slow.hl7").read_bytes() == GOOD
    assert names(folder) == ["orphan-marker.hl7.ok"]  # its own marker consumed
    assert watcher.poll() == []


def test_with_markers_a_file_put_back_while_the_ledger_is_down_keeps_its_marker(
    request: pytest.FixtureRequest,
    engine: Engine,
    folder: Path,
    ledger: sessionmaker[Session],
    services: DeliveryServices,
) -> None:
    watcher = FolderWatcher(folder, ledger, services, ready="marker")
    drop(folder, "cr.hl7", GOOD)
    drop(folder, "cr.hl7.ok", b"")
    restore = break_ledger(request, engine)

    (report,) = watcher.poll()

    assert report.outcome == "retry"
    assert names(folder) == ["cr.hl7", "cr.hl7.ok"]
    restore()
    (report,) = watcher.poll()
    assert report.line() == "cr.hl7: 1 recorded, 0 refused → done/cr.hl7"


def test_once_with_ready_marker_from_the_command_line(
    cli_env: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    drop(folder, "a.hl7", GOOD)
    drop(folder, "b.hl7", GOOD_LATIN1)
    drop(folder, "b.hl7.ok", b"")

    assert main(["watch", str(folder), "--once", "--ready", "marker"]) == 0

    assert capsys.readouterr().out == "b.hl7: 1 recorded, 0 refused → done/b.hl7\n"
    assert names(folder) == ["a.hl7"]


# --- AA only after the commit (issue 11) ------------------------------------------------------


@pytest.mark.parametrize("failure", ["database", "other"])
def test_when_the_commit_itself_fails_no_aa_nothing_stored_nothing_routed(
    watcher: FolderWatcher,
    folder: Path,
    ledger: sessionmaker[Session],
    routed: Routed,
    failure: str,
) -> None:
    """The commit is the moment a result is ours: if it raises, the lab must not hold an
    AA. (Breaking the database before recording never reaches the commit.)"""

    def failing_commit(session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint released inside recording: not the commit
        if failure == "database":
            raise OperationalError("COMMIT", None, Exception("disk I/O error"))
        raise RuntimeError("the commit failed")

    drop(folder, "cr.hl7", GOOD)
    event.listen(ledger, "before_commit", failing_commit)  # the watcher's sessions
    try:
        (report,) = watcher.poll()
    finally:
        event.remove(ledger, "before_commit", failing_commit)

    assert count(ledger, Message) == 0 and count(ledger, Rejection) == 0
    assert routed == []
    aa = [
        path
        for path in (folder / "acks").iterdir()
        if any(msa(ack).startswith(b"MSA|AA|") for ack in acks_of(path))
    ]
    assert aa == []
    if failure == "database":  # the ledger-down rule: back in the folder, tried again
        assert report.outcome == "retry" and names(folder) == ["cr.hl7"]
        (report,) = watcher.poll()
        assert report.line() == "cr.hl7: 1 recorded, 0 refused → done/cr.hl7"
        assert len(routed) == 1 and count(ledger, Message) == 1
    else:  # our bug: refused whole, nothing recorded, nothing acknowledged
        assert report.outcome == "rejected" and names(folder / "acks") == []


# --- no patient value in the watcher's logs (issue 11) ----------------------------------------


def _patient_values(*messages: bytes) -> set[str]:
    """Each message's patient identifiers (PID-3.1 of every repetition) and name parts
    (PID-5.1 and PID-5.2), as text."""
    values = set()
    for data in messages:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        for segment in text.replace("\n", "\r").split("\r"):
            if segment.startswith("PID|"):
                fields = segment.split("|")
                values |= {repetition.split("^")[0] for repetition in fields[3].split("~")}
                values |= set(fields[5].split("~")[0].split("^")[:2])
    return values - {""}


def test_the_watcher_logs_no_patient_value_even_at_debug(
    folder: Path,
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    caplog: pytest.LogCaptureFixture,
) -> None:
    values = _patient_values(GOOD, NO_OBR, GOOD_LATIN1)
    assert len(values) >= 4

    def broker_quoting_its_payload(message_ids: Sequence[int]) -> None:
        raise ConnectionError(f"could not queue {sorted(values)}")

    caplog.set_level(logging.DEBUG)
    watcher = FolderWatcher(folder, ledger, services, after_commit=broker_quoting_its_payload)
    drop(folder, "accepted.hl7", GOOD, age=120)
    drop(folder, "refused.hl7", NO_OBR, age=100)
    drop(folder, "mixed.hl7", GOOD_LATIN1 + NO_OBR.replace(b"NO-OBR", b"NO-OBR-2"), age=80)
    drop(folder, "big.hl7", GOOD + b"x" * 20 * 1024 * 1024, age=60)
    drop(folder / "processing", "orphan.hl7", GOOD.replace(b"LBC-2026-000101", b"ORPH-1"))

    reports = watcher.poll()

    assert len(reports) == 5
    logged = caplog.text
    assert "accepted.hl7" in logged and "refused.hl7" in logged
    assert [value for value in values if value in logged] == []
