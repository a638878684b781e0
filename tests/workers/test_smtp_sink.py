"""The demo's and benchmark's SMTP receiver: every message kept byte for byte, logged, and
refused on demand; checked with a real SMTP client over real sockets."""

from __future__ import annotations

import base64
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from pipeline.sealing.keys import load_signer
from pipeline.sealing.smime import EnvelopeHeaders, seal
from tests.pipeline.sealing.helpers import open_envelope
from workers.bench.synthetic import bench_pki, bench_recipients, generate_labelled_results
from workers.smtp_sink import REFUSE_SUFFIX, SmtpSink, eml_name, message_id, read_log

ROOT = Path(__file__).resolve().parents[2]
FROM = "results@labo.example"

#: Dot-stuffing edge cases (a line starting with ".", a line ending with ".", a line of
#: "..") and non-ASCII bytes, CRLF throughout: what arrives must be these bytes exactly.
MESSAGE = (
    b"Message-ID: <r1.dr1@labdispatch.test>\r\n"
    b"From: results@labo.example\r\n"
    b"To: dr1@bench.example\r\n"
    b"Subject: =?utf-8?q?R=C3=A9sultat?=\r\n"
    b"\r\n"
    b"first line ends with a dot.\r\n"
    b".starts with a dot\r\n"
    b"..\r\n"
    b"caf\xc3\xa9\r\n"
    b"\r\n"
    b"last line\r\n"
)


def mail(number: int, size: int = 0) -> bytes:
    return (
        f"Message-ID: <m{number}@labdispatch.test>\r\nFrom: {FROM}\r\n\r\n".encode()
        + b"x" * size
        + b"\r\n"
    )


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(outbox=tmp_path / "outbox", log=tmp_path / "sink.tsv", keep=True) as running:
        yield running


def client(sink: SmtpSink) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", sink.port, timeout=10)


def test_a_message_lands_as_one_eml_file_with_exactly_the_bytes_sent(
    sink: SmtpSink, tmp_path: Path
) -> None:
    with client(sink) as smtp:
        smtp.sendmail(FROM, ["dr1@bench.example"], MESSAGE)

    [eml] = sorted((tmp_path / "outbox").iterdir())
    assert eml.name == "00000001-r1.dr1@labdispatch.test.eml"
    assert eml.read_bytes() == MESSAGE
    assert sink.handler.messages[0].data == MESSAGE


def test_an_empty_body_and_a_message_of_one_line_are_kept_too(
    sink: SmtpSink, tmp_path: Path
) -> None:
    with client(sink) as smtp:
        smtp.sendmail(FROM, ["dr1@bench.example"], b"Subject: one line\r\n")
        smtp.sendmail(FROM, ["dr1@bench.example"], b".\r\n")

    assert [m.data for m in sink.handler.messages] == [b"Subject: one line\r\n", b".\r\n"]
    assert [p.name for p in sorted((tmp_path / "outbox").iterdir())] == [
        "00000001-no-message-id.eml",
        "00000002-no-message-id.eml",
    ]


def test_each_message_is_one_log_line_with_message_id_recipients_size_and_time(
    sink: SmtpSink, tmp_path: Path
) -> None:
    before = time.time()
    with client(sink) as smtp:
        smtp.sendmail(FROM, ["dr1@bench.example", "dr2@bench.example"], mail(1, 100))
        smtp.sendmail(FROM, ["dr3@bench.example"], mail(2, 5000))
    after = time.time()

    first, second = read_log(tmp_path / "sink.tsv")
    assert (first.number, first.message_id, first.recipients, first.size) == (
        1,
        "<m1@labdispatch.test>",
        ("dr1@bench.example", "dr2@bench.example"),
        len(mail(1, 100)),
    )
    assert (second.message_id, second.recipients, second.size) == (
        "<m2@labdispatch.test>",
        ("dr3@bench.example",),
        len(mail(2, 5000)),
    )
    assert before <= first.arrived_at <= second.arrived_at <= after
    handler = sink.handler
    assert (handler.received, handler.envelope_recipients, handler.connections) == (2, 3, 1)
    assert handler.bytes == first.size + second.size


def test_a_log_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    log = tmp_path / "sink.tsv"
    log.write_bytes(b"1.5\t1\t<a@x>\tdr1@x\t10\n2.5\t2\t<b@x>\tdr2")

    [arrival] = read_log(log)

    assert arrival.message_id == "<a@x>" and arrival.arrived_at == 1.5
    assert read_log(tmp_path / "absent.tsv") == []


def test_while_refusing_new_connections_get_421_then_mail_flows_again(sink: SmtpSink) -> None:
    sink.refusing = True
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        client(sink)
    assert refused.value.smtp_code == 421

    sink.refusing = False
    with client(sink) as smtp:
        smtp.sendmail(FROM, ["dr1@bench.example"], mail(1))

    assert sink.handler.received == 1
    assert sink.handler.refused == 1


def test_refusing_answers_421_to_the_next_transaction_of_an_open_connection(
    sink: SmtpSink,
) -> None:
    smtp = client(sink)
    smtp.sendmail(FROM, ["dr1@bench.example"], mail(1))
    sink.refusing = True

    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.sendmail(FROM, ["dr1@bench.example"], mail(2))

    assert refused.value.smtp_code == 421
    assert [arrival.arrival.number for arrival in sink.handler.messages] == [1]


