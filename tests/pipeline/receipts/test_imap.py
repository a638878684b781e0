"""Reading reports from an IMAP mailbox, against a real Dovecot (see conftest.py)."""

from __future__ import annotations

import imaplib
import socket
from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError, LabdispatchError
from pipeline.receipts.reports import parse_report
from pipeline.receipts.sources import ImapSource, ReceiptSourceUnavailable, ReportSource, TlsMode
from workers.cli import main

from .conftest import RECEIPT_FIXTURES, Dovecot

FIXTURES = [
    "thunderbird-mdn-displayed.eml",
    "postfix-dsn-failed-5.1.1.eml",
    "gateway-mdn-processed-crlf.eml",
]


def source(
    dovecot: Dovecot, mailbox: str, tls: TlsMode = "starttls", *, trust_our_ca: bool = True
) -> ImapSource:
    return ImapSource(
        dovecot.host,
        dovecot.imaps_port if tls == "implicit" else dovecot.imap_port,
        dovecot.username,
        dovecot.password,
        mailbox,
        tls=tls,
        ca_file=dovecot.ca_file if trust_our_ca else None,
        timeout=10.0,
    )


def seen_flags(dovecot: Dovecot, mailbox: str) -> dict[int, bool]:
    """UID → has \\Seen, asked of the server over a connection of its own."""
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        imap.login(dovecot.username, dovecot.password)
        imap.select(f'"{mailbox}"', readonly=True)
        _, data = imap.uid("FETCH", "1:*", "(FLAGS)")
        flags = {}
        for line in data:
            assert isinstance(line, bytes)
            uid = int(line.split(b"UID ")[1].split()[0].rstrip(b")"))
            flags[uid] = b"\\Seen" in line
        return flags
    finally:
        imap.logout()


@pytest.mark.parametrize("tls", ["starttls", "implicit", "none"])
def test_reads_unseen_reports_and_marks_them_seen(dovecot: Dovecot, tls: TlsMode) -> None:
    mailbox = dovecot.new_mailbox()
    for name in FIXTURES:
        dovecot.deliver(mailbox, (RECEIPT_FIXTURES / name).read_bytes())

    with source(dovecot, mailbox, tls) as imap:
        reports = list(imap.pending())
        assert len(reports) == 3
        for report, name in zip(reports, FIXTURES, strict=True):
            assert parse_report(report.data) == parse_report((RECEIPT_FIXTURES / name).read_bytes())
        assert seen_flags(dovecot, mailbox) == {1: False, 2: False, 3: False}, "PEEK keeps unseen"
        for report in reports:
            imap.mark_done(report.source_id)

    assert seen_flags(dovecot, mailbox) == {1: True, 2: True, 3: True}
    with source(dovecot, mailbox, tls) as imap:
        assert list(imap.pending()) == []


def test_source_ids_name_mailbox_uidvalidity_and_uid(dovecot: Dovecot) -> None:
    mailbox = dovecot.new_mailbox()
    dovecot.deliver(mailbox, b"Subject: x\n\nx\n")
    with source(dovecot, mailbox) as imap:
        (report,) = imap.pending()
    assert report.source_id.startswith(f"{mailbox};UIDVALIDITY=")
    assert report.source_id.endswith("/;UID=1")


def test_reports_not_marked_done_are_read_again(dovecot: Dovecot) -> None:
    """A crash between reading and recording must not lose the report."""
    mailbox = dovecot.new_mailbox()
    dovecot.deliver(mailbox, (RECEIPT_FIXTURES / FIXTURES[0]).read_bytes())
    with source(dovecot, mailbox) as imap:
        first = list(imap.pending())
    with source(dovecot, mailbox) as imap:
        again = list(imap.pending())
    assert [r.source_id for r in again] == [r.source_id for r in first]
    assert len(again) == 1


def test_reads_in_batches_oldest_first(dovecot: Dovecot) -> None:
    mailbox = dovecot.new_mailbox()
    for n in range(5):
        dovecot.deliver(mailbox, f"Subject: report {n}\n\nx\n".encode())
    with source(dovecot, mailbox) as imap:
        batch = list(imap.pending(limit=2))
        assert [r.source_id.rsplit("=", 1)[1] for r in batch] == ["1", "2"]
        for report in batch:
            imap.mark_done(report.source_id)
        assert [r.source_id.rsplit("=", 1)[1] for r in imap.pending(limit=10)] == ["3", "4", "5"]


def test_a_dropped_connection_is_unavailable_then_reconnects(dovecot: Dovecot) -> None:
    mailbox = dovecot.new_mailbox()
    for name in FIXTURES[:2]:
        dovecot.deliver(mailbox, (RECEIPT_FIXTURES / name).read_bytes())
    with source(dovecot, mailbox) as imap:
        reading = imap.pending()
        first = next(reading)
        imap.mark_done(first.source_id)
        dovecot.kick()
        with pytest.raises(ReceiptSourceUnavailable, match="fetching UID 2"):
            next(reading)
        # The next run connects afresh and finds what was not marked done.
        assert [r.source_id for r in imap.pending()] == [first.source_id[:-1] + "2"]


