"""Reading DSNs and MDNs: the fixtures real mail software sends, and anything else."""

from __future__ import annotations

import base64
import dataclasses
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.receipts import reports
from pipeline.receipts.reports import (
    MAX_ENVELOPE_ID_LENGTH,
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    RecipientStatus,
    Report,
    parse_report,
)

from .conftest import RECEIPT_FIXTURES

FIXTURE_FILES = sorted(RECEIPT_FIXTURES.glob("*.eml"))


def fixture(name: str) -> bytes:
    return (RECEIPT_FIXTURES / name).read_bytes()


EXPECTED: dict[str, Report] = {
    "postfix-dsn-delivered.eml": Report(
        kind="dsn",
        original_message_id="<3f2a9c4e1b7d4a6f8e0c2b5d7a9f1e3c@labdispatch.localhost>",
        original_envelope_id="9c4e1f0a2b7d4e6f8a1b3c5d7e9f0a12",
        recipients=(
            RecipientStatus(
                final_recipient="claire.martin@cabinet-martin.example",
                original_recipient="claire.martin@cabinet-martin.example",
                action="delivered",
                status="2.0.0",
                diagnostic_code=(
                    "X-Postfix; delivery via dovecot service: delivered via dovecot service"
                ),
            ),
        ),
        subject="Successful Mail Delivery Report",
        report_message_id="<20250114071205.4C2D31A0B3F@mx.cabinet-martin.example>",
    ),
    "postfix-dsn-failed-5.1.1.eml": Report(
        kind="dsn",
        original_message_id="<3f2a71d08c5e4b2a9f6e1d3c5b7a9e02@labdispatch.localhost>",
        original_envelope_id="1b2c3d4e5f60718293a4b5c6d7e8f901",
        recipients=(
            RecipientStatus(
                final_recipient="p.leroy@cabinet-leroy.example",
                original_recipient="p.leroy@cabinet-leroy.example",
                action="failed",
                status="5.1.1",
                diagnostic_code=(
                    "smtp; 550 5.1.1 <p.leroy@cabinet-leroy.example>: Recipient address "
                    "rejected: User unknown in virtual mailbox table"
                ),
            ),
        ),
        subject="Undelivered Mail Returned to Sender",
        report_message_id="<20250114071437.7E31B1A0052@relay.labdispatch.localhost>",
    ),
    "postfix-dsn-delayed.eml": Report(
        kind="dsn",
        original_message_id="<3f2ab5e6c7d84f9aa0b1c2d3e4f50617@labdispatch.localhost>",
        original_envelope_id="2c3d4e5f60718293a4b5c6d7e8f9012a",
        recipients=(
            RecipientStatus(
                final_recipient="secretariat@clinique-des-lilas.example",
                original_recipient="secretariat@clinique-des-lilas.example",
                action="delayed",
                status="4.4.1",
                diagnostic_code=(
                    "X-Postfix; connect to mx.clinique-des-lilas.example[203.0.113.40]:25: "
                    "Connection timed out"
                ),
            ),
        ),
        subject="Delayed Mail (still being retried)",
        report_message_id="<20250114111502.0D5F61A0093@relay.labdispatch.localhost>",
    ),
    "exim-dsn-failed.eml": Report(
        kind="dsn",
        original_message_id="<3f2ac7d8e9fa4b0c1d2e3f405162738a@labdispatch.localhost>",
        original_envelope_id="3d4e5f60718293a4b5c6d7e8f9012a3b",
        recipients=(
            RecipientStatus(
                final_recipient="luc.bernard@hopital-nord.example",
                original_recipient=None,
                action="failed",
                status="5.0.0",
                diagnostic_code="smtp; 552 5.2.2 Mailbox full",
            ),
        ),
        subject="Mail delivery failed: returning message to sender",
        report_message_id="<E1tXbQe-000Kp9-0q@mail.hopital-nord.example>",
    ),
    "postfix-global-dsn-failed-utf8.eml": Report(
        kind="dsn",
        original_message_id="<3f2af2031b4c4d5e6f708192a3b4c5d6@labdispatch.localhost>",
        original_envelope_id="4e5f60718293a4b5c6d7e8f9012a3b4c",
        recipients=(
            RecipientStatus(
                final_recipient="rené.faure@cabinet-médical-dupré.example",
                original_recipient="rené.faure@cabinet-médical-dupré.example",
                action="failed",
                status="5.1.1",
                diagnostic_code=(
                    "smtp; 550 5.1.1 <rené.faure@cabinet-médical-dupré.example>: Recipient "
                    "address rejected: User unknown in local recipient table"
                ),
            ),
        ),
        subject="Undelivered Mail Returned to Sender",
        report_message_id="<20250114082320.3D41A1A0C52@relay.labdispatch.localhost>",
    ),
    "thunderbird-mdn-displayed.eml": Report(
        kind="mdn",
        original_message_id="<3f2a9c4e1b7d4a6f8e0c2b5d7a9f1e3c@labdispatch.localhost>",
        disposition="displayed",
        disposition_mode="manual-action/MDN-sent-manually",
        final_recipient="claire.martin@cabinet-martin.example",
        subject="Return Receipt (displayed) - Résultat de laboratoire LBC-2026-000101",
        report_message_id="<7d1c4f0e-2b9a-4c8e-9f3d-5a6b7c8d9e0f@cabinet-martin.example>",
    ),
    "gateway-mdn-processed-crlf.eml": Report(
        kind="mdn",
        original_message_id="<3f2ad0e1f2034a5b6c7d8e9fa0b1c2d3@labdispatch.localhost>",
        disposition="processed",
        disposition_mode="automatic-action/MDN-sent-automatically",
        final_recipient="dpi-import@hopital-nord.example",
        subject="Disposition notification",
        report_message_id="<mdn.20250114081508.7731@passerelle.hopital-nord.example>",
    ),
    "gateway-mdn-failed-error.eml": Report(
        kind="mdn",
        original_message_id="<3f2ae1f2031b4c5d6e7f8091a2b3c4d5@labdispatch.localhost>",
        disposition="failed",
        disposition_mode="automatic-action/MDN-sent-automatically",
        final_recipient="dpi-import@hopital-nord.example",
        diagnostic=(
            "S/MIME decryption failed: no private key matches any recipient of the message "
            "(issuer CN=AC IGC-SANTE ELEMENTAIRE ORGANISATIONS, serial 4F1A2B)"
        ),
        subject="Disposition notification (failed)",
        report_message_id="<mdn.20250114081741.7736@passerelle.hopital-nord.example>",
    ),
    "exchange-mdn-no-original-message-id.eml": Report(
        kind="mdn",
        original_message_id="<3f2a8e7d6c5b4a39281706f5e4d3c2b1@labdispatch.localhost>",
        disposition="displayed",
        disposition_mode="automatic-action/MDN-sent-automatically",
        final_recipient="paul.leroy@hopital-sud.example",
        subject="Lu : Résultat de laboratoire LBC-2026-000105",
        report_message_id="<c8a1d2b3e4f5464798aa0b1c2d3e4f50@EXCH01.hopital-sud.example>",
    ),
    "exchange-out-of-office.eml": Report(
        kind="unrecognised",
        subject="Réponse automatique : Résultat de laboratoire LBC-2026-000108",
        report_message_id="<0a1b2c3d4e5f40718293a4b5c6d7e8f9@EXCH01.hopital-nord.example>",
        reason="not a multipart/report: an automatic reply or notice (out of office or similar)",
    ),
    "qmail-bounce-not-mime.eml": Report(
        kind="unrecognised",
        subject="failure notice",
        reason=(
            "not MIME at all: a bounce in a non-standard format, which names no delivery we "
            "can match; read it by hand"
        ),
    ),
    "garbage.eml": Report(
        kind="unrecognised",
        reason="not a mail message at all: it does not start with header fields",
    ),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == [path.name for path in FIXTURE_FILES]
    readme = (RECEIPT_FIXTURES / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in EXPECTED), "each fixture is described"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_reads_as_the_sending_software_meant_it(name: str) -> None:
    assert parse_report(fixture(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_crlf_and_lf_line_ends_read_the_same(name: str) -> None:
    lf = fixture(name).replace(b"\r\n", b"\n")
    assert parse_report(lf) == parse_report(lf.replace(b"\n", b"\r\n")) == EXPECTED[name]


def test_outcome_is_the_disposition_or_the_dsn_action() -> None:
    outcomes = {name: parse_report(fixture(name)).outcome for name in EXPECTED}
    assert outcomes == {
        "exchange-mdn-no-original-message-id.eml": "displayed",
        "exchange-out-of-office.eml": None,
        "exim-dsn-failed.eml": "failed",
        "garbage.eml": None,
        "gateway-mdn-failed-error.eml": "failed",
        "gateway-mdn-processed-crlf.eml": "processed",
        "postfix-dsn-delayed.eml": "delayed",
        "postfix-dsn-delivered.eml": "delivered",
        "postfix-dsn-failed-5.1.1.eml": "failed",
        "postfix-global-dsn-failed-utf8.eml": "failed",
        "qmail-bounce-not-mime.eml": None,
        "thunderbird-mdn-displayed.eml": "displayed",
    }


# --- hand-made reports, one behaviour each ------------------------------------------------

BOUNDARY = "b-7f3a"
OURS = "<3f2a00112233445566778899aabbccdd@labdispatch.localhost>"
DISPLAYED = "Disposition: manual-action/MDN-sent-manually; displayed"


def mail(
    *parts: tuple[str, str],
    report_type: str | None = "disposition-notification",
    headers: str = "",
    content_type: str | None = None,
) -> bytes:
    """A multipart/report with the given (part header, part body) pairs."""
    if content_type is None:
        content_type = "multipart/report"
        if report_type is not None:
            content_type += f"; report-type={report_type}"
        content_type += f'; boundary="{BOUNDARY}"'
    text = (
        f"{headers}"  # first, so that they win over the defaults below
        "From: someone@example.org\n"
        "To: receipts@labdispatch.localhost\n"
        "Subject: report\n"
        "Message-ID: <report-1@example.org>\n"
        "MIME-Version: 1.0\n"
        f"Content-Type: {content_type}\n\n"
        "Preamble.\n"
    )
    for head, body in parts:
        text += f"--{BOUNDARY}\n{head}\n\n{body}\n"
    text += f"--{BOUNDARY}--\n"
    return text.encode("utf-8")


def mdn_part(fields: str) -> tuple[str, str]:
    return "Content-Type: message/disposition-notification", fields


def headers_part(message_id: str, kind: str = "text/rfc822-headers") -> tuple[str, str]:
    return f"Content-Type: {kind}", f"From: results@labdispatch.localhost\nMessage-ID: {message_id}"


def dsn_part(fields: str, kind: str = "message/delivery-status") -> tuple[str, str]:
    return f"Content-Type: {kind}", fields


FAILED_RECIPIENT = (
    "Final-Recipient: rfc822; dr@example.org\nAction: failed\nStatus: 5.1.1\n"
    "Diagnostic-Code: smtp; 550 5.1.1 unknown"
)


def test_original_message_id_field_wins_over_returned_headers() -> None:
    report = parse_report(
        mail(
            mdn_part(f"Original-Message-ID: {OURS}\n{DISPLAYED}"),
            headers_part("<other@labdispatch.localhost>"),
        )
    )
    assert report.original_message_id == OURS


@pytest.mark.parametrize(
    "kind",
    ["text/rfc822-headers", "message/rfc822", "message/rfc822-headers", "message/global-headers"],
)
def test_returned_headers_give_the_original_message_id(kind: str) -> None:
    report = parse_report(
        mail(
            mdn_part("Disposition: automatic-action/MDN-sent-automatically; processed"),
            headers_part(OURS, kind),
        )
    )
    assert (report.kind, report.original_message_id) == ("mdn", OURS)


def test_mdn_falls_back_to_in_reply_to_then_to_the_last_reference() -> None:
    fields = "Disposition: manual-action/MDN-sent-manually; displayed"
    in_reply_to = parse_report(
        mail(mdn_part(fields), headers=f"In-Reply-To: {OURS}\nReferences: <a@x> <b@x>\n")
    )
    references = parse_report(mail(mdn_part(fields), headers=f"References: <a@x>\n {OURS}\n"))
    assert in_reply_to.original_message_id == OURS
    assert references.original_message_id == OURS


def test_dsn_never_guesses_the_original_from_in_reply_to() -> None:
    report = parse_report(
        mail(
            dsn_part(FAILED_RECIPIENT),
            report_type="delivery-status",
            headers=f"In-Reply-To: {OURS}\n",
        )
    )
    assert report.kind == "dsn"
    assert report.original_message_id is None


@pytest.mark.parametrize(
    "disposition, extra",
    [
        ("automatic-action/MDN-sent-automatically; processed/error", ""),
        ("automatic-action/MDN-sent-automatically; processed/failed", ""),  # RFC 3798
        ("automatic-action/MDN-sent-automatically; failed", ""),  # RFC 2298
        ("automatic-action/MDN-sent-automatically; processed", "\nFailure: no key"),
        ("automatic-action/MDN-sent-automatically; displayed", "\nError: cannot decrypt"),
        ("Automatic-Action/MDN-Sent-Automatically; Processed/Error, Warning", ""),
    ],
)
def test_mdn_that_reports_an_error_is_failed(disposition: str, extra: str) -> None:
    report = parse_report(
        mail(mdn_part(f"Original-Message-ID: {OURS}\nDisposition: {disposition}{extra}"))
    )
    assert (report.kind, report.disposition, report.outcome) == ("mdn", "failed", "failed")


def test_disposition_type_and_mode_are_read_in_any_case_and_with_comments() -> None:
    report = parse_report(
        mail(
            mdn_part(
                f"original-message-id: {OURS}\n"
                "DISPOSITION: (sent by the gateway) Manual-Action/mdn-sent-MANUALLY ;\n"
                "\tDeleted\nWarning: mailbox almost full"
            )
        )
    )
    assert report.disposition == "deleted"
    assert report.disposition_mode == "manual-action/MDN-sent-manually"
    assert report.diagnostic == "mailbox almost full"


def test_folded_original_message_id_is_unfolded() -> None:
    report = parse_report(mail(mdn_part(f"Original-Message-ID:\n {OURS}\n{DISPLAYED}")))
    assert report.original_message_id == OURS


def test_message_id_without_angle_brackets_is_normalised() -> None:
    bare = OURS.strip("<>")
    report = parse_report(mail(mdn_part(f"Original-Message-ID: {bare}\n{DISPLAYED}")))
    assert report.original_message_id == OURS


def test_content_type_parameters_in_odd_case_and_without_quotes() -> None:
    data = mail(
        dsn_part(FAILED_RECIPIENT),
        content_type=f"MULTIPART/Report; BOUNDARY={BOUNDARY}; REPORT-TYPE=Delivery-Status",
    )
    assert parse_report(data).outcome == "failed"


def test_report_type_that_names_the_wrong_kind_is_read_by_the_part_it_carries() -> None:
    report = parse_report(mail(dsn_part(FAILED_RECIPIENT), report_type="disposition-notification"))
    assert (report.kind, report.outcome) == ("dsn", "failed")


@pytest.mark.parametrize(
    "report_type, reason",
    [
        (
            "disposition-notification",
            "multipart/report without a message/disposition-notification part",
        ),
        ("delivery-status", "multipart/report without a message/delivery-status part"),
        (
            "feedback-report",
            "multipart/report of report-type 'feedback-report', which is neither a delivery "
            "nor a read report",
        ),
        (
            None,
            "multipart/report without a report-type and without a delivery or read status part",
        ),
    ],
)
def test_report_without_its_status_part_is_unrecognised_with_the_reason(
    report_type: str | None, reason: str
) -> None:
    report = parse_report(
        mail(("Content-Type: text/plain", "Your message was read."), report_type=report_type)
    )
    assert (report.kind, report.reason) == ("unrecognised", reason)
    assert report.report_message_id == "<report-1@example.org>"


def test_status_part_without_the_fields_that_matter_is_unrecognised() -> None:
    no_recipient = parse_report(
        mail(
            dsn_part("Reporting-MTA: dns; mx.example.org\nOriginal-Envelope-Id: 0a1b2c"),
            headers_part(OURS),
            report_type="delivery-status",
        )
    )
    no_disposition = parse_report(mail(mdn_part(f"Original-Message-ID: {OURS}")))
    assert no_recipient.kind == no_disposition.kind == "unrecognised"
    assert no_recipient.reason == "message/delivery-status part without any per-recipient fields"
    # What was read is kept, so an operator can see which delivery it was about.
    assert (no_recipient.original_envelope_id, no_recipient.original_message_id) == ("0a1b2c", OURS)
    assert no_disposition.original_message_id == OURS


def test_global_delivery_status_in_base64_is_decoded() -> None:
    body = (
        "Original-Envelope-Id: 0a1b2c\n\n"
        "Final-Recipient: utf-8; médecin@hôpital.example\nAction: delivered\nStatus: 2.0.0"
    )
    encoded = base64.encodebytes(body.encode("utf-8")).decode()
    report = parse_report(
        mail(
            (
                "Content-Type: message/global-delivery-status\nContent-Transfer-Encoding: base64",
                encoded,
            ),
            report_type="delivery-status",
        )
    )
    assert report.original_envelope_id == "0a1b2c"
    assert report.recipients[0].final_recipient == "médecin@hôpital.example"
    assert report.outcome == "delivered"


def test_envelope_id_xtext_is_decoded() -> None:
    report = parse_report(
        mail(
            dsn_part(f"Original-Envelope-Id: ab+2Bcd+3D\n\n{FAILED_RECIPIENT}"),
            report_type="delivery-status",
        )
    )
    assert report.original_envelope_id == "ab+cd="


def test_signed_mdn_is_read_inside_its_multipart_signed() -> None:
    inner = mail(mdn_part(f"Original-Message-ID: {OURS}\n{DISPLAYED}")).decode()
    _, _, inner_body = inner.partition("MIME-Version: 1.0\n")
    data = (
        "From: dr@example.org\nMessage-ID: <signed@example.org>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        'micalg=sha-256; boundary="sig"\n\n'
        f"--sig\n{inner_body}\n--sig\n"
        "Content-Type: application/pkcs7-signature; name=smime.p7s\n"
        "Content-Transfer-Encoding: base64\n\nMIIGAAYJKoZIhvcNAQcCoIIF8TCCBe0CAQEx\n--sig--\n"
    ).encode()
    report = parse_report(data)
    assert (report.kind, report.disposition, report.original_message_id) == (
        "mdn",
        "displayed",
        OURS,
    )
    assert report.report_message_id == "<signed@example.org>"


def test_encrypted_mail_is_unrecognised_with_the_reason() -> None:
    data = (
        b"From: dr@example.org\nMIME-Version: 1.0\n"
        b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\n'
        b"Content-Transfer-Encoding: base64\n\nMIAGCSqGSIb3DQEHA6CAMIACAQAxggFQ\n"
    )
    report = parse_report(data)
    assert report.kind == "unrecognised"
    assert report.reason is not None and "cannot be read without decrypting" in report.reason


def test_fields_right_after_the_part_header_without_an_empty_line_still_count() -> None:
    data = mail(
        (
            "Content-Type: message/disposition-notification\n"
            f"Original-Message-ID: {OURS}\n"
            "Disposition: automatic-action/MDN-sent-automatically; processed",
            "",
        ),
    )
    report = parse_report(data)
    assert (report.kind, report.disposition, report.original_message_id) == (
        "mdn",
        "processed",
        OURS,
    )


def test_truncated_report_without_its_closing_delimiter_is_still_read() -> None:
    data = mail(
        dsn_part(f"Original-Envelope-Id: 0a1b2c\n\n{FAILED_RECIPIENT}"),
        report_type="delivery-status",
    )
    cut = data[: data.index(b"Diagnostic-Code")]
    report = parse_report(cut)
    assert (report.kind, report.outcome, report.original_envelope_id) == ("dsn", "failed", "0a1b2c")


def test_returned_message_body_is_never_kept() -> None:
    patient_text = "DUPONT Helene nee le 12/03/1961 glycemie 7.2 mmol/L"
    returned = (
        "From: results@labdispatch.localhost\n"
        f"Message-ID: {OURS}\nContent-Type: text/plain\n\n{patient_text}\n"
    )
    report = parse_report(
        mail(
            ("Content-Type: text/plain", f"Here is your message:\n{patient_text}"),
            dsn_part(f"Original-Envelope-Id: 0a1b2c\n\n{FAILED_RECIPIENT}"),
            ("Content-Type: message/rfc822", returned),
            report_type="delivery-status",
        )
    )
    assert report.original_message_id == OURS
    assert "DUPONT" not in repr(report)
    assert "glycemie" not in repr(report)


def test_exim_returned_smime_body_is_not_kept() -> None:
    data = fixture("exim-dsn-failed.eml")
    body_line = next(line for line in data.splitlines() if line.startswith(b"MIAGCSqG")).decode()
    assert body_line not in repr(parse_report(data))


def test_free_text_is_cut_and_stripped_of_control_characters() -> None:
    long_diagnostic = "smtp; 550 " + "x" * 5000
    report = parse_report(
        mail(
            dsn_part(
                "Final-Recipient: rfc822; dr@example.org\nAction: failed\n"
                f"Status: 5.0.0\nDiagnostic-Code: {long_diagnostic}\n"
                "Remote-MTA: dns; mx\x1b[31m.example\x00org"
            ),
            report_type="delivery-status",
            # An encoded word can carry any control character: a line break, a terminal escape.
            headers="Subject: =?utf-8?q?forged=0A2025-01-01_INFO_ok=1B=5B2K=E2=80=A8?=\n",
        )
    )
    diagnostic = report.recipients[0].diagnostic_code
    assert diagnostic is not None and len(diagnostic) == MAX_TEXT_LENGTH
    assert report.subject == "forged 2025-01-01 INFO ok [2K"


def test_status_that_is_not_a_code_is_kept_as_written() -> None:
    report = parse_report(
        mail(
            dsn_part(
                "Final-Recipient: rfc822; dr@example.org\nAction: FAILED (permanent)\nStatus: five"
            ),
            report_type="delivery-status",
        )
    )
    assert report.recipients[0].action == "failed"
    assert report.recipients[0].status == "five"


def test_outcome_does_not_let_one_success_hide_a_failure() -> None:
    report = parse_report(
        mail(
            dsn_part(
                "Final-Recipient: rfc822; a@example.org\nAction: delivered\nStatus: 2.0.0\n\n"
                "Final-Recipient: rfc822; b@example.org\nAction: failed\nStatus: 5.1.1\n\n"
                "Final-Recipient: rfc822; c@example.org\nAction: delayed\nStatus: 4.4.1"
            ),
            report_type="delivery-status",
        )
    )
    assert [r.action for r in report.recipients] == ["delivered", "failed", "delayed"]
    assert report.outcome == "failed"


def test_eight_bit_garbage_in_headers_and_fields_is_survived() -> None:
    data = (
        mail(
            dsn_part("Final-Recipient: rfc822; dr\xff@example.org\nAction: failed\nStatus: 5.1.1"),
            report_type="delivery-status",
        ).replace(b"\xc3\xbf", b"\xff\xfe")
        + b"\n\xff\x00\x80"
    )
    data = data.replace(b"Subject: report", b"Subject: r\xe9sultat \x80\x81")
    report = parse_report(data)
    assert report.outcome == "failed"
    assert report.subject == "r\ufffdsultat \ufffd\ufffd"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty: no bytes at all"),
        (b" \r\n\r\n\t", "empty: no bytes at all"),
        (b"\x00\x01\x02binary", "not a mail message at all: it does not start with header fields"),
        (
            b"From: friend@example.org\nSubject: hello\n\nHi!\n",
            "not MIME at all: a plain-text mail, not a delivery or read report",
        ),
        (
            b"From: friend@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; "
            b"boundary=x\n\n--x\n\nhi\n--x--\n",
            "not a multipart/report (it is multipart/mixed)",
        ),
    ],
)
def test_what_is_not_a_report_says_why(data: bytes, reason: str) -> None:
    assert parse_report(data) == Report(
        kind="unrecognised",
        reason=reason,
        subject=parse_report(data).subject,
        report_message_id=None,
    )


def test_deep_nesting_is_bounded() -> None:
    depth = 500
    head = "".join(
        f'--b{i}\nContent-Type: multipart/mixed; boundary="b{i + 1}"\n\n' for i in range(depth)
    )
    top = 'From: x@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b0"'
    data = f"{top}\n\n{head}"
    report = parse_report(data.encode())
    assert report.kind == "unrecognised"


def test_a_parser_bug_becomes_an_unrecognised_report(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes) -> Report:
        raise IndexError("bug")

    monkeypatch.setattr(reports, "_parse", broken)
    report = parse_report(b"From: x@example.org\n\nhi")
    assert report.kind == "unrecognised"
    assert report.reason == "the report could not be read (internal error IndexError)"


# --- never raises ---------------------------------------------------------------------------


def assert_well_formed(report: Report) -> None:
    assert isinstance(report, Report)
    assert report.kind in ("mdn", "dsn", "unrecognised")
    assert (report.kind == "unrecognised") == (report.reason is not None)
    if report.kind != "dsn":
        assert report.recipients == ()
    for name, limit in (
        ("original_message_id", MAX_ID_LENGTH),
        ("report_message_id", MAX_ID_LENGTH),
    ):
        value = getattr(report, name)
        if value is not None:
            assert value.startswith("<") and value.endswith(">") and len(value) <= limit
    if report.original_envelope_id is not None:
        assert len(report.original_envelope_id) <= MAX_ENVELOPE_ID_LENGTH
    texts = [v for v in dataclasses.asdict(report).values() if isinstance(v, str)]
    for recipient in report.recipients:
        texts += [v for v in dataclasses.astuple(recipient) if isinstance(v, str)]
    for text in texts:
        assert 0 < len(text) <= MAX_TEXT_LENGTH
        assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in text), text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_any_bytes_give_a_report(data: bytes) -> None:
    assert_well_formed(parse_report(data))


