"""What the worker stages log when something of ours breaks: the type and the delivery,
never the exception's text, which may quote the result being handled (ARCHITECTURE rule 5).

The stages run as the Celery tasks run them (`route_stage`, `seal_stage`, `send_stage`,
and the one-shot `dispatch_due`), on the real ledger and relay; only the part that breaks
is a stand-in that raises with a patient's name and a value in its message, as a library
quoting the data it choked on would.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.deliver import dispatch_due, send_stage
from pipeline.delivery.route import route_stage
from pipeline.delivery.seal import seal_stage
from pipeline.delivery.services import DeliveryServices, SignerRegistry
from pipeline.sealing.keys import Signer
from pipeline.transports.base import Envelope, SendResult
from pipeline.transports.mailbox import MailboxTransport
from tests.pipeline.delivery.conftest import ADAM_XCN, received, sealed
from tests.pipeline.delivery.scenario import oru

LEAK = "DUPONT Hélène K+ 5.9"
#: Any part of it in a log is a leak.
LEAKED_PARTS = ("DUPONT", "Hélène", "K+ 5.9")


class BrokenTransport(MailboxTransport):
    """A transport with a bug that quotes the data it was handling."""

    def send(self, envelope: Envelope) -> SendResult:
        raise RuntimeError(LEAK)


class BrokenSigners(SignerRegistry):
    """A signing step with the same kind of bug (raised while sealing, chained to a cause
    that quotes the value too)."""

    def for_laboratory(self, laboratory: str) -> Signer:
        try:
            raise ValueError(f"cannot encode {LEAK}")
        except ValueError as error:
            raise RuntimeError(LEAK) from error


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("LABDISPATCH_DEBUG", raising=False)
    caplog.set_level(logging.DEBUG)
    return ""


def assert_no_leak(caplog: pytest.LogCaptureFixture) -> None:
    # Both what a handler would print (message and any traceback) and the raw records.
    assert not [part for part in LEAKED_PARTS if part in caplog.text]
    for record in caplog.records:
        assert record.exc_info is None and record.exc_text is None


def test_a_transport_raising_with_a_patient_value_logs_its_type_and_the_delivery_only(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    caplog: pytest.LogCaptureFixture,
    logs: str,
    tmp_path: Path,
) -> None:
    services.factories = {**services.factories, "mail": lambda: BrokenTransport(tmp_path)}
    (delivery_id,) = sealed(ledger, services, oru("LOG-1", ordering=ADAM_XCN, copy_to=""))

    report = send_stage(ledger, [delivery_id], services)

    assert dict(report.states) == {"retrying": 1}
    assert f"sending delivery {delivery_id} failed (RuntimeError)" in caplog.text
    assert_no_leak(caplog)


def test_a_sealer_raising_with_a_patient_value_logs_its_type_and_the_delivery_only(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    caplog: pytest.LogCaptureFixture,
    logs: str,
) -> None:
    services.signers = BrokenSigners(services.signers.settings)
    routed = route_stage(
        ledger, received(ledger, services, oru("LOG-2", ordering=ADAM_XCN, copy_to="")), services
    )
    (delivery_id,) = routed.next_ids

    report = seal_stage(ledger, routed.next_ids, services)

    assert dict(report.states) == {"failed": 1}
    assert f"sealing delivery {delivery_id} failed (RuntimeError <- ValueError)" in caplog.text
    assert_no_leak(caplog)


def test_the_one_shot_dispatcher_logs_no_patient_value_either(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    caplog: pytest.LogCaptureFixture,
    logs: str,
    tmp_path: Path,
) -> None:
    """`labdispatch deliver` runs `dispatch_due`: sealing, then sending, both breaking."""
    good_signers = services.signers
    services.signers = BrokenSigners(good_signers.settings)
    route_stage(
        ledger, received(ledger, services, oru("LOG-3", ordering=ADAM_XCN, copy_to="")), services
    )
    assert dict(dispatch_due(ledger, services).states) == {"failed": 1}

    services.signers = good_signers
    services.factories = {**services.factories, "mail": lambda: BrokenTransport(tmp_path)}
    route_stage(
        ledger, received(ledger, services, oru("LOG-4", ordering=ADAM_XCN, copy_to="")), services
    )
    assert dict(dispatch_due(ledger, services).states) == {"retrying": 1}

    assert "sealing delivery" in caplog.text and "sending delivery" in caplog.text
    assert_no_leak(caplog)


def test_under_debug_the_traceback_shows_where_without_the_values(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    caplog: pytest.LogCaptureFixture,
    logs: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("LABDISPATCH_DEBUG", "1")
    services.factories = {**services.factories, "mail": lambda: BrokenTransport(tmp_path)}
    (delivery_id,) = sealed(ledger, services, oru("LOG-5", ordering=ADAM_XCN, copy_to=""))

    send_stage(ledger, [delivery_id], services)

    assert "traceback without values" in caplog.text
    assert "in send" in caplog.text and "raise RuntimeError(LEAK)" in caplog.text
    assert_no_leak(caplog)