def test_default_mailbox_is_the_inbox(dovecot: Dovecot) -> None:
    dovecot.deliver("INBOX", (RECEIPT_FIXTURES / "postfix-dsn-delayed.eml").read_bytes())
    imap: ReportSource = ImapSource(
        dovecot.host,
        dovecot.imap_port,
        dovecot.username,
        dovecot.password,
        tls="starttls",
        ca_file=dovecot.ca_file,
    )
    with imap:
        (report,) = imap.pending()
        assert parse_report(report.data).outcome == "delayed"
        imap.mark_done(report.source_id)
    assert seen_flags(dovecot, "INBOX") == {1: True}


def test_mark_done_with_another_uidvalidity_leaves_the_mail_unseen(dovecot: Dovecot) -> None:
    mailbox = dovecot.new_mailbox()
    dovecot.deliver(mailbox, b"Subject: x\n\nx\n")
    with source(dovecot, mailbox) as imap:
        imap.mark_done(f"{mailbox};UIDVALIDITY=1/;UID=1")
        with pytest.raises(ValueError):
            imap.mark_done("new/1736838725.M1P10.mx")
    assert seen_flags(dovecot, mailbox) == {1: False}


def test_wrong_password_is_unavailable_without_the_password(dovecot: Dovecot) -> None:
    wrong = "not-the-password-" + dovecot.password[::-1]
    imap = ImapSource(
        dovecot.host,
        dovecot.imap_port,
        dovecot.username,
        wrong,
        "INBOX",
        tls="starttls",
        ca_file=dovecot.ca_file,
        timeout=10,
    )
    with pytest.raises(ReceiptSourceUnavailable) as caught, imap:
        pass
    message = str(caught.value)
    assert isinstance(caught.value, LabdispatchError)
    assert f"{dovecot.host}:{dovecot.imap_port}" in message
    assert "'INBOX'" in message and dovecot.username in message
    assert "logging in" in message and "AUTHENTICATIONFAILED" in message
    assert wrong not in message and dovecot.password not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert wrong not in repr(imap)


def test_missing_mailbox_is_unavailable_naming_it(dovecot: Dovecot) -> None:
    with (
        pytest.raises(ReceiptSourceUnavailable, match=r"'no-such-box'.*selecting the mailbox"),
        source(dovecot, "no-such-box"),
    ):
        pass


def test_untrusted_certificate_is_refused(dovecot: Dovecot) -> None:
    mailbox = dovecot.new_mailbox()
    for tls in ("implicit", "starttls"):
        untrusting = source(dovecot, mailbox, tls, trust_our_ca=False)  # system CAs only
        with pytest.raises(ReceiptSourceUnavailable, match="CERTIFICATE_VERIFY_FAILED"), untrusting:
            pass


def test_unreachable_server_is_unavailable(dovecot: Dovecot) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    imap = ImapSource("127.0.0.1", closed_port, "u", "secret-pw", tls="none", timeout=5)
    with pytest.raises(ReceiptSourceUnavailable, match=f"127.0.0.1:{closed_port}.*connecting"):
        list(imap.pending())


def test_bad_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="tls"):
        ImapSource("h", 1, "u", "p", tls="ssl")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="mailbox"):
        ImapSource("h", 1, "u", "p", "Reçus")


def test_receipts_collect_reads_the_imap_inbox_named_in_settings(
    dovecot: Dovecot,
    cli_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mailbox = dovecot.new_mailbox()
    for name in FIXTURES:
        dovecot.deliver(mailbox, (RECEIPT_FIXTURES / name).read_bytes())
    password = tmp_path / "imap-password"
    password.write_text(dovecot.password + "\n")
    for name, value in {
        "HOST": dovecot.host,
        "PORT": str(dovecot.imaps_port),
        "TLS": "implicit",
        "USERNAME": dovecot.username,
        "PASSWORD_FILE": str(password),
        "MAILBOX": mailbox,
        "CA_FILE": str(dovecot.ca_file),
    }.items():
        monkeypatch.setenv(f"LABDISPATCH_RECEIPTS_IMAP_{name}", value)

    assert main(["receipts", "collect"]) == 0
    # No delivery in this ledger matches them: recorded all the same, as unmatched.
    assert capsys.readouterr().out == (
        "1 dsn failed (unmatched)\n1 mdn displayed (unmatched)\n1 mdn processed (unmatched)\n"
    )
    assert set(seen_flags(dovecot, mailbox).values()) == {True}
    assert main(["receipts", "collect"]) == 0
    assert capsys.readouterr().out == "no new report\n"