def _mutate(data: bytes, operations: list[tuple[int, int, int, bytes]]) -> bytes:
    for kind, at, length, noise in operations:
        at %= len(data) + 1
        if kind == 0:  # cut the mail short
            data = data[:at]
        elif kind == 1:  # drop a stretch
            data = data[:at] + data[at + length :]
        elif kind == 2:  # insert noise
            data = data[:at] + noise + data[at:]
        elif kind == 3:  # overwrite with noise
            data = data[:at] + noise + data[at + len(noise) :]
        elif kind == 4:  # duplicate a stretch
            data = data[:at] + data[at : at + length] + data[at:]
        else:  # swap line ends
            data = (
                data.replace(b"\n", b"\r\n")
                if b"\r\n" not in data
                else data.replace(b"\r\n", b"\n")
            )
    return data


INTERESTING = st.sampled_from(
    [
        b"\n",
        b"\r\n",
        b"\n\n",
        b"--",
        b":",
        b";",
        b"<",
        b">",
        b"=",
        b"\x00",
        b"\xff",
        b" ",
        b"Content-Type: multipart/report; boundary=",
        b"message/delivery-status",
        b"Content-Transfer-Encoding: base64\n",
        b"=?utf-8?q?=C3?=",
        b"(",
        b"\\",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(FIXTURE_FILES),
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.integers(0, 10_000),
            st.integers(0, 400),
            st.one_of(INTERESTING, st.binary(min_size=1, max_size=40)),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_mangled_fixtures_give_a_report(
    path: Path, operations: list[tuple[int, int, int, bytes]]
) -> None:
    assert_well_formed(parse_report(_mutate(path.read_bytes(), operations)))
