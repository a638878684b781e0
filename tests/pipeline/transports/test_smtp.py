from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from pipeline.transports.base import Outcome, TransportConfigurationError
from pipeline.transports.smtp import SmtpConfig, SmtpTransport
from tests.https_endpoint import Pki
from tests.pipeline.transports.conftest import envelope
from tests.smtp_relay import Relay, RelayFactory, RelayHandler, free_port


def transport_for(relay: Relay, **options: Any) -> SmtpTransport:
    options.setdefault("timeout", 5.0)
    options.setdefault("local_hostname", "dispatch.test")
    return SmtpTransport(SmtpConfig("127.0.0.1", relay.port, **options))


@pytest.fixture
def smtp(relay: Relay) -> Iterator[SmtpTransport]:
    with transport_for(relay) as transport:
        yield transport


# --- the transaction ----------------------------------------------------------------------------


def test_accepted_envelope_keeps_the_relay_reply_and_arrives_byte_for_byte(
    relay: Relay, smtp: SmtpTransport
) -> None:
    # Lines that smtplib must dot-stuff, a lone dot that would end DATA, a long base64 line.
    data = (
        b"Message-ID: <dots@labdispatch.test>\r\n\r\n"
        b".starts with a dot\r\n"
        b".\r\n"
        b"..two dots\r\n" + b"QUJD" * 19 + b"\r\n"
    )
    sent = envelope(data=data)

    result = smtp.send(sent)

    assert result.outcome is Outcome.ACCEPTED
    assert result.evidence == "250 2.0.0 Ok: queued as Q1"
    assert result.delivered is False  # a relay took it, not the recipient's store
    [received] = relay.handler.messages
    assert received.data == sent.data
    assert received.mail_from == "results@labo.example"
    assert received.rcpt_tos == ["sophie.martin@cabinet.example"]
    assert received.tls is False


def test_a_relay_without_dsn_gets_no_dsn_parameters(relay: Relay, smtp: SmtpTransport) -> None:
    """Stock aiosmtpd does not advertise DSN, and answers 555 to ENVID/NOTIFY: the plain
    path must work without them."""
    assert smtp.send(envelope()).accepted

    [received] = relay.handler.messages
    assert received.mail_options == [f"SIZE={len(envelope().data)}"]
    assert received.rcpt_options == []


def test_a_relay_advertising_dsn_gets_envid_ret_and_notify(start_relay: RelayFactory) -> None:
    relay = start_relay(RelayHandler(advertise_dsn=True))
    with transport_for(relay) as smtp:
        result = smtp.send(envelope(envelope_id="delivery+42=a b"))

    assert result.accepted, result.evidence
    [received] = relay.handler.messages
    assert received.dsn == {
        "ENVID": "delivery+2B42+3Da+20b",  # RFC 3461 xtext
        "RET": "HDRS",
        "NOTIFY": "SUCCESS,FAILURE,DELAY",
    }


def test_421_is_transient_and_the_next_send_reconnects(relay: Relay, smtp: SmtpTransport) -> None:
    relay.handler.mail_replies = ["421 4.3.2 Service shutting down"]

    first = smtp.send(envelope(1))
    second = smtp.send(envelope(2))

    assert first.outcome is Outcome.TRANSIENT
    assert first.evidence == "MAIL: 421 4.3.2 Service shutting down"
    assert second.outcome is Outcome.ACCEPTED
    assert relay.handler.connections == 2
    assert [m.data for m in relay.handler.messages] == [envelope(2).data]


def test_550_recipient_is_permanent_and_the_connection_stays_usable(
    relay: Relay, smtp: SmtpTransport
) -> None:
    unknown = "nobody@cabinet.example"
    reply = f"550 5.1.1 <{unknown}>: Recipient address rejected: User unknown"
    relay.handler.rcpt_replies[unknown] = reply

    refused = smtp.send(envelope(1, recipient=unknown))
    accepted = smtp.send(envelope(2))

    assert refused.outcome is Outcome.PERMANENT
    assert refused.evidence == f"RCPT: {reply}"
    assert accepted.outcome is Outcome.ACCEPTED
    assert relay.handler.connections == 1  # RSET, not a new connection


