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
  the ledger commit (ARCHITECTURE rule 1). When the commit fails (the ledger unavailable,
  as `workers.intake_commit` decides for every intake) the file goes back to DIR and is
  tried again: nothing is lost.
- Files with the same name pass through `processing/<name>` one at a time, and `done/`,
  `rejected/` and `acks/` names are never reused (a clash gets a timestamp suffix), so no
  move ever replaces another file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
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

from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import first_line
from pipeline.delivery.intake import UNAVAILABLE, Answer, Inbound, Stored
from pipeline.delivery.services import DeliveryServices
from pipeline.errors import LabdispatchError
from pipeline.reading import claimed_identity
from pipeline.settings import DEFAULT_MAX_MESSAGE_BYTES
from workers.hooks import AfterCommit
from workers.intake_commit import IntakeCommit

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
#: `--ready marker`: `X` is taken once the exporter has written `X` + this (empty) marker.
MARKER_SUFFIX = ".ok"
#: How a file is known to be complete (`--ready`): its mtime has not moved for the settle
#: time, or its exporter wrote its marker after it.
READY_SETTLE = "settle"
READY_MARKER = "marker"
READY_MODES = (READY_SETTLE, READY_MARKER)
#: The longest file name (bytes) a derived name (done/, rejected/, acks/, reason) may have:
#: Linux's NAME_MAX, and what SMB and most filesystems allow.
NAME_MAX = 255
#: Room for the `.<UTC timestamp>-NNNN` a clashing name gets.
_STAMP_ROOM = len(".20261128T093102Z-9999")

#: Seconds a file must go unwritten before it is taken (`--settle`).
DEFAULT_SETTLE = 1.0
#: Seconds between two looks at the folder (`--interval`).
DEFAULT_INTERVAL = 1.0
#: Longest wait between retries while the ledger is down (the interval doubles up to it).
MAX_BACKOFF = 60.0
#: First wait before a file whose handling failed (the folder refused a move) is tried
#: again; it doubles up to MAX_BACKOFF. The other files are not held up meanwhile.
FILE_RETRY = 1.0

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

    @property
    def shown(self) -> str:
        """The name as text may carry it (logs, reason files, the ledger)."""
        return display_name(self.name)


