"""Delivery to a recipient's HTTPS endpoint: mutual TLS, the envelope as the body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.deliver import dispatch_due
from pipeline.delivery.intake import accept_bytes
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Delivery
from pipeline.recipients.directory_csv import import_directory
from pipeline.sealing.demo_pki import DemoPki
from pipeline.transports.https import HttpsConfig, HttpsTransport
from tests.https_endpoint import (
    CLIENT_COMMON_NAME,
    HttpsEndpoint,
    Pki,
    make_tls_pki,
    running_endpoint,
)
from tests.pipeline.delivery.conftest import BERNARD, BERNARD_XCN
from tests.pipeline.delivery.scenario import oru
from tests.pipeline.sealing.helpers import attachments, open_envelope


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_tls_pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def endpoint(tls: Pki) -> Iterator[HttpsEndpoint]:
    with running_endpoint(tls) as server:
        yield server


def equip_bernard(ledger: sessionmaker[Session], pki: DemoPki, url: str, tmp_path: Path) -> None:
    """Dr Bernard in the directory, receiving at `url`."""
    row = tmp_path / "bernard.csv"
    row.write_text(
        "key,kind,name,identifiers,channels,certificate\n"
        f"{BERNARD},clinician,BERNARD Luc,RPPS:10000000003,https:{url},"
        f"{pki.recipients[BERNARD][0]}\n",
        encoding="utf-8",
    )
    with ledger.begin() as session:
        assert not import_directory(session, row).errors


def send_one(
    ledger: sessionmaker[Session], services: DeliveryServices, tls: Pki, control_id: str
) -> Delivery:
    services.factories = {
        **services.factories,
        "https": lambda: HttpsTransport(
            HttpsConfig(
                client_certificate=tls.client_cert, client_key=tls.client_key, ca_file=tls.ca
            )
        ),
    }
    with ledger.begin() as session:
        accept_bytes(session, oru(control_id, ordering=BERNARD_XCN, copy_to=""), services,
                     source="t")  # fmt: skip
    dispatch_due(ledger, services)
    with ledger() as session:
        delivery = session.scalars(select(Delivery)).one()
        _ = delivery.attempt_log
        return delivery


def test_an_https_recipient_gets_the_envelope_over_mutual_tls(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    pki: DemoPki,
    tls: Pki,
    endpoint: HttpsEndpoint,
    tmp_path: Path,
) -> None:
    equip_bernard(ledger, pki, f"{endpoint.url}/inbox", tmp_path)

    delivery = send_one(ledger, services, tls, "H-1")

    assert delivery.state == "delivered"
    (post,) = endpoint.posts
    assert post.client_common_name == CLIENT_COMMON_NAME  # the laboratory authenticated
    assert post.headers["Idempotency-Key"] == delivery.envelope_message_id
    assert post.body == delivery.envelope
    opened = open_envelope(post.body, *pki.recipients[BERNARD], pki.ca_certificate)
    assert attachments(opened)["H-1.hl7"][1] == oru("H-1", ordering=BERNARD_XCN, copy_to="")
    assert delivery.attempt_log[0].evidence.startswith("201 ")


@pytest.mark.parametrize(("status", "state"), [(503, "retrying"), (404, "failed")])
def test_the_endpoints_answer_decides_retry_or_failure(
    ledger: sessionmaker[Session],
    services: DeliveryServices,
    pki: DemoPki,
    tls: Pki,
    endpoint: HttpsEndpoint,
    tmp_path: Path,
    status: int,
    state: str,
) -> None:
    equip_bernard(ledger, pki, f"{endpoint.url}/status/{status}", tmp_path)

    delivery = send_one(ledger, services, tls, f"H-{status}")

    assert delivery.state == state
    assert delivery.last_error.startswith(f"{status} ") or f": {status} " in delivery.last_error
