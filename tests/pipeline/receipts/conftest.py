"""A private Dovecot IMAP server for the receipt-source tests, one per test session.

It runs from its own dovecot.conf in a temp dir (port, Maildir, logs, pid and sockets all
there), so it neither needs nor touches a system-wide Dovecot. It listens on 127.0.0.1
twice: plain IMAP with STARTTLS, and IMAPS, with a certificate from a throwaway CA the
tests trust through `ca_file`. Run as root, the master stays root (it must, to switch
users), logins run as `dovenull` and mail access as `dovecot`, the Debian package's
unprivileged users; run as anyone else, everything runs as that user.

A missing Dovecot fails the IMAP tests with what to do: skipping them would let a broken
IMAP source through unnoticed.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import FIXTURES

RECEIPT_FIXTURES = FIXTURES / "receipts"

IMAP_USER = "labreceipts"
#: The test user's password; tests check it never shows up in error messages.
IMAP_PASSWORD = "Tr0ub4dor-receipts-only-in-tests"


@dataclass
class Dovecot:
    """A running private Dovecot and how to put mail in front of it."""

    root: Path
    config: Path
    imap_port: int
    imaps_port: int
    ca_file: Path
    maildir: Path
    mail_uid: int
    mail_gid: int
    host: str = "127.0.0.1"
    username: str = IMAP_USER
    password: str = IMAP_PASSWORD
    _names: Iterator[int] = field(default_factory=itertools.count)

    def new_mailbox(self) -> str:
        """A fresh, empty mailbox (a Maildir++ folder), so tests never see each other's mail."""
        name = f"test{next(self._names)}"
        self._make_maildir(self.maildir / f".{name}")
        return name

    def folder(self, mailbox: str) -> Path:
        return self.maildir if mailbox == "INBOX" else self.maildir / f".{mailbox}"

    def deliver(self, mailbox: str, data: bytes) -> None:
        """Drop a mail into the mailbox's new/ as an MDA would: written in tmp/, renamed."""
        folder = self.folder(mailbox)
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(self._names)}.labdispatch-test"
        temporary = folder / "tmp" / name
        temporary.write_bytes(data)
        self._own(temporary)
        temporary.rename(folder / "new" / name)

    def kick(self) -> None:
        """Disconnect every session of the test user, as an admin or a restart would."""
        doveadm = [shutil.which("doveadm") or "/usr/bin/doveadm", "-c", str(self.config)]
        subprocess.run([*doveadm, "kick", self.username], capture_output=True, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # gone once `who` no longer lists the user
            who = subprocess.run([*doveadm, "who"], capture_output=True, text=True, timeout=10)
            if self.username not in who.stdout:
                return
            time.sleep(0.05)
        raise AssertionError(f"doveadm kick did not disconnect {self.username}")

    def _make_maildir(self, path: Path) -> None:
        for sub in ("", "cur", "new", "tmp"):
            (path / sub).mkdir(exist_ok=True)
            self._own(path / sub)

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.mail_uid, self.mail_gid)


def _dovecot_binary() -> str:
    found = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None
    )
    if found is None:
        pytest.fail(
            "Dovecot is not installed, and the IMAP receipt tests run against a real one. "
            "Run scripts/services (as root it installs Debian's dovecot-imapd and keeps the "
            "system service off), or install dovecot-imapd yourself.",
            pytrace=False,
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_certificates(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost; returns the CA."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labdispatch test IMAP CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / "server.key").chmod(0o600)
    return folder / "ca.pem"


def _users() -> tuple[str, str, int, int]:
    """(internal user, login user, mail uid, mail gid) for the private instance."""
    if os.geteuid() == 0:
        try:
            internal = pwd.getpwnam("dovecot")
            login = pwd.getpwnam("dovenull")
        except KeyError:
            pytest.fail(
                "the dovecot / dovenull users are missing: reinstall dovecot-core "
                "(scripts/services installs it)",
                pytrace=False,
            )
        return internal.pw_name, login.pw_name, internal.pw_uid, internal.pw_gid
    me = pwd.getpwuid(os.getuid())
    return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid


def _config(root: Path, imap_port: int, imaps_port: int) -> tuple[Path, int, int]:
    internal, login, uid, gid = _users()
    home = root / "home" / IMAP_USER
    (root / "users").write_text(f"{IMAP_USER}:{{PLAIN}}{IMAP_PASSWORD}:{uid}:{gid}::{home}::\n")
    config = root / "dovecot.conf"
    config.write_text(
        f"""# Private Dovecot for labdispatch's receipt tests; nothing outside {root}.
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
default_internal_user = {internal}
default_internal_group = {grp.getgrgid(pwd.getpwnam(internal).pw_gid).gr_name}
default_login_user = {login}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
ssl = yes
ssl_cert = <{root}/server.pem
ssl_key = <{root}/server.key
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
# A refused login answers at once, and does not slow down the next test's login.
auth_failure_delay = 0
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""
    )
    return config, uid, gid


def _wait_for_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.05)
    return False


def _stop(master: subprocess.Popen[bytes]) -> None:
    """Stop the master we started (it takes its children down with it)."""
    if master.poll() is None:
        master.terminate()
        try:
            master.wait(timeout=10)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    binary = _dovecot_binary()
    # Not under pytest's tmp_path: that is private to our user (0700), and Dovecot's
    # unprivileged processes must reach the Maildir; a short path also keeps the unix
    # sockets under their length limit.
    root = Path(tempfile.mkdtemp(prefix="ld-imap-"))
    root.chmod(0o755)
    try:
        ca_file = _write_certificates(root)
        imap_port, imaps_port = _free_port(), _free_port()
        config, uid, gid = _config(root, imap_port, imaps_port)
        server = Dovecot(
            root=root,
            config=config,
            imap_port=imap_port,
            imaps_port=imaps_port,
            ca_file=ca_file,
            maildir=root / "home" / IMAP_USER / "Maildir",
            mail_uid=uid,
            mail_gid=gid,
        )
        (root / "home").mkdir()
        (root / "home" / IMAP_USER).mkdir()
        server._own(root / "home" / IMAP_USER)
        server._make_maildir(server.maildir)
        # In the foreground (-F), so the master is our child: we know its pid and stop
        # exactly it. Its output goes to a file, never to a pipe nobody reads.
        log = root / "dovecot.log"
        with (root / "dovecot.out").open("wb") as output:
            master = subprocess.Popen(
                [binary, "-F", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 15
            ready = _wait_for_port(imap_port, deadline) and _wait_for_port(imaps_port, deadline)
            if not ready or master.poll() is not None:
                details = (root / "dovecot.out").read_text(errors="replace")
                if log.exists():
                    details += log.read_text(errors="replace")
                pytest.fail(
                    f"the private Dovecot in {root} did not start: {details.strip()[-2000:]}",
                    pytrace=False,
                )
            yield server
        finally:
            _stop(master)
    finally:
        shutil.rmtree(root, ignore_errors=True)
