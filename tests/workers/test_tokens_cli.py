"""`labdispatch tokens create|list|revoke`: the secret shown once, only its hash kept."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from pipeline.access.models import ApiToken
from pipeline.access.tokens import authenticate
from pipeline.db import open_database
from pipeline.settings import Settings
from workers.cli import main


def _create(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    assert main(["tokens", "create", *args]) == 0
    out, err = capsys.readouterr()
    return out, err


def test_create_prints_the_secret_alone_once_and_stores_only_its_hash(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = _create(capsys, "--lab", "LABO-A", "--label", "LIS of lab A")

    secret = out.strip()
    assert out == secret + "\n" and secret.startswith("ldt_")
    assert err.startswith("labdispatch: token #1 (lab LABO-A) created.")
    assert "not stored" in err and secret not in err
    sessions = open_database(Settings.from_env())
    with sessions() as session:
        (token,) = session.scalars(select(ApiToken)).all()
        caller = authenticate(session, secret)
    assert token.token_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert (token.role, token.laboratory, token.label) == ("lab", "LABO-A", "LIS of lab A")
    assert caller is not None and caller.describe() == "token #1 (lab LABO-A)"


@pytest.mark.parametrize(
    "args",
    [
        [],  # neither --lab nor --role
        ["--lab", "LABO-A", "--role", "ops"],  # both
        ["--role", "lab"],  # a lab token names its laboratory
        ["--role", "root"],
    ],
)
def test_create_wants_exactly_one_of_lab_or_a_wide_role(
    cli_env: str, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["tokens", "create", *args])

    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_list_shows_what_identifies_a_token_and_never_a_secret_or_hash(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lab_secret, _ = _create(capsys, "--lab", "LABO-A")
    ops_secret, _ = _create(capsys, "--role", "ops", "--label", "Grafana")
    assert main(["tokens", "revoke", "1"]) == 0
    capsys.readouterr()

    assert main(["tokens", "list"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "ROLE", "LAB", "LABEL", "CREATED", "REVOKED"]
    first, second = (line.split() for line in lines[1:])
    assert first[:4] == ["1", "lab", "LABO-A", "-"] and first[-1] != "-"  # revoked, when
    assert second[:4] == ["2", "ops", "-", "Grafana"] and second[-1] == "-"
    text = "\n".join(lines)
    for secret in (lab_secret.strip(), ops_secret.strip()):
        assert secret not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text


def test_a_revoked_token_no_longer_authenticates(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = _create(capsys, "--role", "billing")[0].strip()

    status = main(["tokens", "revoke", "1"])

    assert status == 0
    assert "token #1 revoked" in capsys.readouterr().out
    with open_database(Settings.from_env())() as session:
        assert authenticate(session, secret) is None


def test_revoking_an_unknown_token_says_so(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["tokens", "revoke", "99"])

    assert status == 2
    assert capsys.readouterr().err == "labdispatch: no token #99\n"
