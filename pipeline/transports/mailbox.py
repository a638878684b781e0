"""Mailbox drop: each envelope written into the recipient's Maildir, which their client pulls.

Maildir (https://cr.yp.to/proto/maildir.html) is a folder with `tmp/`, `new/` and `cur/`.
A file is written and fsynced in `tmp/`, then hard-linked into `new/` and `new/` fsynced:
a reader scanning `new/` sees a whole file or nothing, and a file reported delivered
survives a power cut. The link (not a rename) refuses to replace an existing name, so two
workers racing on the same envelope leave one copy.

The file name is a hash of the envelope's Message-ID, so sending the same envelope again
finds it — in `new/`, or in `cur/` once the client has seen it (`<name>:2,<flags>`) — and
answers "already in mailbox" instead of writing a second copy. The name carries no time,
so clients that sort by file name show these files in arbitrary order; Maildir clients sort
by date, which is what they show.

The same class serves as the embedded outbox for mail when no SMTP relay is configured:
with `fixed_folder`, every envelope lands in that one Maildir whatever its address, and
the result says `delivered=False` — it is queued for pickup, not in the recipient's hands.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from pathlib import Path, PurePosixPath

from pipeline.closing import Closing
from pipeline.transports.base import (
    Envelope,
    Outcome,
    SendResult,
    TransportConfigurationError,
)

_DIRECTORY_MODE = 0o700  # a mailbox is its owner's alone
_FILE_MODE = 0o600


class _Refused(Exception):
    """The address names no Maildir we may write: permanent, whatever is retried."""


class MailboxTransport(Closing):
    """Writes envelopes into Maildirs under `root`.

    An address is a Maildir name relative to `root` (`sophie.martin`, `cabinet/dr-leroy`)
    or an absolute path inside `root`; `..` and anything resolving outside `root` (through
    symbolic links too) are refused as `PERMANENT`. A missing Maildir is created. `root`
    itself is created when the transport is built, never later: a root that disappears
    (unmounted volume) fails sends as `TRANSIENT` instead of filling an empty mount point.

    `fixed_folder`: a Maildir relative to `root` ("." for `root` itself) that receives
    every envelope; addresses are then ignored and results are `delivered=False`.
    """

    def __init__(
        self, root: Path, *, kind: str = "mailbox", fixed_folder: str | None = None
    ) -> None:
        self.kind = kind
        self.root = Path(os.path.abspath(root))
        try:
            self.root.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
        except OSError as error:
            raise TransportConfigurationError(
                f"mailbox root {self.root} cannot be created: {_errno_text(error)}"
            ) from error
        self._real_root = Path(os.path.realpath(self.root))
        self._fixed: Path | None = None
        if fixed_folder is not None:
            try:
                self._fixed = self._maildir(fixed_folder, allow_root=True)
            except _Refused as refusal:
                raise TransportConfigurationError(
                    f"outbox folder {fixed_folder!r}: {refusal}"
                ) from refusal

    def destination(self, address: str) -> str:
        return f"maildir:{self.root}"

    def send(self, envelope: Envelope) -> SendResult:
        delivered = self._fixed is None
        try:
            maildir = self._fixed or self._maildir(envelope.recipient, allow_root=False)
        except _Refused as refusal:
            return SendResult(Outcome.PERMANENT, f"mailbox address refused: {refusal}")
        name = message_file_name(envelope.message_id)
        step = "creating the Maildir"
        try:
            self._make_maildir(maildir)
            step = "looking for an earlier copy"
            earlier = _find(maildir, name)
            if earlier is not None:
                return SendResult(
                    Outcome.ACCEPTED, f"already in mailbox: {self._relative(earlier)}", delivered
                )
            step = "writing"
            written = _write_atomically(maildir, name, envelope.data)
        except OSError as error:
            return SendResult(
                Outcome.TRANSIENT,
                f"{_errno_text(error)} while {step} in {self._relative(maildir)}",
            )
        if written is None:  # another worker linked the same envelope first
            return SendResult(
                Outcome.ACCEPTED,
                f"already in mailbox: {self._relative(maildir / 'new' / name)}",
                delivered,
            )
        return SendResult(Outcome.ACCEPTED, self._relative(written), delivered)

    def close(self) -> None:
        """Nothing is held open between sends."""

    # --- where --------------------------------------------------------------------------

    def _maildir(self, address: str, *, allow_root: bool) -> Path:
        if not address.strip():
            raise _Refused("empty address")
        if any(ord(c) < 32 for c in address):
            raise _Refused("control character in the address")
        path = PurePosixPath(address)
        if ".." in path.parts:
            raise _Refused("'..' is not allowed in a mailbox address")
        if path.is_absolute():
            try:
                relative = Path(path).relative_to(self.root)
            except ValueError:
                raise _Refused("absolute path outside the mailbox root") from None
        else:
            relative = Path(path)
        maildir = self.root / relative
        if maildir == self.root and not allow_root:
            raise _Refused("the mailbox root itself is not a recipient's Maildir")
        real = Path(os.path.realpath(maildir))
        if real != self._real_root and not real.is_relative_to(self._real_root):
            raise _Refused("the address leads outside the mailbox root (symbolic link)")
        return maildir

    def _make_maildir(self, maildir: Path) -> None:
        """Creates the Maildir and any folder above it, below the root, never the root."""
        if (maildir / "new").is_dir() and (maildir / "cur").is_dir() and (maildir / "tmp").is_dir():
            return
        folder = self.root
        for part in maildir.relative_to(self.root).parts:
            folder = folder / part
            _make_directory(folder)
        for sub in ("tmp", "new", "cur"):
            _make_directory(maildir / sub)

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def message_file_name(message_id: str) -> str:
    """The Maildir file name of an envelope: stable across resends, unique per Message-ID
    (128 bits of SHA-256), and free of the characters Maildir reserves ('/' and ':')."""
    digest = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:32]
    return f"labdispatch.{digest}"


def _find(maildir: Path, name: str) -> Path | None:
    """An earlier copy of `name`: in new/, or in cur/ where the client may have appended
    ':2,<flags>' (and Dovecot ',S=<size>'). Scanning cur/ costs one directory read."""
    if os.path.lexists(maildir / "new" / name):
        return maildir / "new" / name
    with os.scandir(maildir / "cur") as entries:
        for entry in entries:
            if entry.name == name or entry.name.startswith((f"{name}:", f"{name},")):
                return maildir / "cur" / entry.name
    return None


def _write_atomically(maildir: Path, name: str, data: bytes) -> Path | None:
    """Writes `data` as new/<name>; None if new/<name> appeared meanwhile. Whatever fails,
    nothing is left in tmp/ and nothing partial is in new/."""
    temporary = maildir / "tmp" / f"{name}.{os.getpid()}.{secrets.token_hex(4)}"
    final = maildir / "new" / name
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(temporary, final)
        except FileExistsError:
            return None
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
                raise
            # A file system without hard links: rename instead (it would replace a file of
            # the same name, which can only be this same envelope).
            os.replace(temporary, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _fsync_directory(final.parent)
    return final


def _make_directory(path: Path) -> None:
    try:
        os.mkdir(path, _DIRECTORY_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
        return
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    """Makes a directory's new entries durable: without it a crash can lose a file whose
    own data was fsynced."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _errno_text(error: OSError) -> str:
    if error.errno is None:
        return str(error)
    return f"{errno.errorcode.get(error.errno, str(error.errno))} ({error.strerror})"