@dataclass(frozen=True)
class _Unfinished:
    """A file whose messages are committed but which could not be moved out of processing/
    (the folder refused it): at the next try it is only moved, never recorded again."""

    sub: str
    reason: str | None
    report: FileReport


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
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        ready: str = READY_SETTLE,
    ) -> None:
        if ready not in READY_MODES:
            raise ValueError(f"ready must be one of {', '.join(READY_MODES)}, not {ready!r}")
        self.folder = folder
        self.sessions = sessions
        self.services = services
        self.settle = settle
        self.after_commit = after_commit
        #: The intake commit policy every intake shares (`workers.intake_commit`).
        self._intake = IntakeCommit(sessions, services, after_commit=after_commit)
        self.clock = clock
        self.max_bytes = max_bytes
        self.ready = ready
        #: name → ((size, mtime_ns), when first seen so): for files whose mtime is ahead
        #: of our clock, settled by watching them instead (see `_settled`).
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        #: (device, inode, size, mtime_ns) of files committed but not yet moved out.
        self._unfinished: dict[tuple[int, int, int, int], _Unfinished] = {}
        #: name → (when it may be tried again, the wait after that): files whose handling
        #: failed; skipped until then so that they hold up no other file.
        self._failing: dict[str, tuple[float, float]] = {}
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
        markers = self.ready == READY_MARKER
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not _takeable(entry.name) or (markers and _is_marker(entry.name)):
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
        """Files in the folder that are complete, oldest first: nobody has written them for
        the settle time (`--ready settle`), or their marker is there (`--ready marker`)."""
        now = self.clock()
        listed = self._list(self.folder)
        if self.ready == READY_MARKER:
            return [self.folder / name for name, _ in listed if self._marked(name)]
        present = {name for name, _ in listed}
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]
        return [self.folder / name for name, st in listed if self._settled(name, st, now)]

    def _marker(self, name: str) -> Path:
        return self.folder / (name + MARKER_SUFFIX)

    def _marked(self, name: str) -> bool:
        """The exporter wrote `name.ok` once `name` was complete (a regular file, not a
        link: a marker is the exporter's word, nobody else's)."""
        try:
            return stat.S_ISREG(os.lstat(self._marker(name)).st_mode)
        except OSError:
            return False

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
        next files would fail the same way).

        A file the folder will not let us handle (a move refused) is left where it is,
        logged, and tried again later on its own clock (`FILE_RETRY`, doubling): the other
        files go on. Only when every file tried failed so is the folder itself in doubt
        (full, read-only, unmounted): DropFolderError, and `run` backs off."""
        reports: list[FileReport] = []
        failures: list[str] = []
        tried = 0
        now = self.clock()
        self._forget_unfinished()
        for take, paths in ((self.adopt, self.orphans), (self.take, self.settled_files)):
            for path in paths():
                if stop is not None and stop.is_set():
                    return reports
                failing = self._failing.get(path.name)
                if failing is not None and now < failing[0]:
                    continue
                tried += 1
                try:
                    report = take(path)
                except (OSError, DropFolderError) as error:
                    failures.append(self._failed(path, error, now))
                    continue
                self._failing.pop(path.name, None)
                if report is None:
                    continue
                reports.append(report)
                if report.outcome == OUTCOME_RETRY:
                    return reports
        if failures and len(failures) == tried:
            raise DropFolderError(f"{failures[0]} (the drop folder cannot be used)")
        return reports

    def _failed(self, path: Path, error: OSError | DropFolderError, now: float) -> str:
        """Note a file that could not be handled (a claimed one was released and stays where
        it is); returns the one line said about it, also logged."""
        delay = self._failing.get(path.name, (0.0, FILE_RETRY))[1]
        self._failing[path.name] = (now + delay, min(delay * 2, MAX_BACKOFF))
        why = (error.strerror or str(error)) if isinstance(error, OSError) else str(error)
        where = path.parent.name + "/" if path.parent != self.folder else ""
        line = f"{where}{display_name(path.name)}: {why}"
        logger.warning("%s; this file is tried again in %g s, the others go on", line, delay)
        return line

    def _forget_unfinished(self) -> None:
        """Drop what we know of committed files that are no longer in processing/ (moved
        by hand): their inode may be reused by a new file, which must be recorded."""
        if not self._unfinished:
            return
        present = set()
        for path in self.orphans():
            with contextlib.suppress(OSError):
                present.add(_identity(os.stat(path, follow_symlinks=False)))
        for key in list(self._unfinished):
            if key not in present:
                del self._unfinished[key]

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
        if self.ready == READY_MARKER:
            # Its marker has said its word; a new one is the exporter's for a new file of
            # that name. (Put back, the file gets its marker again: see `_put_back`.)
            self._marker(name).unlink(missing_ok=True)
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
        held = os.fstat(fd)
        if not _same_file(held, path):
            self._release(claim)
            return None
        unfinished = self._unfinished.get(_identity(held))
        if unfinished is not None:
            # Recorded already, by us: only the move is left to do (never a second record).
            try:
                return self._finish(claim, unfinished)
            finally:
                self._release(claim)
        logger.info(
            "%s: left in %s/ by a stopped watcher; processing it now", claim.shown, PROCESSING
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
            size = os.fstat(claim.fd).st_size
            if size > self.max_bytes:
                return self._reject_too_large(claim, size)
            try:
                data = _read_all(claim.fd, self.max_bytes)
                after = os.fstat(claim.fd)
            except OSError as error:
                claim.error = error
                return self._reject_unreadable(claim)
            if written_since is not None and (
                after.st_size != len(data) or after.st_mtime_ns != written_since.st_mtime_ns
            ):
                # Someone still writes it (a writer keeps its descriptor across our rename).
                logger.info("%s: still being written; left for a later poll", claim.shown)
                self._put_back(claim)
                return None
            if len(data) > self.max_bytes:  # it grew past the limit while we read it
                return self._reject_too_large(claim, after.st_size)
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
        name = claim.shown  # a name that is not UTF-8 is kept in the ledger with escapes
        finish: _Unfinished | None = None

        def answer(stored: list[Stored]) -> None:
            # Committed (or not): the ACK file, what the laboratory reads, comes first; the
            # after-commit hook runs next (`IntakeCommit`), then the file is moved out.
            nonlocal finish
            (item,) = stored
            if not item.committed:
                return
            answers = item.answers
            refused = [answer for answer in answers if answer.status not in RECORDED]
            self._write_acks(claim.name, answers)
            finish = _Unfinished(
                REJECTED if refused else DONE,
                _reason_text(name, answers, refused, self.clock()) if refused else None,
                FileReport(
                    name,
                    OUTCOME_REJECTED if refused else OUTCOME_DONE,
                    len(answers) - len(refused),
                    len(refused),
                ),
            )

        def hook_failed(count: int, error: Exception) -> None:
            # Recorded is recorded: the reconcile job queues what this hook failed to. The
            # error's type only: its text may quote what it was handling.
            logger.error(
                "%s: recorded, but routing could not be queued (%s); the reconcile job "
                "will queue it",
                name,
                type(error).__name__,
                exc_info=_debug(),
            )

        self._intake.after_commit = self.after_commit
        (stored,) = self._intake.commit(
            [Inbound(data, "file", name)],
            answer,
            failed=lambda items, error: None,  # said below, with the file's name
            hook_failed=hook_failed,
        )
        if stored.failure == UNAVAILABLE:
            error = stored.error
            assert error is not None
            orig = getattr(error, "orig", None)
            reason = f"the ledger is unavailable: {first_line(orig or error)}"
            moved_to = self._put_back(claim)
            logger.warning("%s: not recorded, %s; it will be tried again", name, reason)
            return FileReport(name, OUTCOME_RETRY, moved_to=moved_to, note=reason)
        if stored.failure:
            # A bug of ours. One bad file must not stop the folder: it is refused with a
            # note for the lab, the details (no patient data) go to the operator's log.
            error_type = type(stored.error).__name__
            logger.error(
                "%s: not recorded, internal error (%s); moved to %s/",
                name,
                error_type,
                REJECTED,
                exc_info=stored.error if _debug() else None,
            )
            return self._reject_whole(
                claim,
                f"internal error ({error_type})",
                "labdispatch could not process this file because of an internal error; the "
                "operators have the details in the watcher's log. Nothing of it was recorded: "
                "drop it again once they have fixed the problem.",
            )
        # Committed: from here on, nothing may send this file through recording again.
        assert finish is not None and claim.fd is not None
        key = _identity(os.fstat(claim.fd))
        self._unfinished[key] = finish
        report = self._finish(claim, finish)
        self._unfinished.pop(key, None)
        return report

    def _finish(self, claim: _Claim, finish: _Unfinished) -> FileReport | None:
        """Move a committed file to done/ or rejected/ (raises OSError if the folder refuses:
        the file stays in processing/ and `_unfinished` says it is recorded already)."""
        moved = self._move_out(claim, finish.sub, reason=finish.reason)
        report = FileReport(
            finish.report.name,
            finish.report.outcome,
            finish.report.recorded,
            finish.report.refused,
            moved or "",
        )
        logger.info("%s", report.line())
        return report

    def _reject_unreadable(self, claim: _Claim) -> FileReport | None:
        error = claim.error
        why = (error.strerror if error is not None else None) or "unreadable"
        return self._reject_whole(
            claim,
            f"cannot read the file ({why})",
            f"The watcher cannot read this file ({why}). Nothing of it was recorded: make it "
            "readable by the user the watcher runs as, and drop it again.",
        )

    def _reject_too_large(self, claim: _Claim, size: int) -> FileReport | None:
        """Refused from its size alone: never read (LABDISPATCH_MAX_MESSAGE_BYTES)."""
        return self._reject_whole(
            claim,
            f"file of {size} bytes, over the {self.max_bytes}-byte limit",
            f"The file is {size} bytes long, more than the {self.max_bytes} bytes this "
            "service takes in one file (the same limit as one MLLP message or one HTTP "
            "request). Nothing of it was recorded: split it into several files (each "
            "message, or a few, per file) and drop them again.",
        )

    def _reject_whole(self, claim: _Claim, note: str, text: str) -> FileReport | None:
        """Refuse a file as a whole (nothing of it reached the ledger)."""
        reason = f"{claim.shown}: {note}\n\n{textwrap.fill(text, REASON_WIDTH)}\n"
        moved = self._move_out(claim, REJECTED, reason=reason)
        if moved is None:
            return None
        report = FileReport(claim.shown, OUTCOME_REJECTED, moved_to=moved, note=note)
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
            try:
                _write_file(folder, reason_file.name, reason.encode("utf-8"))
            except OSError as error:
                # The ACK file says it too; the file must still leave processing/.
                logger.error(
                    "%s: the reason file could not be written (%s)",
                    claim.shown,
                    error.strerror or type(error).__name__,
                )
        try:
            os.rename(claim.path, target)
        except FileNotFoundError:
            if reason is not None:
                reason_file.unlink(missing_ok=True)
            return None
        return f"{sub}/{display_name(target.name)}"

    def _put_back(self, claim: _Claim) -> str:
        """Return a claimed file to the drop folder; if a new file of that name is already
        there, leave it in processing/ (adopted at the next poll) rather than replace it.
        With markers, its marker is written again (it was removed when the file was
        claimed): without it, the file would never be taken again."""
        target = self.folder / claim.name
        if not os.path.lexists(target):
            with contextlib.suppress(FileNotFoundError):
                os.rename(claim.path, target)
                if self.ready == READY_MARKER and not os.path.lexists(self._marker(claim.name)):
                    with contextlib.suppress(OSError):
                        _write_file(self.folder, self._marker(claim.name).name, b"")
                return claim.shown
        return f"{PROCESSING}/{claim.shown}"

    def _write_acks(self, name: str, answers: Sequence[Answer]) -> None:
        """acks/<name>.ack: each message's ACK (CR segment ends), one per line, in order."""
        acks = [answer.ack for answer in answers if answer.ack is not None]
        if not acks:
            return  # every message asked for no accept ACK (MSH-15)
        folder = self.folder / ACKS
        try:
            target = _free_name(folder, name + ACK_SUFFIX, self.clock())
            _write_file(folder, target.name, b"\n".join(acks))
        except (OSError, DropFolderError) as error:
            # The messages are committed; the ACK file is a courtesy copy of what the ledger
            # says. Say so loudly, but do not undo or repeat the recording.
            why = error.strerror if isinstance(error, OSError) else None
            logger.error(
                "%s: recorded, but the ACK file could not be written (%s)",
                display_name(name),
                why or type(error).__name__,
            )


