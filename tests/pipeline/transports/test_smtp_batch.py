"""A batch of envelopes over one SMTP connection, pipelined (RFC 2920) when the relay offers
it: results in order with the same meaning as `send`, refusals that leave the connection
usable, a connection lost mid-batch with nothing lost, and the bytes on the wire showing
how many round trips it took.

The relay is aiosmtpd (`tests/smtp_relay.py`), told to advertise PIPELINING; it records
every chunk it read, so a test sees which commands came in one write of the client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.transports.base import Outcome, SendsMany, send_many
from pipeline.transports.mailbox import MailboxTransport
from pipeline.transports.smtp import SmtpConfig, SmtpTransport
from tests.https_endpoint import Pki
from tests.pipeline.transports.conftest import envelope
from tests.smtp_relay import Relay, RelayFactory, RelayHandler

_VERBS = {b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"QUIT", b"STARTTLS", b"."}


def transport_for(relay: Relay, **options: Any) -> SmtpTransport:
    options.setdefault("timeout", 5.0)
    options.setdefault("local_hostname", "dispatch.test")
    return SmtpTransport(SmtpConfig("127.0.0.1", relay.port, **options))


def shapes(relay: Relay) -> list[list[str]]:
    """Each chunk the relay read, as the commands in it ("." for the end of a message's
    data): one list per write of the client that reached the relay on its own."""
    found = []
    for chunk in relay.handler.reads:
        verbs = []
        for line in chunk.split(b"\r\n"):
            word = line.split(b" ", 1)[0].upper()
            if word in _VERBS:
                verbs.append(word.decode())
        found.append(verbs)
    return found


@pytest.fixture(params=[True, False], ids=["pipelining", "one-at-a-time"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def relay(start_relay: RelayFactory, pipelining: bool) -> Relay:
    return start_relay(RelayHandler(advertise_pipelining=pipelining))


@pytest.fixture
def smtp(relay: Relay) -> Iterator[SmtpTransport]:
    with transport_for(relay) as transport:
        yield transport


# --- the wire -----------------------------------------------------------------------------------


def test_a_pipelined_batch_takes_one_round_trip_per_envelope(start_relay: RelayFactory) -> None:
    relay = start_relay(RelayHandler(advertise_pipelining=True))
    sent = [envelope(number) for number in range(1, 6)]

    with transport_for(relay) as smtp:
        results = smtp.send_many(sent)

    assert [r.evidence for r in results] == [f"250 2.0.0 Ok: queued as Q{n}" for n in range(1, 6)]
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert [m.data for m in relay.handler.messages] == [e.data for e in sent]
    # MAIL, RCPT and DATA in one write; then each envelope's data in one write with the
    # next envelope's MAIL, RCPT and DATA (RFC 2920: data may open a group, DATA ends one).
    assert shapes(relay) == [
        ["EHLO"],
        ["MAIL", "RCPT", "DATA"],
        *[[".", "MAIL", "RCPT", "DATA"]] * 4,
        ["."],
        ["QUIT"],
    ]
    assert relay.handler.connections == 1


def test_without_pipelining_offered_each_command_waits_for_its_reply(
    start_relay: RelayFactory,
) -> None:
    relay = start_relay(RelayHandler(advertise_pipelining=False))

    with transport_for(relay) as smtp:
        results = smtp.send_many([envelope(1), envelope(2)])

    assert all(r.accepted for r in results)
    assert shapes(relay) == [["EHLO"], *[["MAIL"], ["RCPT"], ["DATA"], ["."]] * 2, ["QUIT"]]


def test_pipelined_data_arrives_byte_for_byte_whatever_its_size(start_relay: RelayFactory) -> None:
    relay = start_relay(RelayHandler(advertise_pipelining=True))
    dotted = b"Message-ID: <d@labdispatch.test>\r\n\r\n.starts with a dot\r\n.\r\n..two\r\n"
    large = b"Message-ID: <l@labdispatch.test>\r\n\r\n" + (b"QUJD" * 19 + b"\r\n") * 4000
    no_final_crlf = b"Message-ID: <n@labdispatch.test>\r\n\r\nlast line"
    sent = [envelope(1, data=dotted), envelope(2, data=large), envelope(3, data=no_final_crlf)]

    with transport_for(relay) as smtp:
        results = smtp.send_many(sent)

    assert all(r.accepted for r in results), results
    assert [m.data for m in relay.handler.messages] == [dotted, large, no_final_crlf + b"\r\n"]


def test_dsn_and_size_parameters_are_those_of_send(start_relay: RelayFactory) -> None:
    relay = start_relay(RelayHandler(advertise_pipelining=True, advertise_dsn=True))
    sent = [envelope(1, envelope_id="delivery+42=a b"), envelope(2)]

    with transport_for(relay) as smtp:
        assert all(r.accepted for r in smtp.send_many(sent))

    first, second = relay.handler.messages
    assert first.mail_options == [f"SIZE={len(sent[0].data)}"]
    assert second.mail_options == [f"SIZE={len(sent[1].data)}"]
    # The relay copies its DSN record at each DATA, before it reads the next MAIL.
    dsn = {"RET": "HDRS", "NOTIFY": "SUCCESS,FAILURE,DELAY"}
    assert first.dsn == {"ENVID": "delivery+2B42+3Da+20b", **dsn}
    assert second.dsn == {"ENVID": "delivery-2", **dsn}


# --- refusals in a batch ------------------------------------------------------------------------


def test_refusals_in_a_batch_are_per_envelope_and_the_connection_stays_usable(
    relay: Relay, smtp: SmtpTransport, pipelining: bool
) -> None:
    unknown, full = "nobody@cabinet.example", "dr.leroy@cabinet.example"
    relay.handler.rcpt_replies = {
        unknown: f"550 5.1.1 <{unknown}>: Recipient address rejected: User unknown",
        full: "451 4.3.0 Temporary lookup failure",
    }
    relay.handler.data_replies = [None, "552 5.3.4 Message size exceeds fixed maximum"]
    sent = [
        envelope(1),
        envelope(2, recipient=unknown),
        envelope(3, recipient=full),
        envelope(4),  # the second to reach the data: refused after it
        envelope(5),
    ]

    results = smtp.send_many(sent)

    assert [(r.outcome, r.evidence) for r in results] == [
        (Outcome.ACCEPTED, "250 2.0.0 Ok: queued as Q1"),
        (Outcome.PERMANENT, f"RCPT: {relay.handler.rcpt_replies[unknown]}"),
        (Outcome.TRANSIENT, f"RCPT: {relay.handler.rcpt_replies[full]}"),
        (Outcome.PERMANENT, "DATA: 552 5.3.4 Message size exceeds fixed maximum"),
        (Outcome.ACCEPTED, "250 2.0.0 Ok: queued as Q2"),
    ]
    assert [m.data for m in relay.handler.messages] == [sent[0].data, sent[4].data]
    assert relay.handler.connections == 1
    if pipelining:
        # A refused transaction is reset in the same write as the next one's commands; after
        # a refused data the transaction is over (RFC 5321 4.1.1.4): no RSET.
        assert shapes(relay)[1:] == [  # after EHLO; QUIT comes later
            ["MAIL", "RCPT", "DATA"],
            [".", "MAIL", "RCPT", "DATA"],
            ["RSET", "MAIL", "RCPT", "DATA"],
            ["RSET", "MAIL", "RCPT", "DATA"],
            [".", "MAIL", "RCPT", "DATA"],
            ["."],
        ]


def test_a_refusal_at_the_end_of_a_batch_is_reset_before_the_next_one(
    relay: Relay, smtp: SmtpTransport
) -> None:
    relay.handler.mail_replies = ["553 5.7.1 Sender address rejected: not owned by user"]

    refused = smtp.send_many([envelope(1)])
    later = smtp.send_many([envelope(2)])

    assert refused[0].outcome is Outcome.PERMANENT
    assert later[0].accepted, later[0].evidence
    assert relay.handler.connections == 1
    assert any("RSET" in shape for shape in shapes(relay))


def test_an_unsafe_address_in_a_batch_is_permanent_and_the_others_go(
    relay: Relay, smtp: SmtpTransport
) -> None:
    bad = envelope(2, recipient="sophie@cabinet.example\r\nRCPT TO:<spy@elsewhere.example>")

    results = smtp.send_many([envelope(1), bad, envelope(3)])

    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.PERMANENT, Outcome.ACCEPTED]
    assert results[1].evidence.startswith("recipient address ")
    assert len(relay.handler.messages) == 2


def test_an_empty_batch_does_not_contact_the_relay(relay: Relay, smtp: SmtpTransport) -> None:
    assert smtp.send_many([]) == []
    assert relay.handler.connections == 0


# --- the connection ends mid-batch --------------------------------------------------------------


def test_connection_dropped_mid_batch_the_rest_go_on_a_new_connection(
    relay: Relay, smtp: SmtpTransport
) -> None:
    relay.handler.mail_replies = [None, None, "drop"]  # vanishes as the third MAIL arrives
    sent = [envelope(number) for number in range(1, 6)]

    results = smtp.send_many(sent)

    assert all(r.accepted for r in results), results
    assert [m.data for m in relay.handler.messages] == [e.data for e in sent]
    assert relay.handler.connections == 2


def test_relay_gone_mid_batch_the_remaining_envelopes_come_back_transient(
    relay: Relay, smtp: SmtpTransport
) -> None:
    relay.handler.mail_replies = [None, None, "drop", "drop"]  # and again on the new one
    sent = [envelope(number) for number in range(1, 6)]

    results = smtp.send_many(sent)

    where = f"smtp://127.0.0.1:{relay.port}"
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2 + [Outcome.TRANSIENT] * 3
    assert results[2].evidence == f"MAIL ({where}): connection closed by the relay"
    for later in results[3:]:
        assert later.evidence == (
            f"MAIL ({where}): not sent, the connection ended under an earlier envelope "
            "(connection closed by the relay)"
        )
    # None lost: what was accepted arrived, and everything else comes back to be retried.
    assert [m.data for m in relay.handler.messages] == [e.data for e in sent[:2]]
    assert relay.handler.connections == 2


def test_data_written_and_never_answered_is_transient_and_not_resent_in_the_batch(
    relay: Relay, smtp: SmtpTransport
) -> None:
    relay.handler.data_replies = [None, "drop"]  # reads the second data, then vanishes
    sent = [envelope(number) for number in range(1, 5)]

    results = smtp.send_many(sent)

    assert [r.outcome for r in results] == [
        Outcome.ACCEPTED,
        Outcome.TRANSIENT,  # the relay may have queued it: retried later, same Message-ID
        Outcome.ACCEPTED,
        Outcome.ACCEPTED,
    ]
    assert results[1].evidence.startswith(f"DATA (smtp://127.0.0.1:{relay.port}): ")
    assert [m.data for m in relay.handler.messages] == [sent[0].data, sent[2].data, sent[3].data]
    assert relay.handler.connections == 2


def test_421_mid_batch_is_transient_for_that_envelope_and_the_rest_reconnect(
    relay: Relay, smtp: SmtpTransport
) -> None:
    relay.handler.mail_replies = [None, "421 4.7.0 Too many messages on this connection"]

    results = smtp.send_many([envelope(number) for number in range(1, 5)])

    assert [(r.outcome, r.evidence) for r in results] == [
        (Outcome.ACCEPTED, "250 2.0.0 Ok: queued as Q1"),
        (Outcome.TRANSIENT, "MAIL: 421 4.7.0 Too many messages on this connection"),
        (Outcome.ACCEPTED, "250 2.0.0 Ok: queued as Q2"),
        (Outcome.ACCEPTED, "250 2.0.0 Ok: queued as Q3"),
    ]
    assert relay.handler.connections == 2


def test_a_connection_closed_while_idle_is_reopened_for_the_batch(
    relay: Relay, smtp: SmtpTransport
) -> None:
    assert smtp.send_many([envelope(1)])[0].accepted
    relay.handler.drop_at_mail = 1  # the relay vanishes as the batch's first MAIL arrives

    results = smtp.send_many([envelope(2), envelope(3)])

    assert all(r.accepted for r in results), results
    assert len(relay.handler.messages) == 3
    assert relay.handler.connections == 2


def test_relay_restarted_between_batches_is_reconnected(relay: Relay, smtp: SmtpTransport) -> None:
    assert smtp.send_many([envelope(1)])[0].accepted
    relay.restart()

    results = smtp.send_many([envelope(2), envelope(3)])

    assert all(r.accepted for r in results), results
    assert relay.handler.connections == 1  # counted since the restart


def test_nothing_listening_every_envelope_is_transient_with_the_reason() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with SmtpTransport(SmtpConfig("127.0.0.1", port, timeout=5)) as smtp:
        results = smtp.send_many([envelope(1), envelope(2)])

    assert [r.evidence for r in results] == [
        f"connect (smtp://127.0.0.1:{port}): connection refused"
    ] * 2


def test_a_reply_that_is_not_smtp_or_too_long_is_transient_and_bounded() -> None:
    """A relay answering MAIL with an endless line: we stop reading at a bound."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def relay() -> None:
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"220 odd.test ESMTP\r\n")
                connection.recv(1024)  # EHLO
                connection.sendall(b"250-odd.test\r\n250 PIPELINING\r\n")
                connection.recv(1024)  # MAIL, RCPT, DATA
                with contextlib.suppress(OSError):  # the client gave up reading and closed
                    connection.sendall(b"250" + b"x" * 100_000)

        thread = threading.Thread(target=relay)
        thread.start()
        try:
            with SmtpTransport(SmtpConfig("127.0.0.1", port, tls="none", timeout=5)) as smtp:
                [result] = smtp.send_many([envelope()])
        finally:
            thread.join(timeout=10)

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence == (
        f"MAIL (smtp://127.0.0.1:{port}): the relay's reply is longer than 16384 bytes"
    )


