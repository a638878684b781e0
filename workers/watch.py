"""Folder intake: laboratories that export files drop them in a folder; we record them.

The folder is a queue with no broker: a file's place says where it is in its life.

    DIR/               dropped by the laboratory, waiting (taken once it has settled)
    DIR/processing/    claimed by one watcher, being recorded
    DIR/done/          every message recorded (accepted, duplicate, held, conflict)
    DIR/rejected/      at least one message refused; `<name>.reason.txt` says which and why
    DIR/acks/          `<name>.ack`: the HL7 ACK of each message, for labs that read them

Why it is safe to run several watchers on one folder, and to kill one at any moment:

- A file is claimed by `os.rename` into `processing/`: on one filesystem a rename is atomic,
  so of two watchers renaming the same file exactly one succeeds; the other gets
  FileNotFoundError and skips it.
- The claimer holds an exclusive `flock` on the file from before the rename until the file
  has left `processing/`. A file in `processing/` that nobody holds locked belongs to a
  watcher that died: any watcher adopts it (the kernel drops a dead process's locks).
  Recording is idempotent (same bytes = duplicate), so processing it again is harmless.
- Nothing leaves `processing/` for `done/` or `rejected/`, and no ACK is written, before
  the ledger commit (ARCHITECTURE rule 1). When the commit fails the file goes back to DIR
  and is tried again: nothing is lost.
- Files with the same name pass through `processing/<name>` one at a time, and `done/`,
  `rejected/` and `acks/` names are never reused (a clash gets a timestamp suffix), so no
  move ever replaces another file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import begin_write, first_line
from pipeline.delivery.intake import Answer, Inbound, accept_batch
from pipeline.delivery.services import DeliveryServices
from pipeline.errors import LabdispatchError
from pipeline.reading import claimed_identity
from workers.hooks import AfterCommit

logger = logging.getLogger(__name__)

PROCESSING = "processing"
DONE = "done"
REJECTED = "rejected"
ACKS = "acks"
SUBFOLDERS = (PROCESSING, DONE, REJECTED, ACKS)

#: Names a laboratory's exporter uses while it is still writing; it renames them when done.
PARTIAL_SUFFIXES = (".tmp", ".part", ".filepart")
REASON_SUFFIX = ".reason.txt"
REASON_WIDTH = 88  # explanations wrapped for a text editor; refusal lines never cut
ACK_SUFFIX = ".ack"

#: Seconds a file must go unwritten before it is taken (`--settle`).
DEFAULT_SETTLE = 1.0
#: Seconds between two looks at the folder (`--interval`).
DEFAULT_INTERVAL = 1.0
#: Longest wait between retries while the ledger is down (the interval doubles up to it).
MAX_BACKOFF = 60.0

#: Outcomes of one file.
OUTCOME_DONE = "done"
OUTCOME_REJECTED = "rejected"
OUTCOME_RETRY = "retry"  # not recorded (ledger unavailable): back in DIR for the next poll

#: What counts as recorded: the message is in the ledger and the laboratory need do nothing.
RECORDED = frozenset({"accepted", "duplicate", "held", "conflict"})


class DropFolderError(LabdispatchError):
    """The drop folder (or one of its sub-folders) cannot be used."""


@dataclass(frozen=True)
class FileReport:
    """What became of one file: one line for an operator, never any patient data."""

    name: str
    outcome: str
    recorded: int = 0
    refused: int = 0
    #: Where the file is now, relative to the drop folder ("done/x.hl7", "x.hl7").
    moved_to: str = ""
    #: Why a whole file was refused or put back ("empty file", "the ledger is unavailable…").
    note: str = ""

    def line(self) -> str:
        if self.outcome == OUTCOME_RETRY:
            return f"{self.name}: not recorded ({self.note}) → {self.moved_to}, tried again later"
        if self.note:
            return f"{self.name}: {self.note} → {self.moved_to}"
        return f"{self.name}: {self.recorded} recorded, {self.refused} refused → {self.moved_to}"


@dataclass
class _Claim:
    """A file this watcher owns: its path in processing/, the open (locked) descriptor."""

    name: str
    path: Path
    fd: int | None  # None: the file could not be opened (unreadable); no lock held
    error: OSError | None = None  # why it could not be opened


class FolderWatcher:
    """Takes settled files from a drop folder and records them in the ledger.

    `poll()` is one pass (what `--once` and each turn of `run()` do): first the files a dead
    watcher left in processing/, then every settled file in the folder, oldest first.
    """

    def __init__(
        self,
        folder: Path,
        sessions: sessionmaker[Session],
        services: DeliveryServices,
        *,
        settle: float = DEFAULT_SETTLE,
        after_commit: AfterCommit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.sessions = sessions
        self.services = services
        self.settle = settle
        self.after_commit = after_commit
        self.clock = clock
        #: name → ((size, mtime_ns), when first seen so): for files whose mtime is ahead
        #: of our clock, settled by watching them instead (see `_settled`).
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        self._prepare()

    # --- the folder --------------------------------------------------------------------

    def _prepare(self) -> None:
        """Create the sub-folders and check that a rename between them is atomic."""
        if not self.folder.is_dir():
            raise DropFolderError(f"{self.folder} is not a folder (the drop folder to watch)")
        device = self.folder.stat().st_dev
        for sub in SUBFOLDERS:
            path = self.folder / sub
            try:
                path.mkdir(exist_ok=True)
            except OSError as error:
                raise DropFolderError(
                    f"cannot create {path}: {error.strerror or error}; the watcher needs to "
                    "write in the drop folder"
                ) from error
            if path.stat().st_dev != device:
                raise DropFolderError(
                    f"{path} is on another filesystem than {self.folder}: files are claimed and "
                    "moved by renaming, which is only atomic within one filesystem"
                )

    def _list(self, folder: Path) -> list[tuple[str, os.stat_result]]:
        """Regular files directly in `folder` (no symlinks, dotfiles or partial names)."""
        found = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not _takeable(entry.name):
                        continue
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        found.append((entry.name, entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue  # taken meanwhile
        except OSError as error:
            raise DropFolderError(f"cannot list {folder}: {error.strerror or error}") from error
        found.sort(key=lambda item: (item[1].st_mtime_ns, item[0]))
        return found

    def orphans(self) -> list[Path]:
        """Files in processing/ (a dead watcher's, or a live one's: `adopt` tells them apart)."""
        processing = self.folder / PROCESSING
        return [processing / name for name, _ in self._list(processing)]

    def settled_files(self) -> list[Path]:
        """Files in the folder that nobody has written for the settle time, oldest first."""
        now = self.clock()
        listed = self._list(self.folder)
        present = {name for name, _ in listed}
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]
        return [self.folder / name for name, st in listed if self._settled(name, st, now)]

    def _settled(self, name: str, st: os.stat_result, now: float) -> bool:
        """Every write moves a file's mtime, so a file whose mtime is `settle` seconds old has
        not changed size or content for that long: its writer is done with it.

        A file whose mtime is ahead of our clock (a share whose server clock is fast) cannot
        be judged so; it is settled once we have seen its size and mtime unchanged for the
        settle time."""
        age = now - st.st_mtime
        if age >= self.settle:
            self._seen.pop(name, None)
            return True
        if age >= 0:
            return False
        key = (st.st_size, st.st_mtime_ns)
        seen = self._seen.get(name)
        if seen is None or seen[0] != key:
            self._seen[name] = (key, now)
            return self.settle <= 0
        return now - seen[1] >= self.settle

    # --- one pass ----------------------------------------------------------------------

    def poll(self, stop: threading.Event | None = None) -> list[FileReport]:
        """Adopt orphans, then take every settled file; stops early (between two files) when
        `stop` is set, and after a file that could not be recorded (the ledger is down: the
        next files would fail the same way)."""
        reports: list[FileReport] = []
        for take, paths in ((self.adopt, self.orphans), (self.take, self.settled_files)):
            for path in paths():
                if stop is not None and stop.is_set():
                    return reports
                try:
                    report = take(path)
                except OSError as error:
                    # The folder itself misbehaves (full, read-only, unmounted): a claimed
                    # file is released, left where it is, and adopted at a later poll.
                    raise DropFolderError(
                        f"{path}: {error.strerror or error} (the drop folder cannot be used)"
                    ) from error
                if report is None:
                    continue
                reports.append(report)
                if report.outcome == OUTCOME_RETRY:
                    return reports
        return reports

    def run(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        stop: threading.Event,
        on_report: Callable[[FileReport], None] | None = None,
    ) -> None:
        """Poll until `stop` is set; the current file is always finished first. While the
        ledger is down the wait doubles, up to a minute, so a long outage is not a flood of
        identical warnings."""
        delay = interval
        while not stop.is_set():
            try:
                reports = self.poll(stop)
                failed = any(report.outcome == OUTCOME_RETRY for report in reports)
            except DropFolderError as error:
                logger.warning("%s; trying again in %g s", error, delay)
                reports, failed = [], True
            if on_report is not None:
                for report in reports:
                    on_report(report)
            if failed:
                stop.wait(delay)
                delay = min(max(delay, 0.1) * 2, MAX_BACKOFF)
            else:
                delay = interval
                stop.wait(interval)

    # --- claiming ----------------------------------------------------------------------

    def take(self, path: Path) -> FileReport | None:
        """Claim a file of the drop folder and process it; None when it is not ours to
        process now (another watcher took it, or it is still being written)."""
        name = path.name
        target = self.folder / PROCESSING / name
        if os.path.lexists(target):
            # A file of the same name is being processed (or was left by a dead watcher and
            # is adopted first): one at a time, so neither move replaces the other.
            return None
        try:
            fd = _open_locked(path)
        except FileNotFoundError:
            return None  # another watcher took it
        except _Busy:
            return None  # another watcher is claiming it right now
        except OSError as error:
            if not _is_unreadable(error):
                raise DropFolderError(f"cannot open {path}: {error.strerror or error}") from error
            return self._take_unreadable(path, target, error)
        try:
            before = os.fstat(fd)
            if not _same_file(before, path) or not stat.S_ISREG(before.st_mode):
                os.close(fd)
                return None  # replaced since we listed it: looked at again next poll
            os.rename(path, target)
        except FileNotFoundError:
            os.close(fd)
            return None  # another watcher renamed it first
        except OSError:
            os.close(fd)
            raise
        claim = _Claim(name, target, fd)
        if not _same_file(before, target):
            # The name was swapped between our check and the rename: what we moved is not
            # the file we hold; it sits unlocked in processing/ and is adopted next poll.
            self._release(claim)
            return None
        return self._process(claim, written_since=before)

    def adopt(self, path: Path) -> FileReport | None:
        """Process a file found in processing/ if no live watcher holds it."""
        try:
            fd = _open_locked(path)
        except (FileNotFoundError, _Busy):
            return None  # finished meanwhile, or its watcher is alive and working on it
        except OSError as error:
            if not _is_unreadable(error):
                raise DropFolderError(f"cannot open {path}: {error.strerror or error}") from error
            return self._reject_unreadable(_Claim(path.name, path, None, error))
        claim = _Claim(path.name, path, fd)
        if not _same_file(os.fstat(fd), path):
            self._release(claim)
            return None
        logger.info(
            "%s: left in %s/ by a stopped watcher; processing it now", path.name, PROCESSING
        )
        return self._process(claim, written_since=None)

    def _take_unreadable(self, path: Path, target: Path, error: OSError) -> FileReport | None:
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        return self._reject_unreadable(_Claim(path.name, target, None, error))

    def _release(self, claim: _Claim) -> None:
        if claim.fd is not None:
            os.close(claim.fd)  # drops the lock
            claim.fd = None

    # --- processing --------------------------------------------------------------------

    def _process(self, claim: _Claim, *, written_since: os.stat_result | None) -> FileReport | None:
        assert claim.fd is not None
        try:
            try:
                data = _read_all(claim.fd)
                after = os.fstat(claim.fd)
            except OSError as error:
                claim.error = error
                return self._reject_unreadable(claim)
            if written_since is not None and (
                after.st_size != len(data) or after.st_mtime_ns != written_since.st_mtime_ns
            ):
                # Someone still writes it (a writer keeps its descriptor across our rename).
                logger.info("%s: still being written; left for a later poll", claim.name)
                self._put_back(claim)
                return None
            if not data:
                return self._reject_whole(
                    claim,
                    "empty file",
                    "The file is empty: there is nothing to record. An exporter that creates "
                    "the file before writing it should write under a temporary name (ending "
                    "in .tmp or .part, or starting with a dot) and rename it once complete.",
                )
            return self._record(claim, data)
        finally:
            self._release(claim)

    def _record(self, claim: _Claim, data: bytes) -> FileReport | None:
        name = claim.name
        try:
            with self.sessions() as session:
                begin_write(session)  # SQLite: wait for another writer rather than fail
                (answers,) = accept_batch(
                    session, [Inbound(data, "file", name)], self.services, now=self.services.clock()
                )
                session.commit()
        except SQLAlchemyError as error:
            orig = getattr(error, "orig", None)
            reason = f"the ledger is unavailable: {first_line(orig or error)}"
            moved_to = self._put_back(claim)
            logger.warning("%s: not recorded, %s; it will be tried again", name, reason)
            return FileReport(name, OUTCOME_RETRY, moved_to=moved_to, note=reason)
        except Exception as error:
            # A bug of ours. One bad file must not stop the folder: it is refused with a
            # note for the lab, the details (no patient data) go to the operator's log.
            logger.error(
                "%s: not recorded, internal error (%s); moved to %s/",
                name,
                type(error).__name__,
                REJECTED,
                exc_info=True,
            )
            return self._reject_whole(
                claim,
                f"internal error ({type(error).__name__})",
                "labdispatch could not process this file because of an internal error; the "
                "operators have the details in the watcher's log. Nothing of it was recorded: "
                "drop it again once they have fixed the problem.",
            )

        refused = [answer for answer in answers if answer.status not in RECORDED]
        recorded = len(answers) - len(refused)
        self._write_acks(name, answers)
        if refused:
            moved = self._move_out(
                claim, REJECTED, reason=_reason_text(name, answers, refused, self.clock())
            )
        else:
            moved = self._move_out(claim, DONE)
        outcome = OUTCOME_REJECTED if refused else OUTCOME_DONE
        report = FileReport(name, outcome, recorded, len(refused), moved or "")
        logger.info("%s", report.line())
        self._after_commit(name, answers)
        return report

    def _after_commit(self, name: str, answers: Sequence[Answer]) -> None:
        if self.after_commit is None:
            return
        ids = [a.message_id for a in answers if a.to_route and a.message_id is not None]
        if not ids:
            return
        try:
            self.after_commit(ids)
        except Exception as error:
            # Recorded is recorded: the reconcile job queues what this hook failed to.
            logger.error(
                "%s: recorded, but routing could not be queued (%s: %s); the reconcile job "
                "will queue it",
                name,
                type(error).__name__,
                first_line(error),
                exc_info=True,
            )

    def _reject_unreadable(self, claim: _Claim) -> FileReport | None:
        error = claim.error
        why = (error.strerror if error is not None else None) or "unreadable"
        return self._reject_whole(
            claim,
            f"cannot read the file ({why})",
            f"The watcher cannot read this file ({why}). Nothing of it was recorded: make it "
            "readable by the user the watcher runs as, and drop it again.",
        )

    def _reject_whole(self, claim: _Claim, note: str, text: str) -> FileReport | None:
        """Refuse a file as a whole (nothing of it reached the ledger)."""
        reason = f"{claim.name}: {note}\n\n{textwrap.fill(text, REASON_WIDTH)}\n"
        moved = self._move_out(claim, REJECTED, reason=reason)
        if moved is None:
            return None
        report = FileReport(claim.name, OUTCOME_REJECTED, moved_to=moved, note=note)
        logger.info("%s", report.line())
        return report

    # --- moving and writing ------------------------------------------------------------

    def _move_out(self, claim: _Claim, sub: str, *, reason: str | None = None) -> str | None:
        """Move a processed file to done/ or rejected/ under a free name (its reason file
        first, so whoever sees the file can read why); returns where it went, or None when
        another watcher moved it first (only possible for an unreadable file: no lock)."""
        folder = self.folder / sub
        also = (REASON_SUFFIX,) if reason is not None else ()
        target = _free_name(folder, claim.name, self.clock(), also=also)
        reason_file = folder / (target.name + REASON_SUFFIX)
        if reason is not None:
            _write_file(folder, reason_file.name, reason.encode("utf-8"))
        try:
            os.rename(claim.path, target)
        except FileNotFoundError:
            if reason is not None:
                reason_file.unlink(missing_ok=True)
            return None
        return f"{sub}/{target.name}"

    def _put_back(self, claim: _Claim) -> str:
        """Return a claimed file to the drop folder; if a new file of that name is already
        there, leave it in processing/ (adopted at the next poll) rather than replace it."""
        target = self.folder / claim.name
        if not os.path.lexists(target):
            with contextlib.suppress(FileNotFoundError):
                os.rename(claim.path, target)
                return claim.name
        return f"{PROCESSING}/{claim.name}"

    def _write_acks(self, name: str, answers: Sequence[Answer]) -> None:
        """acks/<name>.ack: each message's ACK (CR segment ends), one per line, in order."""
        acks = [answer.ack for answer in answers if answer.ack is not None]
        if not acks:
            return  # every message asked for no accept ACK (MSH-15)
        folder = self.folder / ACKS
        try:
            target = _free_name(folder, name + ACK_SUFFIX, self.clock())
            _write_file(folder, target.name, b"\n".join(acks))
        except OSError as error:
            # The messages are committed; the ACK file is a courtesy copy of what the ledger
            # says. Say so loudly, but do not undo or repeat the recording.
            logger.error("%s: recorded, but the ACK file could not be written (%s)", name, error)