class _Busy(Exception):
    """Another process holds the file's lock."""


def _takeable(name: str) -> bool:
    """Dotfiles and partial names are files an exporter is still writing (write, then
    rename is the protocol we ask labs to follow)."""
    return not name.startswith(".") and not name.lower().endswith(PARTIAL_SUFFIXES)


def _is_marker(name: str) -> bool:
    return name.lower().endswith(MARKER_SUFFIX)


def display_name(name: str) -> str:
    """A file name as text may safely carry it (logs, reason files, the ledger, a terminal):
    bytes that are not UTF-8 as `\\xNN`, control characters (a newline would forge a log
    line) as `\\n`, `\\x1b`… Printable names are unchanged."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _debug() -> bool:
    """LABDISPATCH_DEBUG=1: tracebacks in the log, for a developer who asked for them."""
    return os.environ.get("LABDISPATCH_DEBUG") == "1"


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


def _read_all(fd: int, limit: int) -> bytes:
    """The file's bytes, at most `limit` + 1 of them (one more says it is over)."""
    chunks = []
    left = limit + 1
    while left > 0 and (chunk := os.read(fd, min(1 << 20, left))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _split_extension(name: str) -> tuple[str, str]:
    """("report", ".hl7") for "report.hl7"; no extension for a dotless name."""
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if stem else (name, "")


def _fit(name: str, room: int) -> str:
    """`name` if it leaves `room` bytes under NAME_MAX, else a shorter name that does and
    still says which file it is: its start (cut on a character boundary), `~`, 10 hex
    digits of its hash (distinct names stay distinct), and its extension."""
    encoded = os.fsencode(name)
    if len(encoded) + room <= NAME_MAX:
        return name
    stem, ext = _split_extension(name)
    if len(os.fsencode(ext)) > 16:
        stem, ext = name, ""
    tag = "~" + hashlib.sha256(encoded).hexdigest()[:10]
    budget = max(NAME_MAX - room - len(tag) - len(os.fsencode(ext)), 1)
    head, size = [], 0
    for character in stem:  # whole characters: a name is never cut inside one
        size += len(os.fsencode(character))
        if size > budget:
            break
        head.append(character)
    return "".join(head) + tag + ext


def _free_name(folder: Path, name: str, now: float, *, also: Sequence[str] = ()) -> Path:
    """`name`, or when taken `stem.<UTC timestamp>[-n].ext`: never an existing file's name
    (nor one whose companion `name + suffix` for each suffix in `also` exists). A name too
    long for the filesystem with its suffixes is shortened (`_fit`), never refused."""

    def free(candidate: str) -> bool:
        return not any(os.path.lexists(folder / (candidate + s)) for s in ("", *also))

    room = max((len(os.fsencode(s)) for s in also), default=0)
    first = _fit(name, room)
    if free(first):
        return folder / first
    stem, ext = _split_extension(_fit(name, room + _STAMP_ROOM))
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 10_000):
        candidate = f"{stem}.{stamp}{'' if n == 1 else f'-{n}'}{ext}"
        if free(candidate):
            return folder / candidate
    raise DropFolderError(f"no free name for {display_name(name)} in {folder}")


def _write_file(folder: Path, name: str, data: bytes) -> None:
    """Write under a temporary dotfile name, then rename: a lab's script polling the folder
    never reads half a file (the same rule we ask of them)."""
    prefix = "." + _fit(name, len(".XXXXXXXX.tmp") + 2) + "."
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
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