def test_data_going_ahead_after_a_refused_recipient_is_ended_with_a_lone_dot() -> None:
    """RFC 2920 3.1: a relay that answers 354 to a pipelined DATA although the recipient
    was refused gets a lone dot, no message; the batch goes on."""
    seen: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def relay() -> None:
            connection, _ = server.accept()
            with connection, connection.makefile("rb") as lines:
                connection.sendall(b"220 lax.test ESMTP\r\n")
                in_data = refused = False
                for line in lines:
                    seen.append(line)
                    if in_data:
                        if line == b".\r\n":
                            in_data = False
                            reply = b"554 5.5.1 no valid recipients" if refused else b"250 ok"
                            connection.sendall(reply + b"\r\n")
                        continue
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        connection.sendall(b"250-lax.test\r\n250 PIPELINING\r\n")
                    elif verb == b"RCPT":
                        refused = b"nobody@" in line
                        connection.sendall(b"550 5.1.1 unknown\r\n" if refused else b"250 ok\r\n")
                    elif verb == b"DATA":
                        in_data = True
                        connection.sendall(b"354 go ahead\r\n")  # whatever RCPT got
                    elif verb == b"QUIT":
                        connection.sendall(b"221 bye\r\n")
                        return
                    else:
                        connection.sendall(b"250 ok\r\n")

        thread = threading.Thread(target=relay)
        thread.start()
        try:
            with SmtpTransport(SmtpConfig("127.0.0.1", port, tls="none", timeout=5)) as smtp:
                results = smtp.send_many(
                    [envelope(1, recipient="nobody@cabinet.example"), envelope(2)]
                )
        finally:
            thread.join(timeout=10)

    assert [(r.outcome, r.evidence) for r in results] == [
        (Outcome.PERMANENT, "RCPT: 550 5.1.1 unknown"),
        (Outcome.ACCEPTED, "250 ok"),
    ]
    data_of_first = seen[seen.index(b"DATA\r\n") + 1]
    assert data_of_first == b".\r\n"  # no byte of the message
    assert seen[seen.index(b"DATA\r\n") + 2] == b"RSET\r\n"