class _Busy(Exception):
    """Another process holds the file's lock."""


def _takeable(name: str) -> bool:
    """Dotfiles and partial names are files an exporter is still writing (write, then
    rename is the protocol we ask labs to follow)."""
    return not name.startswith(".") and not name.lower().endswith(PARTIAL_SUFFIXES)


def _open_locked(path: Path) -> int:
    """Open for reading and take the exclusive lock without waiting (raises _Busy).

    O_NONBLOCK: a FIFO swapped in under the name must not hang the watcher."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _Busy from None
    except OSError:
        os.close(fd)
        raise
    return fd


def _is_unreadable(error: OSError) -> bool:
    return error.errno in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.EIO)


def _same_file(st: os.stat_result, path: Path) -> bool:
    try:
        other = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _free_name(folder: Path, name: str, now: float, *, also: Sequence[str] = ()) -> Path:
    """`name`, or when taken `stem.<UTC timestamp>[-n].ext`: never an existing file's name
    (nor one whose companion `name + suffix` for each suffix in `also` exists)."""

    def free(candidate: str) -> bool:
        return not any(os.path.lexists(folder / (candidate + s)) for s in ("", *also))

    if free(name):
        return folder / name
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 10_000):
        candidate = f"{stem}.{stamp}{'' if n == 1 else f'-{n}'}{dot}{ext}"
        if free(candidate):
            return folder / candidate
    raise DropFolderError(f"no free name for {name} in {folder}")


def _write_file(folder: Path, name: str, data: bytes) -> None:
    """Write under a temporary dotfile name, then rename: a lab's script polling the folder
    never reads half a file (the same rule we ask of them)."""
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)
        os.rename(temporary, folder / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _reason_text(
    name: str, answers: Sequence[Answer], refused: Sequence[Answer], now: float
) -> str:
    """The reason file: which messages were refused and why, and what happened to the rest."""
    when = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"{name}: {len(refused)} of {len(answers)} message(s) refused ({when})", ""]
    lines += [_refusal_line(answer) for answer in refused]
    lines.append("")
    recorded = len(answers) - len(refused)
    if recorded:
        advice = (
            f"The other {recorded} message(s) of this file WERE recorded. Fix the refused "
            "message(s) and drop the whole file again: the recorded ones are recognised as "
            "duplicates (same control ID, same content) and not delivered twice; only the "
            "fixed ones are added."
        )
    else:
        advice = "No message of this file was recorded. Fix it and drop it again."
    lines.append(textwrap.fill(advice, REASON_WIDTH))
    return "\n".join(lines) + "\n"


def _refusal_line(answer: Answer) -> str:
    result = answer.result
    control_id = claimed_identity(result)[1] or "none"
    error = result.error
    if error is None:
        return f"message {result.index} (control ID {control_id}): AR: refused"
    return (
        f"message {result.index} (control ID {control_id}): {error.ack_code} "
        f"{type(error).__name__}: {error}"
    )


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop`: the watcher finishes its current file, then returns."""
    import signal

    def handler(signum: int, frame: object) -> None:
        logger.info("%s received: stopping after the current file", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
