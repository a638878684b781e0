"""Where received reports are read from: a return Maildir, or an IMAP mailbox.

Reading is at-least-once. A source hands out every report not yet marked done; the caller
records it in the ledger, commits, and only then calls `mark_done`. A crash in between
means the report is read again next run, and the ledger, which de-duplicates by the
report's own Message-ID, records it once. The other order (mark first, record later)
would lose a receipt on every crash, and a lost "failed" report is a result nobody knows
did not arrive.

Both sources hand reports out in bounded batches (`limit`), oldest first, so a mailbox
flooded with thousands of bounces is worked through a batch per run instead of loaded at
once. Neither source parses anything: bytes out, `reports.parse_report` decides.

Only `ReceiptSourceUnavailable` is raised for trouble with the mailbox itself (unreachable
server, refused login, missing Maildir); one unreadable mail is skipped with a warning
instead, so it can never block the reports behind it.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self, cast

from pipeline.closing import Closing
from pipeline.errors import ConfigurationError, LabdispatchError
from pipeline.settings import Settings, read_secret

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_IMAP_TIMEOUT",
    "ImapSource",
    "IncomingReport",
    "MaildirSource",
    "ReceiptSourceUnavailable",
    "ReportSource",
    "TlsMode",
]

logger = logging.getLogger(__name__)

#: Reports handed out per `pending` call unless the caller asks otherwise.
DEFAULT_BATCH = 100
#: Seconds an IMAP connect, login or command may take before the source gives up.
DEFAULT_IMAP_TIMEOUT = 30.0

TlsMode = Literal["implicit", "starttls", "none"]
_TLS_MODES = ("implicit", "starttls", "none")


class ReceiptSourceUnavailable(LabdispatchError):
    """The return mailbox cannot be read now (unreachable, login refused, missing folder).

    The message names the mailbox (host, port, mailbox, user, or the Maildir path) and the
    reason, never the password. Nothing was lost: unread reports stay where they are."""


@dataclass(frozen=True, slots=True)
class IncomingReport:
    """One received mail, as bytes, with the id to pass back to `mark_done`."""

    #: Where the mail was read: "new/<file>" or "cur/<file>" in a Maildir (the file is in
    #: cur/ with ":2,S" once done), "<mailbox>;UIDVALIDITY=<n>/;UID=<n>" on IMAP (the RFC
    #: 5092 form). Worth keeping in the ledger: it tells an operator where the original is.
    source_id: str
    #: The whole mail as received; CRLF line ends from IMAP, as stored from a Maildir.
    data: bytes

    def __repr__(self) -> str:  # the bytes may be a returned result: never in logs
        return f"IncomingReport(source_id={self.source_id!r}, {len(self.data)} bytes)"


class ReportSource(Protocol):
    """A mailbox of received reports, read at least once (see the module docstring)."""

    def pending(self, limit: int = DEFAULT_BATCH) -> Iterator[IncomingReport]:
        """Up to `limit` reports not yet marked done, oldest first."""
        ...

    def mark_done(self, source_id: str) -> None:
        """Never hand this report out again; call it after the ledger committed it."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


# --- Maildir ----------------------------------------------------------------------------------