# --- TLS and AUTH -------------------------------------------------------------------------------


def test_a_pipelined_batch_over_starttls_with_auth(start_relay: RelayFactory, pki: Pki) -> None:
    handler = RelayHandler(advertise_pipelining=True)
    relay = start_relay(
        handler,
        tls_context=pki.server_context(),
        require_starttls=True,
        authenticator=handler.authenticate,
        auth_required=True,
        auth_require_tls=True,
    )

    with transport_for(
        relay, tls="starttls", ca_file=pki.ca, username="labo-nord", password=handler.password
    ) as smtp:
        results = smtp.send_many([envelope(number) for number in range(1, 4)])

    assert all(r.accepted for r in results), results
    assert [(m.tls, m.login) for m in handler.messages] == [(True, "labo-nord")] * 3
    # What the relay read after the TLS layer: still one write per envelope.
    groups = [shape for shape in shapes(relay) if "MAIL" in shape]
    assert groups == [["MAIL", "RCPT", "DATA"]] + [[".", "MAIL", "RCPT", "DATA"]] * 2


# --- other transports ---------------------------------------------------------------------------


def test_send_many_on_a_transport_without_its_own_sends_one_by_one(tmp_path: Any) -> None:
    with MailboxTransport(tmp_path) as mailbox:
        assert not isinstance(mailbox, SendsMany)
        sent = [envelope(number, recipient="sophie.martin") for number in range(1, 4)]
        results = send_many(mailbox, sent)

    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
    assert all(r.delivered for r in results)


def test_send_many_uses_the_smtp_transports_own_batch(relay: Relay, smtp: SmtpTransport) -> None:
    assert isinstance(smtp, SendsMany)
    results = send_many(smtp, [envelope(1), envelope(2)])

    assert [r.evidence for r in results] == [
        "250 2.0.0 Ok: queued as Q1",
        "250 2.0.0 Ok: queued as Q2",
    ]
