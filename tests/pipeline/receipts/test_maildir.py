"""Reading reports from a return Maildir: at least once, done only when the caller says so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import LabdispatchError
from pipeline.receipts.reports import parse_report
from pipeline.receipts.sources import (
    IncomingReport,
    MaildirSource,
    ReceiptSourceUnavailable,
    ReportSource,
)

from .conftest import RECEIPT_FIXTURES


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    root = tmp_path / "receipts"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    return root


def put(maildir: Path, folder: str, name: str, data: bytes = b"Subject: x\n\nx\n") -> None:
    (maildir / folder / name).write_bytes(data)


def ids(reports: list[IncomingReport]) -> list[str]:
    return [report.source_id for report in reports]


def test_maildir_source_is_a_report_source(maildir: Path) -> None:
    source: ReportSource = MaildirSource(maildir)
    with source:
        assert list(source.pending()) == []


def test_reads_new_and_unseen_cur_but_not_seen_tmp_or_dotfiles(maildir: Path) -> None:
    put(maildir, "new", "1736838725.M1P10.mx")
    put(maildir, "cur", "1736838726.M2P10.mx:2,")
    put(maildir, "cur", "1736838727.M3P10.mx:2,F")  # flagged by a person, still unread
    put(maildir, "cur", "1736838728.M4P10.mx:2,RS")  # read: done
    put(maildir, "cur", "1736838729.M5P10.mx")  # no info at all: unread
    put(maildir, "tmp", "1736838730.M6P10.mx")  # still being delivered
    put(maildir, "new", ".1736838731.M7P10.mx")  # hidden: not a mail
    (maildir / "new" / "1736838732.M8P10.mx").mkdir()  # not a file
    assert ids(list(MaildirSource(maildir).pending())) == [
        "new/1736838725.M1P10.mx",
        "cur/1736838726.M2P10.mx:2,",
        "cur/1736838727.M3P10.mx:2,F",
        "cur/1736838729.M5P10.mx",
    ]


def test_reports_come_oldest_first_and_in_batches(maildir: Path) -> None:
    for n in (5, 1, 4, 2, 3):
        put(
            maildir, "new" if n % 2 else "cur", f"173683872{n}.M{n}P1.mx" + ("" if n % 2 else ":2,")
        )
    source = MaildirSource(maildir)
    first = list(source.pending(limit=2))
    assert ids(first) == ["new/1736838721.M1P1.mx", "cur/1736838722.M2P1.mx:2,"]
    for report in first:
        source.mark_done(report.source_id)
    assert ids(list(source.pending(limit=2))) == [
        "new/1736838723.M3P1.mx",
        "cur/1736838724.M4P1.mx:2,",
    ]
    with pytest.raises(ValueError):
        list(source.pending(limit=0))


def test_mark_done_moves_to_cur_with_the_seen_flag(maildir: Path) -> None:
    data = (RECEIPT_FIXTURES / "postfix-dsn-delivered.eml").read_bytes()
    put(maildir, "new", "1736838725.M1P10.mx", data)
    put(maildir, "cur", "1736838726.M2P10.mx:2,F")
    source = MaildirSource(maildir)
    reports = list(source.pending())
    assert reports[0].data == data
    assert parse_report(reports[0].data).outcome == "delivered"
    for report in reports:
        source.mark_done(report.source_id)
    assert sorted(os.listdir(maildir / "cur")) == [
        "1736838725.M1P10.mx:2,S",
        "1736838726.M2P10.mx:2,FS",
    ]
    assert os.listdir(maildir / "new") == []
    assert (maildir / "cur" / "1736838725.M1P10.mx:2,S").read_bytes() == data


def test_done_reports_are_not_handed_out_again(maildir: Path) -> None:
    put(maildir, "new", "1736838725.M1P10.mx")
    source = MaildirSource(maildir)
    (report,) = source.pending()
    source.mark_done(report.source_id)
    source.mark_done(report.source_id)  # twice: the second is a no-op
    assert list(source.pending()) == []
    assert list(MaildirSource(maildir).pending()) == []


def test_a_report_not_marked_done_is_read_again(maildir: Path) -> None:
    """A crash between reading and recording must not lose the report."""
    put(maildir, "new", "1736838725.M1P10.mx")
    assert len(list(MaildirSource(maildir).pending())) == 1
    assert ids(list(MaildirSource(maildir).pending())) == ["new/1736838725.M1P10.mx"]


def test_a_file_vanishing_between_listing_and_reading_is_skipped(maildir: Path) -> None:
    for n in (1, 2, 3):
        put(maildir, "new", f"173683872{n}.M{n}P1.mx")
    reading = MaildirSource(maildir).pending()
    first = next(reading)  # the folder is listed now
    (maildir / "new" / "1736838722.M2P1.mx").unlink()  # e.g. a mail client took it
    rest = list(reading)
    assert ids([first, *rest]) == ["new/1736838721.M1P1.mx", "new/1736838723.M3P1.mx"]


def test_a_file_moved_to_cur_by_a_mail_client_is_still_marked_done(maildir: Path) -> None:
    put(maildir, "new", "1736838725.M1P10.mx")
    source = MaildirSource(maildir)
    (report,) = source.pending()
    os.rename(maildir / "new" / "1736838725.M1P10.mx", maildir / "cur" / "1736838725.M1P10.mx:2,F")
    source.mark_done(report.source_id)
    assert os.listdir(maildir / "cur") == ["1736838725.M1P10.mx:2,FS"]


def test_marking_a_vanished_report_done_does_not_fail(
    maildir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    put(maildir, "new", "1736838725.M1P10.mx")
    source = MaildirSource(maildir)
    (report,) = source.pending()
    (maildir / "new" / "1736838725.M1P10.mx").unlink()
    source.mark_done(report.source_id)
    assert "vanished" in caplog.text


def test_an_unreadable_file_is_skipped_not_fatal(
    maildir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    put(maildir, "new", "1736838721.M1P1.mx")
    put(maildir, "new", "1736838722.M2P1.mx")
    read_bytes = Path.read_bytes

    def refuse_the_first(path: Path) -> bytes:  # chmod 0 would not stop root
        if path.name == "1736838721.M1P1.mx":
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse_the_first)
    assert ids(list(MaildirSource(maildir).pending())) == ["new/1736838722.M2P1.mx"]
    assert "new/1736838721.M1P1.mx" in caplog.text
    assert "cannot be read, skipped: Permission denied" in caplog.text


@pytest.mark.parametrize(
    "source_id",
    ["tmp/1736838725.M1P10.mx", "new/../../etc/passwd", "cur/", "1736838725.M1P10.mx", "new/.x"],
)
def test_mark_done_refuses_ids_it_did_not_hand_out(maildir: Path, source_id: str) -> None:
    with pytest.raises(ValueError):
        MaildirSource(maildir).mark_done(source_id)


def test_a_missing_maildir_is_unavailable_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-maildir"
    with pytest.raises(ReceiptSourceUnavailable) as caught:
        list(MaildirSource(missing).pending())
    assert isinstance(caught.value, LabdispatchError)
    assert str(missing) in str(caught.value)
    assert "new/" in str(caught.value)


def test_incoming_report_repr_never_shows_the_mail() -> None:
    report = IncomingReport("new/1", b"Subject: DUPONT Helene\n\n")
    assert "DUPONT" not in repr(report)
    assert "new/1" in repr(report)
