"""Settings from LABDISPATCH_* variables: embedded defaults, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings


def test_nothing_set_means_everything_under_var() -> None:
    settings = Settings.from_env({})

    assert settings.database_url == "sqlite:///var/labdispatch.db"
    assert settings.storage_key_path == Path("var/storage.key")
    assert settings.outbox_path == Path("var/outbox")
    assert settings.mailbox_root_path == Path("var/mailboxes")
    assert settings.receipts_maildir_path == Path("var/receipts")
    assert settings.smtp.host == ""  # no relay: mail waits in the outbox


def test_delivery_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "LABDISPATCH_SMTP_HOST": "relay.example",
            "LABDISPATCH_SMTP_PORT": "587",
            "LABDISPATCH_SMTP_TLS": "starttls",
            "LABDISPATCH_SMTP_PASSWORD_FILE": "/run/secrets/smtp",
            "LABDISPATCH_SIGNING_PKCS12": "/etc/labdispatch/lab.p12",
            "LABDISPATCH_STORAGE_KEY_FILE": "/etc/labdispatch/storage.key",
            "LABDISPATCH_MAIL_FROM": "resultats@labo.example",
        }
    )

    assert (settings.smtp.host, settings.smtp.port, settings.smtp.tls) == (
        "relay.example",
        587,
        "starttls",
    )
    assert settings.smtp.password_file == Path("/run/secrets/smtp")
    assert settings.signing.pkcs12 == Path("/etc/labdispatch/lab.p12")
    assert settings.storage_key_path == Path("/etc/labdispatch/storage.key")
    assert settings.mail_from == "resultats@labo.example"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("LABDISPATCH_SMTP_PORT", "twenty-five", "SMTP_PORT must be a whole number"),
        ("LABDISPATCH_SMTP_PORT", "-1", "SMTP_PORT must be positive"),
        ("LABDISPATCH_SMTP_TLS", "maybe", "SMTP_TLS must be one of"),
        ("LABDISPATCH_HTTPS_TIMEOUT", "soon", "HTTPS_TIMEOUT must be a number"),
    ],
)
def test_unusable_values_are_named(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        Settings.from_env({name: value})


def test_only_production_results_are_delivered_unless_said_otherwise() -> None:
    assert Settings.from_env({}).processing_ids == ("P",)
    assert Settings.from_env({"LABDISPATCH_DELIVER_PROCESSING_IDS": "p, t"}).processing_ids == (
        "P",
        "T",
    )
    with pytest.raises(ConfigurationError, match="among P, T, D"):
        Settings.from_env({"LABDISPATCH_DELIVER_PROCESSING_IDS": "P,X"})


def test_mllp_listener_bounds_have_defaults_and_are_read_from_the_environment() -> None:
    defaults = Settings.from_env({}).service
    assert (
        defaults.mllp_max_connections,
        defaults.mllp_max_connections_per_peer,
        defaults.mllp_frame_timeout,
        defaults.mllp_idle_timeout,
        defaults.mllp_buffer_bytes,
    ) == (500, 50, 300.0, 3600.0, 256 * 1024 * 1024)
    service = Settings.from_env(
        {
            "LABDISPATCH_MLLP_MAX_CONNECTIONS": "40",
            "LABDISPATCH_MLLP_MAX_CONNECTIONS_PER_PEER": "4",
            "LABDISPATCH_MLLP_FRAME_TIMEOUT": "2.5",
            "LABDISPATCH_MLLP_IDLE_TIMEOUT": "60",
            "LABDISPATCH_MLLP_BUFFER_BYTES": "1048576",
        }
    ).service
    assert (
        service.mllp_max_connections,
        service.mllp_max_connections_per_peer,
        service.mllp_frame_timeout,
        service.mllp_idle_timeout,
        service.mllp_buffer_bytes,
    ) == (40, 4, 2.5, 60.0, 1048576)
    with pytest.raises(ConfigurationError, match="MLLP_IDLE_TIMEOUT must be positive"):
        Settings.from_env({"LABDISPATCH_MLLP_IDLE_TIMEOUT": "0"})