class MaildirSource(Closing):
    """Reports delivered by the mail server into a Maildir (new/, cur/, tmp/).

    Pending: every file in new/, and every file in cur/ without the Seen flag (a mail
    client may have moved a report to cur/ without reading it; other flags such as
    Flagged do not count as done). tmp/ holds mails still being written and is never
    read. Done: the file is renamed into cur/ with the S flag added (":2,S"), one atomic
    rename on the same filesystem, which is also what a mail client would show as read.
    The rename is not fsync'ed: losing it in a power cut only means reading the report
    once more.

    Every `pending` call lists new/ and cur/, so keep cur/ small: move old read reports
    elsewhere (an archive folder) from time to time.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"MaildirSource({str(self.path)!r})"

    def pending(self, limit: int = DEFAULT_BATCH) -> Iterator[IncomingReport]:
        _check_limit(limit)
        for source_id in self._unseen()[:limit]:
            try:
                data = (self.path / source_id).read_bytes()
            except FileNotFoundError:
                # Moved between listing and reading (a mail client, another reader): if it
                # is still unread it will be listed again, from cur/, next time.
                continue
            except OSError as error:
                logger.warning(
                    "receipt %s in %s cannot be read, skipped: %s",
                    source_id,
                    self.path,
                    error.strerror or type(error).__name__,
                )
                continue
            yield IncomingReport(source_id=source_id, data=data)

    def mark_done(self, source_id: str) -> None:
        folder, name = self._split_id(source_id)
        unique, flags = _maildir_name(name)
        if folder == "cur" and "S" in flags:
            return
        try:
            os.rename(self.path / folder / name, self._done_path(unique, flags))
            return
        except FileNotFoundError:
            pass
        # Moved since it was listed, most likely into cur/ by a mail client: flag it there.
        for other in self._names("cur"):
            other_unique, other_flags = _maildir_name(other)
            if other_unique != unique:
                continue
            if "S" in other_flags:
                return
            try:
                os.rename(self.path / "cur" / other, self._done_path(unique, other_flags))
                return
            except FileNotFoundError:
                break
        logger.warning("receipt %s vanished from %s before it was marked done", source_id, self)

    def close(self) -> None:
        """Nothing is held open; here so both sources are used the same way."""

    def _done_path(self, unique: str, flags: str) -> Path:
        return self.path / "cur" / f"{unique}:2,{''.join(sorted(set(flags) | {'S'}))}"

    def _names(self, folder: str) -> list[str]:
        try:
            with os.scandir(self.path / folder) as entries:
                return [
                    entry.name
                    for entry in entries
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)
                ]
        except FileNotFoundError:
            raise ReceiptSourceUnavailable(
                f"the receipts Maildir {self.path} has no {folder}/ folder: is the path "
                "right, and has the mail server delivered to it yet?"
            ) from None
        except OSError as error:
            raise ReceiptSourceUnavailable(
                f"the receipts Maildir {self.path} cannot be listed: "
                f"{error.strerror or type(error).__name__}"
            ) from None

    def _unseen(self) -> list[str]:
        """Pending source ids, oldest first: Maildir names start with the delivery time."""
        found = [(_maildir_name(name)[0], f"new/{name}") for name in self._names("new")]
        for name in self._names("cur"):
            unique, flags = _maildir_name(name)
            if "S" not in flags:
                found.append((unique, f"cur/{name}"))
        found.sort()
        return [source_id for _, source_id in found]

    @staticmethod
    def _split_id(source_id: str) -> tuple[str, str]:
        folder, _, name = source_id.partition("/")
        if folder not in ("new", "cur") or not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a report id from a MaildirSource: {source_id!r}")
        return folder, name


def _maildir_name(name: str) -> tuple[str, str]:
    """(unique part, flags) of a Maildir file name "unique:2,FLAGS"."""
    unique, _, info = name.partition(":")
    return unique, info[2:] if info.startswith("2,") else ""


# --- IMAP -------------------------------------------------------------------------------------

#: imaplib's response data: lines, and (line, literal) pairs where the server sent a literal.
_ResponseItem = bytes | tuple[bytes, bytes]

_SOURCE_ID = re.compile(r"(?P<mailbox>.*);UIDVALIDITY=(?P<validity>\d+)/;UID=(?P<uid>\d+)")


class ImapSource(Closing):
    """Reports in an IMAP mailbox, read without marking them and flagged \\Seen when done.

    `BODY.PEEK[]` reads a mail without setting \\Seen, so a report only counts as done
    once `mark_done` stores the flag by UID. Ids carry the mailbox's UIDVALIDITY: if the
    mailbox was recreated since the id was handed out, the UID may name another mail, so
    the flag is not stored (the report is read again and de-duplicated by the ledger).
    Reports are never deleted: the mailbox stays the archive of what came back.

    `tls`: "implicit" (IMAPS, usually port 993), "starttls" (port 143, upgraded before
    login), or "none" (plain text, for a server on the same host only). The server's
    certificate is checked against the system's CAs, or against `ca_file` when given.

    Use it as a context manager: entering connects, logs in and selects the mailbox, so
    a wrong password or host fails there with `ReceiptSourceUnavailable`; leaving logs out.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        mailbox: str = "INBOX",
        *,
        tls: TlsMode = "implicit",
        ca_file: Path | str | None = None,
        timeout: float = DEFAULT_IMAP_TIMEOUT,
    ) -> None:
        if tls not in _TLS_MODES:
            raise ConfigurationError(
                f"IMAP receipts tls must be one of {', '.join(_TLS_MODES)}, not {tls!r}"
            )
        if not mailbox.isascii() or any(ord(char) < 32 for char in mailbox):
            raise ConfigurationError(
                f"IMAP receipts mailbox {mailbox!r}: use a plain ASCII mailbox name"
            )
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.mailbox = mailbox
        self.tls: TlsMode = tls
        self.ca_file = Path(ca_file) if ca_file is not None else None
        self.timeout = timeout
        self._imap: imaplib.IMAP4 | None = None
        self._uidvalidity: str | None = None

    def __repr__(self) -> str:
        return (
            f"ImapSource({self.username}@{self.host}:{self.port}, mailbox={self.mailbox!r}, "
            f"tls={self.tls!r})"
        )

    # -- the ReportSource promise

    def pending(self, limit: int = DEFAULT_BATCH) -> Iterator[IncomingReport]:
        _check_limit(limit)
        imap = self._connected()
        data = self._command(imap, "searching for unseen mail", "SEARCH", "UNSEEN")
        uids = sorted({int(word) for word in _words(data).split() if word.isdigit()})
        for uid in uids[:limit]:
            response = self._command(
                imap, f"fetching UID {uid}", "FETCH", str(uid), "(BODY.PEEK[])"
            )
            body = _fetched_body(response, uid)
            if body is None:  # expunged meanwhile: nothing left to report on
                continue
            yield IncomingReport(
                source_id=f"{self.mailbox};UIDVALIDITY={self._uidvalidity}/;UID={uid}",
                data=body,
            )

    def mark_done(self, source_id: str) -> None:
        match = _SOURCE_ID.fullmatch(source_id)
        if match is None:
            raise ValueError(f"not a report id from an ImapSource: {source_id!r}")
        imap = self._connected()
        if match["mailbox"] != self.mailbox or match["validity"] != self._uidvalidity:
            logger.warning(
                "receipt %s is from another mailbox or an older UIDVALIDITY (now %s) on %s; "
                "not flagged, it will be read again",
                source_id,
                self._uidvalidity,
                self,
            )
            return
        self._command(
            imap,
            f"flagging UID {match['uid']} seen",
            "STORE",
            match["uid"],
            "+FLAGS.SILENT",
            r"(\Seen)",
        )

    def close(self) -> None:
        """Log out. No CLOSE first: it would expunge mail another client marked deleted."""
        imap, self._imap = self._imap, None
        if imap is not None:
            with contextlib.suppress(OSError, imaplib.IMAP4.error, EOFError):
                imap.logout()  # shuts the socket down even when the server went first

    def __enter__(self) -> Self:
        self._connected()
        return self

    # -- connection

    def _connected(self) -> imaplib.IMAP4:
        if self._imap is not None:
            return self._imap
        imap: imaplib.IMAP4 | None = None
        step = "connecting"
        try:
            context = None
            if self.tls != "none":
                step = "loading the CA file" if self.ca_file else "setting up TLS"
                cafile = str(self.ca_file) if self.ca_file is not None else None
                context = ssl.create_default_context(cafile=cafile)
            step = "connecting"
            if self.tls == "implicit":
                imap = imaplib.IMAP4_SSL(
                    self.host, self.port, ssl_context=context, timeout=self.timeout
                )
            else:
                imap = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
                if self.tls == "starttls":
                    step = "starting TLS"
                    imap.starttls(ssl_context=context)
            step = "logging in"
            imap.login(self.username, self._password)
            step = "selecting the mailbox"
            status, data = imap.select(_quoted(self.mailbox))
            if status != "OK":
                raise imaplib.IMAP4.error(_words(data))
            _, validity = imap.response("UIDVALIDITY")
            self._uidvalidity = _words(validity) or "0"
        except (OSError, imaplib.IMAP4.error, EOFError, UnicodeError) as error:
            if imap is not None:
                _shutdown(imap)
            raise self._unavailable(step, error) from None
        self._imap = imap
        return imap

    def _command(self, imap: imaplib.IMAP4, step: str, *args: str) -> list[_ResponseItem]:
        try:
            status, data = imap.uid(*args)
        except (OSError, imaplib.IMAP4.error, EOFError) as error:
            self._drop()
            raise self._unavailable(step, error) from None
        if status != "OK":
            raise self._unavailable(step, imaplib.IMAP4.error(_words(data)))
        return data  # with (head, literal) tuples among the lines, see `_fetched_body`

    def _drop(self) -> None:
        """Forget a broken connection so the next call connects afresh."""
        imap, self._imap = self._imap, None
        if imap is not None:
            _shutdown(imap)

    def _unavailable(self, step: str, error: BaseException) -> ReceiptSourceUnavailable:
        reason = str(error) or type(error).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return ReceiptSourceUnavailable(
            f"IMAP receipts mailbox {self.mailbox!r} of {self.username!r} at "
            f"{self.host}:{self.port} ({self.tls} TLS) is unavailable while {step}: {reason}"
        )


