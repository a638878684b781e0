"""The delivery tests' world: a test PKI, a directory holding its certificates, a real SMTP
relay and Maildirs, and a clock the test moves (retries are scheduled in the future)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import migrate, session_factory
from pipeline.delivery.intake import Inbound, accept_batch
from pipeline.delivery.route import route_stage
from pipeline.delivery.seal import seal_stage
from pipeline.delivery.services import DeliveryServices, SignerRegistry
from pipeline.ledger.storage import StorageCipher
from pipeline.recipients.directory_csv import import_directory
from pipeline.sealing.demo_pki import DemoPki, create_demo_pki
from pipeline.settings import SigningSettings
from pipeline.transports.mailbox import MailboxTransport
from pipeline.transports.smtp import SmtpConfig, SmtpTransport
from tests.smtp_relay import Relay

#: The ANS biology report sample: Dr Adam Hoda (RPPS) in copy, the patient (INS) asked for a
#: copy, and Dr Eva Blue ordering, named without an identifier (so: unroutable).
CORPUS_RESULT = "ans__oru_cr_bio_init_v2.1.hl7"
ADAM = "adam.hoda"
ADAM_MAIL = "adam.hoda@hoda.mssante.example"
PATIENT = "dominique.pat"
SHORT_LIVED = "short.lived"  # a certificate valid for one day
SHORT_LIVED_MAIL = "pierre.court@court.mssante.example"
BERNARD = "luc.bernard"  # receives over HTTPS (see test_https_delivery.py)
BERNARD_XCN = "810000000003^BERNARD^Luc^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
UNEQUIPPED = "no.certificate"
UNEQUIPPED_MAIL = "sans.certificat@cabinet.example"
IDNPS = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"
#: How each appears in ORC-12 / OBR-16 / OBR-28 (IDNPS = 8 + RPPS).
ADAM_XCN = f"801234567897^HODA^Adam^^^DR^^^{IDNPS}^D^^^IDNPS"
SHORT_LIVED_XCN = f"810000000001^COURT^Pierre^^^DR^^^{IDNPS}^D^^^IDNPS"
UNEQUIPPED_XCN = f"810000000002^SANS^Certificat^^^DR^^^{IDNPS}^D^^^IDNPS"
MAIL_FROM = "results@labdispatch.test"


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    folder = tmp_path_factory.mktemp("pki")
    create_demo_pki(folder, {SHORT_LIVED: None}, days=1)
    return create_demo_pki(folder, {ADAM: ADAM_MAIL, PATIENT: None, BERNARD: None})


@pytest.fixture
def ledger(engine: Engine, pki: DemoPki, tmp_path: Path) -> sessionmaker[Session]:
    """A migrated ledger whose directory knows Dr Hoda (mail) and the patient (mailbox)."""
    migrate(engine)
    sessions = session_factory(engine)
    directory = tmp_path / "directory.csv"
    directory.write_text(
        "key,kind,name,identifiers,channels,certificate\n"
        f"{ADAM},clinician,HODA Adam,RPPS:01234567897,mail:{ADAM_MAIL},"
        f"{pki.recipients[ADAM][0]}\n"
        f"{PATIENT},patient,PAT-TROIS Dominique,INS:279035121518989,mailbox:dominique,"
        f"{pki.recipients[PATIENT][0]}\n"
        f"{SHORT_LIVED},clinician,COURT Pierre,RPPS:10000000001,mail:{SHORT_LIVED_MAIL},"
        f"{pki.directory / (SHORT_LIVED + '.crt')}\n"
        f"{UNEQUIPPED},clinician,SANS Certificat,RPPS:10000000002,mail:{UNEQUIPPED_MAIL},\n",
        encoding="utf-8",
    )
    with sessions.begin() as session:
        assert not import_directory(session, directory).errors
    return sessions


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def mailboxes(tmp_path: Path) -> Path:
    return tmp_path / "mailboxes"


@pytest.fixture
def services(
    relay: Relay, pki: DemoPki, clock: Clock, mailboxes: Path
) -> Iterator[DeliveryServices]:
    mailboxes.mkdir(exist_ok=True)
    services = DeliveryServices(
        cipher=StorageCipher.from_key(os.urandom(32)),
        signers=SignerRegistry(SigningSettings(certificate=pki.lab_certificate, key=pki.lab_key)),
        factories={
            "mail": lambda: SmtpTransport(
                SmtpConfig(host="127.0.0.1", port=relay.port, tls="none", timeout=5)
            ),
            "mailbox": lambda: MailboxTransport(mailboxes),
        },
        mail_from=MAIL_FROM,
        clock=clock,
    )
    yield services
    services.close()


# --- driving the service's stages as the workers do ------------------------------------------


def received(
    ledger: sessionmaker[Session], services: DeliveryServices, *results: bytes
) -> list[int]:
    """Record results as the MLLP listener does (one transaction for all); the IDs of those
    accepted, which the route stage is to take."""
    with ledger.begin() as session:
        answers = accept_batch(
            session,
            [Inbound(data, "mllp", "127.0.0.1:40000") for data in results],
            services,
            now=services.clock(),
        )
    return [
        answer.message_id
        for group in answers
        for answer in group
        if answer.to_route and answer.message_id is not None
    ]


def sealed(ledger: sessionmaker[Session], services: DeliveryServices, *results: bytes) -> list[int]:
    """Record, route and seal results; the IDs of the deliveries ready to send."""
    routed = route_stage(ledger, received(ledger, services, *results), services)
    return seal_stage(ledger, routed.next_ids, services).next_ids
