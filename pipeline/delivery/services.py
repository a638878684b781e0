"""What the delivery steps need, built once from settings: keys, transports, policies, clock.

Tests and benchmarks build `DeliveryServices` directly with their own clock and transports;
commands and workers call `DeliveryServices.from_settings`. Transports are opened lazily
and kept for the life of the object, so a run of envelopes reuses one SMTP connection.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from pipeline.closing import Closing
from pipeline.db import DatabaseUnavailable, first_line, make_engine
from pipeline.delivery.breaker import CircuitBreaker
from pipeline.errors import ConfigurationError, LabdispatchError
from pipeline.ledger.storage import StorageCipher, check_stored_keys, stored_key_ids
from pipeline.sealing.errors import SigningKeyUnavailable
from pipeline.sealing.keys import Signer, load_signer
from pipeline.settings import Settings, SigningSettings, read_secret
from pipeline.transports.base import Transport, TransportConfigurationError
from pipeline.transports.https import HttpsConfig, HttpsTransport
from pipeline.transports.mailbox import MailboxTransport
from pipeline.transports.retry import DEFAULT_POLICIES, RetryPolicy
from pipeline.transports.smtp import SmtpConfig, SmtpTransport

TransportFactory = Callable[[], Transport]

logger = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


class SignerRegistry:
    """The signing key of each laboratory: `<LAB>.p12` or `<LAB>.crt` + `<LAB>.key` in the
    signing directory when present, else the default signer; loaded once, then cached."""

    def __init__(self, settings: SigningSettings) -> None:
        self.settings = settings
        self._cache: dict[str, Signer] = {}

    def for_laboratory(self, laboratory: str) -> Signer:
        signer = self._cache.get(laboratory)
        if signer is None:
            signer = self._load(laboratory)
            self._cache[laboratory] = signer
        return signer

    def _load(self, laboratory: str) -> Signer:
        folder = self.settings.directory
        password = read_secret(self.settings.password_file)
        if folder is not None and _safe_name(laboratory):
            pkcs12 = folder / f"{laboratory}.p12"
            if pkcs12.is_file():
                return load_signer(pkcs12=pkcs12, password=password)
            certificate, key = folder / f"{laboratory}.crt", folder / f"{laboratory}.key"
            if certificate.is_file() and key.is_file():
                return load_signer(certificate=certificate, key=key)
        if self.settings.pkcs12 is not None:
            return load_signer(pkcs12=self.settings.pkcs12, password=password)
        if self.settings.certificate is not None and self.settings.key is not None:
            return load_signer(certificate=self.settings.certificate, key=self.settings.key)
        raise SigningKeyUnavailable(
            f"no signing key for laboratory {laboratory}: set LABDISPATCH_SIGNING_CERT and "
            "LABDISPATCH_SIGNING_KEY (PEM) or LABDISPATCH_SIGNING_PKCS12, or put "
            f"{laboratory}.p12 in LABDISPATCH_SIGNING_DIR"
        )


@dataclass
class DeliveryServices(Closing):
    cipher: StorageCipher
    signers: SignerRegistry
    factories: Mapping[str, TransportFactory]
    mail_from: str = "results@labdispatch.localhost"
    #: MSH-11 processing IDs delivered on this platform (see `Settings.processing_ids`).
    processing_ids: tuple[str, ...] = ("P",)
    policies: Mapping[str, RetryPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    clock: Callable[[], datetime] = utc_now
    rng: random.Random = field(default_factory=random.Random)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    #: Where laboratories are told of given-up deliveries; None: not told (tests, tools).
    notices_dir: Path | None = None
    #: How long a worker owns what it claimed (see `Settings.service.lease_seconds`).
    lease: timedelta = timedelta(minutes=5)
    _open: dict[str, Transport] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryServices:
        settings.ensure_var_dir()
        cipher = storage_cipher(settings)
        return cls(
            cipher=cipher,
            signers=SignerRegistry(settings.signing),
            factories=transport_factories(settings),
            mail_from=settings.mail_from,
            processing_ids=settings.processing_ids,
            breaker=CircuitBreaker(
                failures=settings.service.breaker_failures,
                open_for=timedelta(seconds=settings.service.breaker_open_seconds),
            ),
            notices_dir=settings.notices_path,
            lease=timedelta(seconds=settings.service.lease_seconds),
            policies=retry_policies(settings),
        )

    @property
    def mail_domain(self) -> str:
        return self.mail_from.rpartition("@")[2] or "labdispatch.localhost"

    def transport(self, kind: str) -> Transport:
        """The open transport for a channel kind (raises TransportConfigurationError)."""
        transport = self._open.get(kind)
        if transport is None:
            factory = self.factories.get(kind)
            if factory is None:
                raise TransportConfigurationError(f"no transport for channel kind {kind!r}")
            transport = factory()
            self._open[kind] = transport
        return transport

    def discard(self, kind: str) -> None:
        """Close and forget the transport of a kind; the next use opens a new one."""
        transport = self._open.pop(kind, None)
        if transport is not None:
            with contextlib.suppress(Exception):  # it is being thrown away for misbehaving
                transport.close()

    def policy(self, kind: str) -> RetryPolicy:
        return self.policies.get(kind) or DEFAULT_POLICIES["mail"]

    def close(self) -> None:
        for transport in self._open.values():
            transport.close()
        self._open.clear()


def storage_cipher(settings: Settings) -> StorageCipher:
    """The storage key, checked against the ledger: rows stored under a key id the key file
    does not hold stop the process (`StorageKeyMissing`), and the embedded key is created
    only over a ledger with no encrypted row yet. A ledger that cannot be read now (a
    process may start before its database: the API reports it on /readyz) is not checked,
    with a warning, and no key is created over it."""
    if settings.storage_key_file is None and not settings.uses_embedded_database:
        # A key generated under var/ beside a PostgreSQL ledger would be lost with the
        # host, and every stored message with it: production names its key file.
        raise ConfigurationError(
            "LABDISPATCH_STORAGE_KEY_FILE must name the key that encrypts stored results "
            "when the ledger is not the embedded SQLite file (create one with: "
            "head -c 32 /dev/urandom | base64 > storage.key; chmod 600 storage.key)"
        )
    path = settings.storage_key_path
    create = settings.storage_key_file is None and not path.exists()
    engine = make_engine(settings)
    stored: set[str] | None
    try:
        with engine.connect() as connection:
            stored = stored_key_ids(connection)
    except SQLAlchemyError as error:
        stored = None
        reason = first_line(getattr(error, "orig", None) or error)
        if create:
            raise DatabaseUnavailable(
                f"cannot read the ledger ({reason}), so no storage key is created for it: "
                f"a ledger holding results would need the key it was stored with ({path})"
            ) from error
        logger.warning("the storage key could not be checked against the ledger: %s", reason)
    finally:
        engine.dispose()
    if create:
        check_stored_keys(stored or set(), None, path)
    cipher = StorageCipher.from_file(path, create=create)
    if stored is not None:
        check_stored_keys(stored, cipher, path)
    return cipher


class StorageKeyIndex:
    """The storage key as the directory uses it (`DirectoryKey`: blind index of a patient's
    INS, sealing of their addresses), read when first needed: only a directory file or a
    look-up with a patient needs the key (docs/directory-csv.md).
    `strict=False` (a read-only tool): without a usable key, patients are looked up by
    their clear INS only (as rows an older version imported), instead of stopping."""

    def __init__(self, settings: Settings, *, strict: bool = True) -> None:
        self.settings = settings
        self.strict = strict
        self._cipher: StorageCipher | None = None
        self._unavailable = False

    def blind_indexes(self, text: str) -> list[str]:
        cipher = self._load()
        return cipher.blind_indexes(text) if cipher is not None else []

    def seal_text(self, text: str, context: str) -> str:
        cipher = self._load()
        if cipher is None:  # only a strict one seals (directory import)
            raise ConfigurationError("no storage key to seal a patient's address with")
        return cipher.seal_text(text, context)

    def _load(self) -> StorageCipher | None:
        if self._cipher is None and not self._unavailable:
            try:
                self._cipher = storage_cipher(self.settings)
            except LabdispatchError:
                if self.strict:
                    raise
                self._unavailable = True
        return self._cipher


def retry_policies(settings: Settings) -> dict[str, RetryPolicy]:
    """The default policy of each channel, with the `LABDISPATCH_RETRY_*` overrides."""
    service = settings.service
    changes: dict[str, Any] = {}
    if service.retry_min_backoff is not None:
        changes["min_backoff"] = timedelta(seconds=service.retry_min_backoff)
    if service.retry_max_backoff is not None:
        changes["max_backoff"] = timedelta(seconds=service.retry_max_backoff)
    if service.retry_max_age is not None:
        changes["max_age"] = timedelta(seconds=service.retry_max_age)
    if service.retry_max_attempts is not None:
        changes["max_attempts"] = service.retry_max_attempts
    policies = {}
    for kind, policy in DEFAULT_POLICIES.items():
        try:
            policies[kind] = replace(policy, **changes)
        except ValueError as error:
            raise ConfigurationError(f"LABDISPATCH_RETRY_* settings: {error}") from None
    return policies


def transport_factories(settings: Settings) -> dict[str, TransportFactory]:
    """One factory per channel kind; each reads its settings when first used, so a missing
    HTTPS client certificate only matters to HTTPS deliveries."""

    def mail() -> Transport:
        smtp = settings.smtp
        if not smtp.host:
            # No relay: queue in a Maildir anyone can inspect (and `openssl cms` can read).
            return MailboxTransport(settings.outbox_path, kind="mail", fixed_folder=".")
        return SmtpTransport(
            SmtpConfig(
                host=smtp.host,
                port=smtp.port,
                tls=smtp.tls,
                username=smtp.username or None,
                password=_read_secret_text(smtp.password_file),
                timeout=smtp.timeout,
                ca_file=smtp.ca_file,
            )
        )

    def mailbox() -> Transport:
        return MailboxTransport(settings.mailbox_root_path)

    def https() -> Transport:
        config = settings.https
        if config.client_certificate is None or config.client_key is None:
            raise TransportConfigurationError(
                "HTTPS delivery needs the laboratory's client certificate: set "
                "LABDISPATCH_HTTPS_CLIENT_CERT and LABDISPATCH_HTTPS_CLIENT_KEY"
            )
        return HttpsTransport(
            HttpsConfig(
                client_certificate=config.client_certificate,
                client_key=config.client_key,
                ca_file=config.ca_file,
                timeout=config.timeout,
            )
        )

    return {"mail": mail, "mailbox": mailbox, "https": https}


def _read_secret_text(path: Path | None) -> str | None:
    secret = read_secret(path)
    return secret.decode() if secret is not None else None


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")