def _shutdown(imap: imaplib.IMAP4) -> None:
    with contextlib.suppress(OSError):
        imap.shutdown()


def _quoted(mailbox: str) -> str:
    """An IMAP quoted string: imaplib sends arguments as they are."""
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _words(data: object) -> str:
    """Server response data as one line of text, for messages."""
    if isinstance(data, (list, tuple)):
        return " ".join(_words(item) for item in data if item is not None)
    if isinstance(data, bytes):
        return data.decode("ascii", "replace")
    return str(data)


def _fetched_body(response: list[_ResponseItem], uid: int) -> bytes | None:
    """The BODY[] literal of `uid` in a UID FETCH response; unsolicited FETCH responses
    about other mails (flag changes) may come along and are ignored."""
    wanted = re.compile(rb"\bUID %d\b" % uid)
    for item in response:
        if isinstance(item, tuple) and len(item) == 2:
            head, body = item
            if isinstance(head, bytes) and b"BODY[]" in head and wanted.search(head):
                return bytes(body)
    return None


def report_source(settings: Settings, maildir: Path | None = None) -> ReportSource:
    """Where reports come back: the return IMAP inbox when `LABDISPATCH_RECEIPTS_IMAP_HOST`
    is set, else the return Maildir (`LABDISPATCH_RECEIPTS_MAILDIR`, default var/receipts),
    or `maildir` when given."""
    receipts = settings.receipts
    if maildir is None and receipts.imap_host:
        password = read_secret(receipts.imap_password_file)
        return ImapSource(
            receipts.imap_host,
            receipts.imap_port,
            receipts.imap_username,
            password.decode() if password is not None else "",
            mailbox=receipts.imap_mailbox,
            tls=cast(TlsMode, receipts.imap_tls),
            ca_file=receipts.imap_ca_file,
        )
    return MaildirSource(maildir or settings.receipts_maildir_path)