def test_after_a_421_the_sink_closes_the_connection_itself(sink: SmtpSink) -> None:
    with socket.create_connection(("127.0.0.1", sink.port), timeout=10) as raw:
        stream = raw.makefile("rb")
        assert stream.readline().startswith(b"220 ")
        raw.sendall(b"HELO lis.test\r\n")
        assert stream.readline().startswith(b"250 ")
        sink.refusing = True
        raw.sendall(b"MAIL FROM:<results@labo.example>\r\n")
        assert stream.readline().startswith(b"421 ")
        assert stream.readline() == b""  # end of stream: closed by the sink, not by us


def test_another_process_toggles_refusal_with_the_refuse_file(
    sink: SmtpSink, tmp_path: Path
) -> None:
    flag = tmp_path / f"sink.tsv{REFUSE_SUFFIX}"
    flag.touch()
    with pytest.raises(smtplib.SMTPConnectError):
        client(sink)

    flag.unlink()
    with client(sink) as smtp:
        smtp.sendmail(FROM, ["dr1@bench.example"], mail(1))
    assert sink.handler.received == 1


def test_restarted_on_the_same_port_it_numbers_on_without_overwriting(
    sink: SmtpSink, tmp_path: Path
) -> None:
    port = sink.port
    with client(sink) as smtp:
        smtp.sendmail(FROM, ["dr1@bench.example"], mail(1))
    sink.stop()
    with SmtpSink(outbox=tmp_path / "outbox") as later, client(later) as smtp:
        smtp.sendmail(FROM, ["dr1@bench.example"], mail(2))
    sink.start()
    with client(sink) as smtp:
        smtp.sendmail(FROM, ["dr1@bench.example"], mail(3))

    assert sink.port == port
    assert [p.name[:8] for p in sorted((tmp_path / "outbox").glob("*.eml"))] == [
        "00000001",
        "00000002",
        "00000003",
    ]
    assert [a.number for a in read_log(tmp_path / "sink.tsv")] == [1, 3]


def test_message_id_is_read_from_the_headers_only_and_unfolded() -> None:
    folded = b"Subject: x\r\nMessage-ID:\r\n <folded@x.test>\r\nTo: y\r\n\r\nbody"
    in_body = b"Subject: x\r\n\r\nMessage-ID: <not-a-header@x.test>\r\n"

    assert message_id(folded) == "<folded@x.test>"
    assert message_id(b"message-id: <lower@x.test>\r\n\r\n") == "<lower@x.test>"
    assert message_id(in_body) == ""
    assert eml_name(7, "<a/../b c@x.test>") == "00000007-a_.._b_c@x.test.eml"


def test_as_its_own_process_it_prints_the_port_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.smtp_sink",
            "--port",
            "0",
            "--outbox",
            str(tmp_path / "outbox"),
            "--log",
            str(tmp_path / "sink.tsv"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        assert port > 0
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail(FROM, ["dr1@bench.example"], MESSAGE)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None and process.stderr.read() == ""
    [eml] = (tmp_path / "outbox").glob("*.eml")
    assert eml.read_bytes() == MESSAGE
    [arrival] = read_log(tmp_path / "sink.tsv")
    assert arrival.message_id == "<r1.dr1@labdispatch.test>"


def test_a_port_in_use_is_a_one_line_error(sink: SmtpSink) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workers.smtp_sink", "--port", str(sink.port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr.startswith(f"smtp sink: cannot listen on 127.0.0.1:{sink.port}")
    assert "Traceback" not in done.stderr


def test_a_sealed_result_in_the_outbox_opens_with_stock_openssl(
    sink: SmtpSink, tmp_path: Path
) -> None:
    pki = bench_pki(tmp_path / "pki", 4, "LABO-BENCH", keys=2)  # dr3, dr4 reuse a pool key
    person = bench_recipients(4)[3]
    [result] = generate_labelled_results(1, 9, "LABO-BENCH", [person.rpps], pdf_ratio=1.0)
    certificate_path, key_path = pki.recipients[person.key]
    content = b"Content-Type: application/hl7-v2\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    content += base64.encodebytes(result.data).replace(b"\n", b"\r\n")
    sealed = seal(
        content,
        load_signer(certificate=pki.lab_certificate, key=pki.lab_key),
        x509.load_pem_x509_certificate(certificate_path.read_bytes()),
        EnvelopeHeaders(
            message_id=f"<{result.control_id}.{person.key}@labdispatch.test>",
            from_address=FROM,
            to_address=person.address,
            subject="Résultat",
            disposition_notification_to=None,
            date=datetime.now(UTC),
        ),
    )
    with client(sink) as smtp:
        smtp.sendmail(FROM, [person.address], sealed)

    [eml] = (tmp_path / "outbox").glob("*.eml")
    assert eml.name == f"00000001-{result.control_id}.dr4@labdispatch.test.eml"
    assert eml.stat().st_size > 100_000  # the PDF travelled inside
    opened = open_envelope(eml.read_bytes(), certificate_path, key_path, pki.ca_certificate)
    assert opened.get_payload(decode=True) == result.data


def test_a_message_that_cannot_be_stored_gets_451_not_250(sink: SmtpSink, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.rmdir()
    outbox.write_bytes(b"")  # the outbox is gone: a file where the folder was

    with client(sink) as smtp, pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.sendmail(FROM, ["dr1@bench.example"], mail(1))

    assert refused.value.smtp_code == 451
    assert sink.handler.received == 0
    assert read_log(tmp_path / "sink.tsv") == []