@pytest.mark.parametrize(
    ("stage", "reply", "outcome"),
    [
        ("MAIL", "451 4.3.0 Temporary lookup failure", Outcome.TRANSIENT),
        ("MAIL", "553 5.7.1 Sender address rejected: not owned by user", Outcome.PERMANENT),
        ("RCPT", "452 4.2.2 Mailbox full", Outcome.TRANSIENT),
        ("RCPT", "450 4.7.1 Greylisted, try again later", Outcome.TRANSIENT),
        ("DATA", "451 4.3.0 Queue file write error", Outcome.TRANSIENT),
        ("DATA", "554 5.6.0 Message content rejected", Outcome.PERMANENT),
    ],
)
def test_reply_class_decides_the_outcome_and_the_stage_is_named(
    relay: Relay, smtp: SmtpTransport, stage: str, reply: str, outcome: Outcome
) -> None:
    recipient = "dr.leroy@cabinet.example"
    if stage == "MAIL":
        relay.handler.mail_replies = [reply]
    elif stage == "RCPT":
        relay.handler.rcpt_replies[recipient] = reply
    else:
        relay.handler.data_replies = [reply]

    result = smtp.send(envelope(1, recipient=recipient))
    after = smtp.send(envelope(2))

    assert (result.outcome, result.evidence) == (outcome, f"{stage}: {reply}")
    assert after.accepted
    assert relay.handler.connections == 1


def test_authentication_required_at_mail_is_transient_not_the_envelopes_fault(
    relay: Relay, smtp: SmtpTransport
) -> None:
    relay.handler.mail_replies = ["530 5.7.0 Authentication required"]

    result = smtp.send(envelope())

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence == "MAIL: 530 5.7.0 Authentication required"


# --- the connection -----------------------------------------------------------------------------


def test_fifty_envelopes_travel_on_one_connection(relay: Relay, smtp: SmtpTransport) -> None:
    results = [smtp.send(envelope(number)) for number in range(50)]

    assert all(result.accepted for result in results)
    assert relay.handler.connections == 1
    assert len(relay.handler.messages) == 50
    assert results[-1].evidence == "250 2.0.0 Ok: queued as Q50"


def test_relay_restarted_between_sends_is_reconnected_transparently(
    relay: Relay, smtp: SmtpTransport
) -> None:
    assert smtp.send(envelope(1)).accepted
    relay.restart()

    result = smtp.send(envelope(2))

    assert result.accepted, result.evidence
    assert relay.handler.connections == 1  # counted since the restart


def test_connection_lost_under_the_first_command_is_retried_once_on_a_new_one(
    relay: Relay, smtp: SmtpTransport
) -> None:
    assert smtp.send(envelope(1)).accepted
    relay.handler.drop_at_mail = 1  # the relay vanishes as MAIL arrives

    result = smtp.send(envelope(2))

    assert result.accepted, result.evidence
    assert relay.handler.connections == 2
    assert len(relay.handler.messages) == 2


def test_a_fresh_connection_lost_under_mail_is_transient_not_retried(
    relay: Relay, smtp: SmtpTransport
) -> None:
    relay.handler.drop_at_mail = 2

    result = smtp.send(envelope())

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence.startswith(f"MAIL (smtp://127.0.0.1:{relay.port}): ")
    assert relay.handler.connections == 1
    assert relay.handler.drop_at_mail == 1


def test_nothing_listening_is_transient_and_names_the_relay() -> None:
    port = free_port()
    with SmtpTransport(SmtpConfig("127.0.0.1", port, timeout=5)) as smtp:
        result = smtp.send(envelope())

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence == f"connect (smtp://127.0.0.1:{port}): connection refused"


def test_a_relay_that_never_greets_times_out_as_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks
        port = silent.getsockname()[1]
        with SmtpTransport(SmtpConfig("127.0.0.1", port, timeout=0.2)) as smtp:
            result = smtp.send(envelope())

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence == f"connect (smtp://127.0.0.1:{port}): no answer within 0.2 s"


def test_destination_is_the_relay_whatever_the_address(smtp: SmtpTransport) -> None:
    port = smtp.config.port
    assert smtp.destination("a@one.example") == f"smtp://127.0.0.1:{port}"
    assert smtp.destination("b@two.example") == f"smtp://127.0.0.1:{port}"


# --- TLS and AUTH -------------------------------------------------------------------------------


def test_starttls_verifies_the_relay_against_the_ca_file(
    start_relay: RelayFactory, pki: Pki
) -> None:
    relay = start_relay(tls_context=pki.server_context(), require_starttls=True)

    with transport_for(relay, tls="starttls", ca_file=pki.ca) as smtp:
        result = smtp.send(envelope())

    assert result.accepted, result.evidence
    assert relay.handler.messages[0].tls is True


def test_opportunistic_tls_is_used_when_offered(start_relay: RelayFactory, pki: Pki) -> None:
    relay = start_relay(tls_context=pki.server_context())

    with transport_for(relay, ca_file=pki.ca) as smtp:
        assert smtp.config.tls == "opportunistic"
        assert smtp.send(envelope()).accepted

    assert relay.handler.messages[0].tls is True


