"""Settings from `LABDISPATCH_*` environment variables, with embedded defaults.

With nothing set, labdispatch runs on one machine with no external service: the ledger is
a SQLite file under `var/` (created on first use), the storage key is generated in
`var/storage.key`, mail with no relay configured is queued in the `var/outbox/` Maildir,
and recipients' mailboxes live under `var/mailboxes/`. Production points
`LABDISPATCH_DATABASE_URL` at PostgreSQL, `LABDISPATCH_SMTP_HOST` at the relay, and names
the laboratory's signing key. Secrets (passwords) are read from files named by `*_FILE`
settings, so they never sit in the environment of every child process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigurationError

PREFIX = "LABDISPATCH_"
SMTP_TLS_MODES = ("opportunistic", "starttls", "implicit", "none")
#: The largest message (MLLP frame, HTTP body, dropped file) any intake takes, in bytes:
#: a result with a few PDF reports is a few MiB. `LABDISPATCH_MAX_MESSAGE_BYTES`.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SigningSettings:
    """Where the laboratories' signing keys are: one default signer, and per-laboratory
    files (`<LAB>.p12`, or `<LAB>.crt` + `<LAB>.key`) in `directory` that take precedence."""

    certificate: Path | None = None
    key: Path | None = None
    pkcs12: Path | None = None
    password_file: Path | None = None
    directory: Path | None = None


@dataclass(frozen=True)
class SmtpSettings:
    host: str = ""  # empty: no relay, mail is queued in the outbox folder
    port: int = 25
    tls: str = "opportunistic"
    username: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class HttpsSettings:
    client_certificate: Path | None = None
    client_key: Path | None = None
    ca_file: Path | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class ReceiptSettings:
    maildir: Path | None = None
    imap_host: str = ""
    imap_port: int = 993
    imap_tls: str = "implicit"
    imap_username: str = ""
    imap_password_file: Path | None = None
    imap_mailbox: str = "INBOX"
    imap_ca_file: Path | None = None


@dataclass(frozen=True)
class ServiceSettings:
    """How the long-running processes run: the broker, the MLLP listener, the HTTP API, the
    work cycle."""

    #: Celery broker; empty: an embedded Redis server the program starts under var/broker/.
    broker_url: str = ""
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    #: Bounds on what one sender can hold of the MLLP listener (far above any real LIS):
    #: connections in all and from one address, seconds a frame may take once begun, seconds
    #: a connection may stay without a frame, and bytes of unanswered frames held in all.
    mllp_max_connections: int = 500
    mllp_max_connections_per_peer: int = 50
    mllp_frame_timeout: float = 300.0
    mllp_idle_timeout: float = 3600.0
    mllp_buffer_bytes: int = 256 * 1024 * 1024
    #: Where `labdispatch api serve` listens (the HTTP API, /metrics and the dashboard).
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: Deliveries (or messages) per task: per-task overhead must not dominate.
    batch_size: int = 100
    #: How long a worker owns the deliveries it claimed; a killed worker's claim runs out
    #: after this, and reconcile hands the work to another.
    lease_seconds: float = 300.0
    #: Open work not finished this long after it was queued is queued again by reconcile
    #: (the broker lost it: Redis flushed or restarted without its data).
    requeue_after: float = 120.0
    #: How often the periodic jobs run (retry sweep, reconcile, receipts).
    reconcile_interval: float = 30.0
    #: Failures in a row that open a destination's circuit, and how long it stays open.
    breaker_failures: int = 5
    breaker_open_seconds: float = 60.0
    #: Overrides of every channel's retry policy (`pipeline.transports.retry`); None: the
    #: channel's default. Seconds, except the attempt count.
    retry_min_backoff: float | None = None
    retry_max_backoff: float | None = None
    retry_max_age: float | None = None
    retry_max_attempts: int | None = None
    #: Seconds a statistics report may run (each statement on PostgreSQL); beyond, it is
    #: stopped and the caller told to ask for less: a slow report never holds a core, a
    #: connection or the API's shutdown for long.
    stats_timeout: float = 60.0
    #: Seconds `api serve` waits for calls in flight after SIGTERM before cutting them.
    api_shutdown_timeout: float = 10.0


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str
    storage_key_file: Path | None = None
    #: From, return path (DSNs) and Disposition-Notification-To (MDNs) of every envelope.
    mail_from: str = "results@labdispatch.localhost"
    #: MSH-11 processing IDs whose results are delivered; others are recorded and held, so
    #: a training (T) or debugging (D) message never reaches a real clinician by default.
    processing_ids: tuple[str, ...] = ("P",)
    mailbox_root: Path | None = None
    outbox_dir: Path | None = None
    signing: SigningSettings = field(default_factory=SigningSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    https: HttpsSettings = field(default_factory=HttpsSettings)
    receipts: ReceiptSettings = field(default_factory=ReceiptSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    #: Where a laboratory is told of deliveries given up (`<dir>/<LAB>/`).
    notices_dir: Path | None = None
    #: The one size limit of every intake (MLLP frame, HTTP body, dropped file), in bytes.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        read = _Reader(env)
        var_dir = Path(env.get(PREFIX + "VAR_DIR", "var"))
        database_url = read.text("DATABASE_URL")
        if not database_url:
            database_url = f"sqlite:///{var_dir / 'labdispatch.db'}"
        if "://" not in database_url:
            raise ConfigurationError(
                f"{PREFIX}DATABASE_URL must be a URL such as "
                "postgresql+psycopg://user@host/db or sqlite:///path.db"
            )
        smtp_tls = read.text("SMTP_TLS") or "opportunistic"
        if smtp_tls not in SMTP_TLS_MODES:
            raise ConfigurationError(
                f"{PREFIX}SMTP_TLS must be one of {', '.join(SMTP_TLS_MODES)}, not {smtp_tls!r}"
            )
        return cls(
            var_dir=var_dir,
            database_url=database_url,
            storage_key_file=read.path("STORAGE_KEY_FILE"),
            mail_from=read.text("MAIL_FROM") or cls.mail_from,
            processing_ids=read.processing_ids("DELIVER_PROCESSING_IDS"),
            mailbox_root=read.path("MAILBOX_ROOT"),
            outbox_dir=read.path("OUTBOX_DIR"),
            signing=SigningSettings(
                certificate=read.path("SIGNING_CERT"),
                key=read.path("SIGNING_KEY"),
                pkcs12=read.path("SIGNING_PKCS12"),
                password_file=read.path("SIGNING_PASSWORD_FILE"),
                directory=read.path("SIGNING_DIR"),
            ),
            smtp=SmtpSettings(
                host=read.text("SMTP_HOST"),
                port=read.integer("SMTP_PORT", 25),
                tls=smtp_tls,
                username=read.text("SMTP_USERNAME"),
                password_file=read.path("SMTP_PASSWORD_FILE"),
                ca_file=read.path("SMTP_CA_FILE"),
                timeout=read.number("SMTP_TIMEOUT", 30.0),
            ),
            https=HttpsSettings(
                client_certificate=read.path("HTTPS_CLIENT_CERT"),
                client_key=read.path("HTTPS_CLIENT_KEY"),
                ca_file=read.path("HTTPS_CA_FILE"),
                timeout=read.number("HTTPS_TIMEOUT", 30.0),
            ),
            receipts=ReceiptSettings(
                maildir=read.path("RECEIPTS_MAILDIR"),
                imap_host=read.text("RECEIPTS_IMAP_HOST"),
                imap_port=read.integer("RECEIPTS_IMAP_PORT", 993),
                imap_tls=read.text("RECEIPTS_IMAP_TLS") or "implicit",
                imap_username=read.text("RECEIPTS_IMAP_USERNAME"),
                imap_password_file=read.path("RECEIPTS_IMAP_PASSWORD_FILE"),
                imap_mailbox=read.text("RECEIPTS_IMAP_MAILBOX") or "INBOX",
                imap_ca_file=read.path("RECEIPTS_IMAP_CA_FILE"),
            ),
            service=ServiceSettings(
                broker_url=read.text("BROKER_URL"),
                mllp_host=read.text("MLLP_HOST") or ServiceSettings.mllp_host,
                mllp_port=read.integer("MLLP_PORT", ServiceSettings.mllp_port),
                mllp_max_connections=read.integer(
                    "MLLP_MAX_CONNECTIONS", ServiceSettings.mllp_max_connections
                ),
                mllp_max_connections_per_peer=read.integer(
                    "MLLP_MAX_CONNECTIONS_PER_PEER", ServiceSettings.mllp_max_connections_per_peer
                ),
                mllp_frame_timeout=read.number(
                    "MLLP_FRAME_TIMEOUT", ServiceSettings.mllp_frame_timeout
                ),
                mllp_idle_timeout=read.number(
                    "MLLP_IDLE_TIMEOUT", ServiceSettings.mllp_idle_timeout
                ),
                mllp_buffer_bytes=read.integer(
                    "MLLP_BUFFER_BYTES", ServiceSettings.mllp_buffer_bytes
                ),
                api_host=read.text("API_HOST") or ServiceSettings.api_host,
                api_port=read.integer("API_PORT", ServiceSettings.api_port),
                batch_size=read.integer("BATCH_SIZE", ServiceSettings.batch_size),
                lease_seconds=read.number("LEASE_SECONDS", ServiceSettings.lease_seconds),
                requeue_after=read.number("REQUEUE_AFTER", ServiceSettings.requeue_after),
                reconcile_interval=read.number(
                    "RECONCILE_INTERVAL", ServiceSettings.reconcile_interval
                ),
                breaker_failures=read.integer("BREAKER_FAILURES", ServiceSettings.breaker_failures),
                breaker_open_seconds=read.number(
                    "BREAKER_OPEN_SECONDS", ServiceSettings.breaker_open_seconds
                ),
                retry_min_backoff=read.optional_number("RETRY_MIN_BACKOFF"),
                retry_max_backoff=read.optional_number("RETRY_MAX_BACKOFF"),
                retry_max_age=read.optional_number("RETRY_MAX_AGE"),
                retry_max_attempts=read.integer("RETRY_MAX_ATTEMPTS", 0) or None,
                stats_timeout=read.number("STATS_TIMEOUT", ServiceSettings.stats_timeout),
                api_shutdown_timeout=read.number(
                    "API_SHUTDOWN_TIMEOUT", ServiceSettings.api_shutdown_timeout
                ),
            ),
            notices_dir=read.path("NOTICES_DIR"),
            max_message_bytes=read.integer("MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES),
        )

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")

    def ensure_var_dir(self) -> Path:
        """Create `var/` on first use so the embedded default needs no set-up step; it and
        the service's files in it are readable by the service alone (`ledger.files`)."""
        from pipeline.ledger.files import secure_var_dir

        return secure_var_dir(self.var_dir)

    @property
    def storage_key_path(self) -> Path:
        return self.storage_key_file or self.var_dir / "storage.key"

    @property
    def mailbox_root_path(self) -> Path:
        return self.mailbox_root or self.var_dir / "mailboxes"

    @property
    def outbox_path(self) -> Path:
        """Where mail waits when no relay is configured (a Maildir anyone can inspect)."""
        return self.outbox_dir or self.var_dir / "outbox"

    @property
    def notices_path(self) -> Path:
        return self.notices_dir or self.var_dir / "notices"

    @property
    def broker_dir(self) -> Path:
        """Where the embedded broker keeps its socket, pid file and data."""
        return self.var_dir / "broker"

    @property
    def receipts_maildir_path(self) -> Path:
        return self.receipts.maildir or self.var_dir / "receipts"


