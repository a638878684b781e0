from __future__ import annotations

import contextlib
import os
import resource
import signal
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.transports.base import Outcome, TransportConfigurationError
from pipeline.transports.mailbox import MailboxTransport, message_file_name
from tests.pipeline.transports.conftest import envelope


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "mailboxes"
    folder.mkdir()
    return folder


@pytest.fixture
def mailbox(root: Path) -> MailboxTransport:
    return MailboxTransport(root)


def files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_envelope_is_written_whole_into_new_and_nothing_stays_in_tmp(
    root: Path, mailbox: MailboxTransport
) -> None:
    sent = envelope(recipient="sophie.martin")

    result = mailbox.send(sent)

    name = message_file_name(sent.message_id)
    assert result.outcome is Outcome.ACCEPTED
    assert result.delivered is True
    assert result.evidence == f"sophie.martin/new/{name}"
    maildir = root / "sophie.martin"
    assert (maildir / "new" / name).read_bytes() == sent.data
    assert files(maildir / "tmp") == [] and files(maildir / "cur") == []
    for folder in (maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((maildir / "new" / name).stat().st_mode) == 0o600


def test_resending_the_same_envelope_writes_no_second_copy(
    root: Path, mailbox: MailboxTransport
) -> None:
    sent = envelope(recipient="sophie.martin")
    first = mailbox.send(sent)

    again = mailbox.send(sent)

    assert again.outcome is Outcome.ACCEPTED
    assert again.evidence == f"already in mailbox: {first.evidence}"
    assert files(root / "sophie.martin" / "new") == [message_file_name(sent.message_id)]


def test_an_envelope_the_client_has_already_seen_is_not_delivered_again(
    root: Path, mailbox: MailboxTransport
) -> None:
    sent = envelope(recipient="sophie.martin")
    mailbox.send(sent)
    maildir = root / "sophie.martin"
    name = message_file_name(sent.message_id)
    seen = f"{name}:2,S"
    os.rename(maildir / "new" / name, maildir / "cur" / seen)  # what a mail client does

    again = mailbox.send(sent)

    assert again.evidence == f"already in mailbox: sophie.martin/cur/{seen}"
    assert files(maildir / "new") == []
    assert files(maildir / "cur") == [seen]


def test_different_envelopes_are_different_files(root: Path, mailbox: MailboxTransport) -> None:
    for number in range(3):
        assert mailbox.send(envelope(number, recipient="cabinet/dr-leroy")).accepted

    assert len(files(root / "cabinet" / "dr-leroy" / "new")) == 3


def test_an_absolute_address_inside_the_root_is_accepted(
    root: Path, mailbox: MailboxTransport
) -> None:
    result = mailbox.send(envelope(recipient=str(root / "sophie.martin")))

    assert result.accepted
    assert result.evidence.startswith("sophie.martin/new/")


@pytest.mark.parametrize(
    "address",
    ["../escaped", "sophie/../../escaped", "/tmp/escaped", ".", "", "sophie\nmartin"],
)
def test_addresses_leading_outside_a_recipients_maildir_are_permanent(
    root: Path, mailbox: MailboxTransport, address: str
) -> None:
    result = mailbox.send(envelope(recipient=address))

    assert result.outcome is Outcome.PERMANENT
    assert result.evidence.startswith("mailbox address refused: ")
    assert files(root) == []
    assert not (root.parent / "escaped").exists()


def test_a_symbolic_link_out_of_the_root_is_refused(
    root: Path, mailbox: MailboxTransport, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sophie.martin").symlink_to(outside)

    result = mailbox.send(envelope(recipient="sophie.martin"))

    assert result.outcome is Outcome.PERMANENT
    assert "symbolic link" in result.evidence
    assert files(outside) == []


def test_destination_is_the_mailbox_root(root: Path, mailbox: MailboxTransport) -> None:
    assert mailbox.destination("sophie.martin") == f"maildir:{root}"
    assert mailbox.kind == "mailbox"


# --- the outbox -----------------------------------------------------------------------------


def test_fixed_folder_queues_every_envelope_in_one_maildir_as_not_delivered(root: Path) -> None:
    outbox = MailboxTransport(root, kind="mail", fixed_folder="outbox")
    recipients = ["sophie.martin@cabinet.example", "dr.leroy@clinique.example"]

    results = [outbox.send(envelope(n, recipient=r)) for n, r in enumerate(recipients)]

    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert [r.delivered for r in results] == [False, False]
    assert all(r.evidence.startswith("outbox/new/labdispatch.") for r in results)
    assert files(root) == ["outbox"]
    assert len(files(root / "outbox" / "new")) == 2
    assert outbox.kind == "mail"


def test_the_root_itself_can_be_the_outbox(tmp_path: Path) -> None:
    outbox_dir = tmp_path / "var" / "outbox"  # created on first use, as the embedded default

    result = MailboxTransport(outbox_dir, kind="mail", fixed_folder=".").send(envelope())

    assert result.accepted and not result.delivered
    assert result.evidence.startswith("new/labdispatch.")
    assert files(outbox_dir) == ["cur", "new", "tmp"]


def test_a_fixed_folder_outside_the_root_is_a_configuration_error(root: Path) -> None:
    with pytest.raises(TransportConfigurationError, match="outbox folder"):
        MailboxTransport(root, kind="mail", fixed_folder="../outbox")


# --- failures the disk brings ---------------------------------------------------------------


def test_a_file_where_the_maildir_needs_a_folder_is_transient(
    root: Path, mailbox: MailboxTransport
) -> None:
    """Permissions do not stop root (the tests' user); a regular file in the way does."""
    (root / "sophie.martin").mkdir()
    (root / "sophie.martin" / "tmp").write_bytes(b"")

    result = mailbox.send(envelope(recipient="sophie.martin"))

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence.startswith("ENOTDIR (Not a directory) while creating the Maildir")


@contextlib.contextmanager
def file_size_limit() -> Iterator[None]:
    """Files this process writes may not pass 1 KiB (RLIMIT_FSIZE binds root too): the
    kernel answers EFBIG as it would ENOSPC or EDQUOT on a full disk."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def test_a_write_that_fails_half_way_is_transient_and_leaves_nothing_behind(
    root: Path, mailbox: MailboxTransport
) -> None:
    (root / "sophie.martin").mkdir()  # the Maildir exists before the limit applies
    mailbox.send(envelope(0, recipient="sophie.martin"))
    big = replace(envelope(1, recipient="sophie.martin"), data=b"x" * 64 * 1024)

    with file_size_limit():
        result = mailbox.send(big)

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence == "EFBIG (File too large) while writing in sophie.martin"
    maildir = root / "sophie.martin"
    assert files(maildir / "tmp") == []
    assert files(maildir / "new") == [message_file_name(envelope(0).message_id)]
    assert mailbox.send(big).accepted  # once the disk has room again