def test_starttls_required_but_not_offered_is_transient(relay: Relay) -> None:
    with transport_for(relay, tls="starttls") as smtp:
        result = smtp.send(envelope())

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence == (
        f"STARTTLS (smtp://127.0.0.1:{relay.port}): the relay does not offer STARTTLS"
    )
    assert relay.handler.messages == []


@pytest.mark.parametrize("ca", ["system trust", "another CA"])
def test_an_untrusted_relay_certificate_is_transient(
    start_relay: RelayFactory, pki: Pki, ca: str
) -> None:
    relay = start_relay(tls_context=pki.server_context())
    ca_file = pki.rogue_ca if ca == "another CA" else None

    with transport_for(relay, tls="starttls", ca_file=ca_file) as smtp:
        result = smtp.send(envelope())

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence.startswith(
        f"STARTTLS (smtp://127.0.0.1:{relay.port}): TLS certificate of the relay not trusted"
    )
    assert relay.handler.messages == []


def test_implicit_tls_speaks_tls_from_the_first_byte(start_relay: RelayFactory, pki: Pki) -> None:
    relay = start_relay(ssl_context=pki.server_context())

    with transport_for(relay, tls="implicit", ca_file=pki.ca) as smtp:
        result = smtp.send(envelope())

    assert result.accepted, result.evidence


def authenticating_relay(start_relay: RelayFactory, pki: Pki, mechanism: str) -> Relay:
    handler = RelayHandler()
    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    return start_relay(
        handler,
        tls_context=pki.server_context(),
        authenticator=handler.authenticate,
        auth_required=True,
        auth_require_tls=True,
        auth_exclude_mechanism=[other],
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_over_starttls(start_relay: RelayFactory, pki: Pki, mechanism: str) -> None:
    relay = authenticating_relay(start_relay, pki, mechanism)
    password = relay.handler.password

    with transport_for(
        relay, tls="starttls", ca_file=pki.ca, username="labo-nord", password=password
    ) as smtp:
        results = [smtp.send(envelope(number)) for number in range(3)]

    assert all(result.accepted for result in results)
    assert relay.handler.logins == [(mechanism, "labo-nord")]  # once per connection
    assert [m.login for m in relay.handler.messages] == ["labo-nord"] * 3


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_wrong_password_is_transient_and_never_shown(
    start_relay: RelayFactory, pki: Pki, mechanism: str
) -> None:
    relay = authenticating_relay(start_relay, pki, mechanism)
    password = "Tr0ub4dor&3-wrong"

    with transport_for(
        relay, tls="starttls", ca_file=pki.ca, username="labo-nord", password=password
    ) as smtp:
        result = smtp.send(envelope())

    assert result.outcome is Outcome.TRANSIENT
    assert result.evidence.startswith(f"AUTH (smtp://127.0.0.1:{relay.port}): 535")
    for secret in (password, base64.b64encode(password.encode()).decode()):
        assert secret not in result.evidence
    assert password not in repr(smtp.config)
    assert relay.handler.messages == []


def test_credentials_are_not_sent_to_a_relay_without_starttls(relay: Relay) -> None:
    with transport_for(relay, username="labo-nord", password="secret") as smtp:
        result = smtp.send(envelope())

    assert result.outcome is Outcome.TRANSIENT
    assert "credentials are not sent in clear" in result.evidence


def test_credentials_without_tls_are_a_configuration_error() -> None:
    with pytest.raises(TransportConfigurationError, match="in clear"):
        SmtpConfig("relay.example", tls="none", username="labo", password="secret")


# --- refused before talking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipient",
    [
        "sophie@cabinet.example\r\nRCPT TO:<spy@elsewhere.example>",
        "sophie@cabinet.example> NOTIFY=NEVER",
        "sophie@cabinet.example\n",
        "<sophie@cabinet.example>",
        "sophie martin@cabinet.example",
        "hélène@cabinet.example",
        "no-at-sign",
        "",
    ],
)
def test_unsafe_recipient_is_permanent_without_contacting_the_relay(
    relay: Relay, smtp: SmtpTransport, recipient: str
) -> None:
    result = smtp.send(envelope(recipient=recipient))

    assert result.outcome is Outcome.PERMANENT
    assert result.evidence.startswith("recipient address ")
    assert "\n" not in result.evidence and "\r" not in result.evidence
    assert relay.handler.connections == 0


def test_bare_line_feeds_are_refused_before_the_relay(relay: Relay, smtp: SmtpTransport) -> None:
    """cryptography's S/MIME output has LF line ends; the sealing step must convert them."""
    bad = replace(envelope(), data=b"Subject: x\n\nbody\n.\r\nMAIL FROM:<spoof@x>\r\n")

    result = smtp.send(bad)

    assert result.outcome is Outcome.PERMANENT
    assert "bare CR or LF" in result.evidence
    assert relay.handler.connections == 0