def max_message_bytes(env: Mapping[str, str] | None = None) -> int:
    """`LABDISPATCH_MAX_MESSAGE_BYTES` alone, for limits fixed when a module loads (the MLLP
    frame and HTTP body defaults). A value that is not a positive whole number gives the
    default here; `Settings.from_env`, which every command reads first, refuses it."""
    try:
        return _Reader(os.environ if env is None else env).integer(
            "MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES
        )
    except ConfigurationError:
        return DEFAULT_MAX_MESSAGE_BYTES


def read_secret(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the secret file {path}: {error.strerror or type(error).__name__}"
        ) from error


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str:
        return self.env.get(PREFIX + name, "").strip()

    def path(self, name: str) -> Path | None:
        value = self.text(name)
        return Path(value).expanduser() if value else None

    def integer(self, name: str, default: int) -> int:
        value = self.text(name)
        if not value:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigurationError(
                f"{PREFIX}{name} must be a whole number, not {value!r}"
            ) from None
        if number <= 0:
            raise ConfigurationError(f"{PREFIX}{name} must be positive, not {value!r}")
        return number

    def processing_ids(self, name: str) -> tuple[str, ...]:
        value = self.text(name)
        if not value:
            return ("P",)
        ids = tuple(part.strip().upper() for part in value.split(",") if part.strip())
        unknown = [part for part in ids if part not in ("P", "T", "D")]
        if unknown or not ids:
            raise ConfigurationError(
                f"{PREFIX}{name} must list processing IDs among P, T, D (e.g. P or P,T), "
                f"not {value!r}"
            )
        return ids

    def optional_number(self, name: str) -> float | None:
        return self.number(name, 0.0) if self.text(name) else None

    def number(self, name: str, default: float) -> float:
        value = self.text(name)
        if not value:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigurationError(f"{PREFIX}{name} must be a number, not {value!r}") from None
        if number <= 0:
            raise ConfigurationError(f"{PREFIX}{name} must be positive, not {value!r}")
        return number


def debug_enabled(env: Mapping[str, str] | None = None) -> bool:
    """`LABDISPATCH_DEBUG=1`: a developer asked for tracebacks (still never an exception's
    text in a log line written by `pipeline.logsafe`)."""
    return (os.environ if env is None else env).get(PREFIX + "DEBUG", "").strip() == "1"
