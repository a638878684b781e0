"""Delivery cost, end to end: how fast the synchronous pipeline (no Celery) takes results in
and delivers them, and where the time goes, measured on SQLite and on PostgreSQL.

For each database: a fresh migrated ledger whose directory holds three recipients of a demo
PKI (two on `mail:` channels, one on a `mailbox:` channel), an aiosmtpd relay in a
subprocess that accepts everything, a Maildir root, and the same N distinct ORU^R01 results
(15 segments, each naming one to three of the recipients; by default 5% also carry a
~100 KB Base64 PDF in an OBX ED). Two phases are timed:

- intake: `accept_bytes` for each result, committed per result, as an MLLP listener does
  before it ACKs: results/s, and the median and p95 per result;
- dispatch: `dispatch_due(sessions, services, limit=L)` until nothing is due: deliveries/s.

Inside each phase the wall time is split by timers (perf_counter): SQLAlchemy engine and
session events around every SQL statement and every COMMIT, the transports' `send` (a
wrapper), and `read_results`, `route_message` and `seal_delivery` (wrapped in this process
only, for the run). The split is exclusive: a SELECT run inside sealing counts as SELECT,
not as sealing. "rest" is the phase's wall time less every bucket: ORM bookkeeping, ledger
events, the dispatcher's own Python. The timers cost about a microsecond per statement.

At the end the ledger must hold every mail delivery as accepted and every mailbox one as
delivered, the relay must have received exactly the mail envelopes (count, recipients,
bytes) and the Maildir exactly the mailbox ones; otherwise the script fails.

The relay runs in a subprocess (this file with `--serve`) so that its asyncio loop and the
pipeline do not share one GIL. PostgreSQL runs in a throw-away database created on the
server named by --postgres-url (default LABDISPATCH_TEST_POSTGRES_URL, else
postgres@127.0.0.1) and dropped at the end. The SQLite ledger and the Maildir live in a
temporary folder: set TMPDIR to measure another disk.

    python benchmarks/delivery_cost.py [--results 500] [--database sqlite|postgresql|both]
        [--postgres-url URL] [--limit 500] [--pdf-share 0.05]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from pipeline.closing import Closing
from pipeline.db import make_engine, migrate, safe_url, session_factory
from pipeline.delivery import deliver, intake, record
from pipeline.delivery.record import NEW
from pipeline.delivery.route import route_message
from pipeline.delivery.services import DeliveryServices, SignerRegistry
from pipeline.hl7.intake import read_results
from pipeline.ledger.models import Delivery, Message
from pipeline.ledger.storage import StorageCipher
from pipeline.reading import ReadResult, read_again, read_any
from pipeline.recipients.directory_csv import import_directory
from pipeline.sealing.demo_pki import DemoPki, create_demo_pki
from pipeline.settings import Settings, SigningSettings
from pipeline.transports.base import Envelope, SendResult, Transport
from pipeline.transports.mailbox import MailboxTransport
from pipeline.transports.smtp import SmtpConfig, SmtpTransport
from workers.bench.scratch import postgres_database

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LAB = "LABO-BENCH"
MAIL_FROM = "results@labdispatch.bench"
IDNPS = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"
PDF_BYTES = 75_000  # Base64 makes it ~100 KB in the OBX
SEED = 20261128

# --- the world: recipients, directory, results ------------------------------------------------


@dataclass(frozen=True)
class Person:
    key: str
    name: str
    identifier: str  # as the directory holds it
    xcn: str  # as the laboratory names them in ORC-12, OBR-16, OBR-28
    channel: str  # kind:address

    @property
    def kind(self) -> str:
        return self.channel.partition(":")[0]

    @property
    def address(self) -> str:
        return self.channel.partition(":")[2]


PEOPLE = (
    Person("sophie.martin", "MARTIN Sophie", "RPPS:10001234567",
           f"810001234567^MARTIN^Sophie^^^DR^^^{IDNPS}^D^^^IDNPS",
           "mail:sophie.martin@martin.mssante.example"),
    Person("anne.durand", "DURAND Anne", "RPPS:10007654321",
           f"810007654321^DURAND^Anne^^^DR^^^{IDNPS}^D^^^IDNPS",
           "mail:anne.durand@durand.mssante.example"),
    Person("paul.leroy", "LEROY Paul", "ADELI:751234567",
           f"0751234567^LEROY^Paul^^^DR^^^{IDNPS}^D^^^IDNPS",
           "mailbox:paul.leroy"),
)  # fmt: skip


def write_directory(folder: Path, pki: DemoPki) -> Path:
    lines = ["key,kind,name,identifiers,channels,certificate"]
    for person in PEOPLE:
        certificate = pki.recipients[person.key][0]
        lines.append(
            f"{person.key},clinician,{person.name},{person.identifier},{person.channel},"
            f"{certificate}"
        )
    path = folder / "directory.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment (not MSH) with `fields` at their HL7 positions, empty ones in between."""
    return "|".join([name] + [fields.get(i, "") for i in range(1, max(fields) + 1)])


def oru(number: int, named: Sequence[Person], pdf: bytes | None) -> bytes:
    """MSH, PID, PV1, ORC, OBR and ten OBX (plus an OBX ED with `pdf`); the first person
    named orders (ORC-12, OBR-16), the others get copies (OBR-28)."""
    order, filler = f"CMD-{number}^CAB", f"LAB-{number}^{LAB}"
    ordering = named[0].xcn
    segments = [
        f"MSH|^~\\&|SIL-BENCH|{LAB}|LABDISPATCH|LABDISPATCH|20261128093000||ORU^R01^ORU_R01"
        f"|BENCH-{number:06d}|P|2.5|||||FRA|UNICODE UTF-8",
        seg("PID", {3: "248125612345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS",
                    5: "DUPONT^Hélène", 7: "19481215", 8: "F"}),
        seg("PV1", {1: "1", 2: "O"}),
        seg("ORC", {1: "RE", 2: order, 3: filler, 5: "CM", 9: "202611280715", 12: ordering}),
        seg("OBR", {1: "1", 2: order, 3: filler, 4: "24326-1^Ionogramme^LN", 7: "202611280700",
                    16: ordering, 22: "202611280925", 25: "F",
                    28: "~".join(person.xcn for person in named[1:])}),
    ]  # fmt: skip
    for index in range(1, 11):
        segments.append(
            seg("OBX", {1: str(index), 2: "NM", 3: f"{2950 + index}-2^Analyte {index}^LN",
                        5: str(100 + (number + index) % 50), 6: "mmol/L", 7: "135-145",
                        8: "N", 11: "F", 14: "202611280900"})
        )  # fmt: skip
    if pdf is not None:
        encoded = base64.encodebytes(pdf).decode().rstrip("\n").replace("\n", "\\.br\\")
        segments.append(
            seg("OBX", {1: "11", 2: "ED", 3: "11502-2^CR d'examens biologiques^LN",
                        5: f"^APPLICATION^PDF^Base64^{encoded}", 11: "F"})
        )  # fmt: skip
    return ("\r".join(segments) + "\r").encode("utf-8")


@dataclass(frozen=True)
class Workload:
    results: list[bytes]
    named: list[tuple[Person, ...]]
    with_pdf: int

    @property
    def mail(self) -> Counter[str]:
        """Expected envelopes at the relay, by mail address."""
        return Counter(p.address for named in self.named for p in named if p.kind == "mail")

    @property
    def mailbox(self) -> Counter[str]:
        """Expected envelopes in the Maildirs, by mailbox name."""
        return Counter(p.address for named in self.named for p in named if p.kind == "mailbox")


def make_workload(count: int, pdf_share: float) -> Workload:
    rng = random.Random(SEED)
    with_pdf = set(rng.sample(range(count), round(count * pdf_share)))
    pdf = b"%PDF-1.4\n" + rng.randbytes(PDF_BYTES) + b"\n%%EOF\n"
    named = [tuple(rng.sample(PEOPLE, rng.randint(1, 3))) for _ in range(count)]
    results = [oru(n, named[n], pdf if n in with_pdf else None) for n in range(count)]
    assert len(set(results)) == count
    return Workload(results, named, len(with_pdf))


# --- timers ---------------------------------------------------------------------------------

HL7 = "HL7 read + checks"
ROUTE = "routing: resolve + flush (ORM, less SQL)"
SEAL = "sealing: MIME, sign, encrypt"
SMTP = "send: SMTP to the relay"
MAILDIR = "send: Maildir write + fsync"
SELECT = "ledger: SELECT"
WRITE = "ledger: INSERT/UPDATE/BEGIN/SAVEPOINT"
COMMIT = "ledger: COMMIT"
REST = "rest: record, ORM, ledger events, Python"
BUCKETS = (HL7, ROUTE, SEAL, SMTP, MAILDIR, SELECT, WRITE, COMMIT)


class Stopwatch:
    """Wall time split into buckets; entering a bucket inside another pauses the outer one,
    so each second is counted once."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.counts: Counter[str] = Counter()
        self._stack: list[tuple[str, float]] = []

    def enter(self, bucket: str) -> None:
        now = time.perf_counter()
        if self._stack:
            outer, since = self._stack[-1]
            self.seconds[outer] += now - since
        self._stack.append((bucket, now))
        self.counts[bucket] += 1

    def leave(self, bucket: str) -> None:
        now = time.perf_counter()
        inner, since = self._stack.pop()
        assert inner == bucket, f"timer {bucket!r} left while {inner!r} runs"
        self.seconds[bucket] += now - since
        if self._stack:
            self._stack[-1] = (self._stack[-1][0], now)

    def inside(self, bucket: str) -> bool:
        return bool(self._stack) and self._stack[-1][0] == bucket

    @contextmanager
    def timing(self, bucket: str) -> Iterator[None]:
        self.enter(bucket)
        try:
            yield
        finally:
            self.leave(bucket)

    def reset(self) -> None:
        assert not self._stack
        self.seconds.clear()
        self.counts.clear()


def instrument(engine: Engine, sessions: sessionmaker[Session], watch: Stopwatch) -> None:
    """Times every SQL statement (SELECT apart) and every COMMIT on `engine`."""

    def bucket(statement: str) -> str:
        return SELECT if statement.lstrip()[:6].upper() == "SELECT" else WRITE

    @event.listens_for(engine, "before_cursor_execute")
    def _before(_c: Any, _cu: Any, statement: str, _p: Any, _x: Any, _m: bool) -> None:
        watch.enter(bucket(statement))

    @event.listens_for(engine, "after_cursor_execute")
    def _after(_c: Any, _cu: Any, statement: str, _p: Any, _x: Any, _m: bool) -> None:
        watch.leave(bucket(statement))

    @event.listens_for(engine, "handle_error")
    def _failed(_context: Any) -> None:
        for name in (SELECT, WRITE):
            if watch.inside(name):
                watch.leave(name)

    # From the engine's commit (just before the driver's) to the session's after_commit.
    @event.listens_for(engine, "commit")
    def _commit(_connection: Any) -> None:
        watch.enter(COMMIT)

    @event.listens_for(sessions, "after_commit")
    def _committed(_session: Session) -> None:
        if watch.inside(COMMIT):
            watch.leave(COMMIT)


P = ParamSpec("P")
R = TypeVar("R")


def timed(function: Callable[P, R], watch: Stopwatch, bucket: str) -> Callable[P, R]:
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with watch.timing(bucket):
            return function(*args, **kwargs)

    return run


def timed_reader(
    function: Callable[..., Iterator[ReadResult]], watch: Stopwatch
) -> Callable[..., Iterator[ReadResult]]:
    """`read_any` is a generator: read it whole inside the timer (one message each)."""

    def run(data: bytes, *args: Any) -> Iterator[ReadResult]:
        with watch.timing(HL7):
            results = list(function(data, *args))
        return iter(results)

    return run


@contextmanager
def wrapped(module: ModuleType, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    """Replaces a module global for the duration, in this process only."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


class TimedTransport(Closing):
    """A transport whose `send` is timed; everything else goes to the real one."""

    def __init__(self, inner: Transport, watch: Stopwatch, bucket: str) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.watch = watch
        self.bucket = bucket

    def destination(self, address: str) -> str:
        return self.inner.destination(address)

    def send(self, envelope: Envelope) -> SendResult:
        with self.watch.timing(self.bucket):
            return self.inner.send(envelope)

    def close(self) -> None:
        self.inner.close()


# --- the relay, in its own process -------------------------------------------------------------


def serve() -> None:
    """Runs the relay until stdin closes, then prints what it received as one JSON line."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    class Received:
        def __init__(self) -> None:
            self.connections = 0
            self.messages = 0
            self.bytes = 0
            self.recipients: Counter[str] = Counter()

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages += 1
            self.bytes += len(envelope.original_content)
            self.recipients.update(envelope.rcpt_tos)
            return f"250 2.0.0 Ok: queued as B{self.messages}"

    class CountingController(Controller):
        def factory(self) -> SMTP:
            received.connections += 1
            return SMTP(self.handler, **self.SMTP_kwargs)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    received = Received()
    controller = CountingController(received, hostname="127.0.0.1", port=port)
    controller.start()
    received.connections = 0  # the controller's own start-up probe
    cpu_at_start = time.process_time()  # imports and start-up are not the relay's work
    print(port, flush=True)
    sys.stdin.read()
    controller.stop()
    report = {
        "connections": received.connections,
        "messages": received.messages,
        "bytes": received.bytes,
        "recipients": dict(received.recipients),
        "cpu_seconds": time.process_time() - cpu_at_start,
    }
    print(json.dumps(report), flush=True)


class Relay:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def finish(self) -> dict[str, Any]:
        """Stops the relay; what it received."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        report: dict[str, Any] = json.loads(self.process.stdout.readline())
        self.process.wait(timeout=30)
        return report

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


# --- one database -------------------------------------------------------------------------------


@dataclass
class Phase:
    count: int
    wall: float
    cpu: float
    seconds: dict[str, float]
    counts: Counter[str]
    samples: list[float] = field(default_factory=list)

    def share(self, bucket: str) -> float:
        if bucket == REST:
            return self.wall - sum(self.seconds.values())
        return self.seconds.get(bucket, 0.0)


def database_facts(engine: Engine) -> str:
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            version = connection.execute(text("SELECT sqlite_version()")).scalar_one()
            journal = connection.execute(text("PRAGMA journal_mode")).scalar_one()
            synchronous = connection.execute(text("PRAGMA synchronous")).scalar_one()
            level = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(synchronous, synchronous)
            return f"SQLite {version}, journal_mode={journal}, synchronous={level}"
        settings = [
            f"{name}={connection.execute(text(f'SHOW {name}')).scalar_one()}"
            for name in ("fsync", "synchronous_commit", "wal_sync_method")
        ]
        version = connection.execute(text("SHOW server_version")).scalar_one()
        return f"PostgreSQL {version} at {safe_url(engine.url)}, {', '.join(settings)}"


def run_database(
    label: str, url: str, folder: Path, directory: Path, pki: DemoPki, work: Workload, limit: int
) -> None:
    folder.mkdir(parents=True)
    engine = make_engine(Settings(var_dir=folder, database_url=url))
    relay: Relay | None = None
    try:
        migrate(engine)
        sessions = session_factory(engine)
        with sessions.begin() as session:
            imported = import_directory(session, directory)
        if imported.errors:
            sys.exit(f"directory import failed: {imported.errors}")
        print(f"\n{label}: {database_facts(engine)}")

        relay = Relay()
        watch = Stopwatch()
        mailboxes = folder / "mailboxes"
        config = SmtpConfig("127.0.0.1", relay.port, tls="none", local_hostname="bench.test")

        def smtp_factory() -> Transport:
            return TimedTransport(SmtpTransport(config), watch, SMTP)

        def mailbox_factory() -> Transport:
            return TimedTransport(MailboxTransport(mailboxes), watch, MAILDIR)

        services = DeliveryServices(
            cipher=StorageCipher.from_key(os.urandom(32)),
            signers=SignerRegistry(
                SigningSettings(certificate=pki.lab_certificate, key=pki.lab_key)
            ),
            factories={"mail": smtp_factory, "mailbox": mailbox_factory},
            mail_from=MAIL_FROM,
        )
        # One-off costs kept out of the figures: hl7apy's reference model, the signing key.
        list(read_results(work.results[0]))
        services.signers.for_laboratory(LAB)
        instrument(engine, sessions, watch)

        with (
            wrapped(intake, "read_any", timed_reader(read_any, watch)),
            wrapped(intake, "route_message", timed(route_message, watch, ROUTE)),
        ):
            intake_phase = run_intake(sessions, services, work, watch)
        with (
            wrapped(record, "read_again", timed(read_again, watch, HL7)),
            wrapped(deliver, "seal_delivery", timed(deliver.seal_delivery, watch, SEAL)),
        ):
            dispatch_phase, passes, states = run_dispatch(sessions, services, limit, watch)
        services.close()
        received = relay.finish()
        relay = None
        report(intake_phase, dispatch_phase, passes, limit, received)
        check(sessions, work, states, received, mailboxes)
    finally:
        if relay is not None:
            relay.kill()
        engine.dispose()


def run_intake(
    sessions: sessionmaker[Session], services: DeliveryServices, work: Workload, watch: Stopwatch
) -> Phase:
    watch.reset()
    samples: list[float] = []
    cpu, start = time.process_time(), time.perf_counter()
    for data, named in zip(work.results, work.named, strict=True):
        began = time.perf_counter()
        with sessions.begin() as session:  # commit, then the listener would ACK
            (accepted,) = intake.accept_bytes(
                session, data, services, source="mllp", source_name="127.0.0.1:bench"
            )
        samples.append(time.perf_counter() - began)
        if not (
            accepted.recorded is not None
            and accepted.recorded.status == NEW
            and accepted.route is not None
            and (accepted.route.routed, accepted.route.unroutable) == (len(named), 0)
        ):
            sys.exit(f"intake went wrong: {accepted}")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Phase(len(samples), wall, cpu, dict(watch.seconds), Counter(watch.counts), samples)


def run_dispatch(
    sessions: sessionmaker[Session], services: DeliveryServices, limit: int, watch: Stopwatch
) -> tuple[Phase, int, Counter[str]]:
    watch.reset()
    states: Counter[str] = Counter()
    passes = 0
    cpu, start = time.process_time(), time.perf_counter()
    while True:
        done = deliver.dispatch_due(sessions, services, limit=limit)
        if not done.handled:
            break
        passes += 1
        states.update(done.states)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    phase = Phase(sum(states.values()), wall, cpu, dict(watch.seconds), Counter(watch.counts))
    return phase, passes, states


# --- what is printed ----------------------------------------------------------------------------


def report(
    intake_phase: Phase,
    dispatch_phase: Phase,
    passes: int,
    limit: int,
    received: dict[str, Any],
) -> None:
    samples = sorted(intake_phase.samples)
    median = statistics.median(samples) * 1000
    p95 = samples[max(0, int(len(samples) * 0.95) - 1)] * 1000
    i, d = intake_phase, dispatch_phase
    print(
        f"  intake    {i.count:>5} results    in {i.wall:6.2f} s {i.count / i.wall:7.1f} results/s"
        f"     median {median:5.2f} ms, p95 {p95:5.2f} ms per result; our CPU {i.cpu / i.wall:.0%}"
    )
    print(
        f"  dispatch  {d.count:>5} deliveries in {d.wall:6.2f} s {d.count / d.wall:7.1f}"
        f" deliveries/s  ({passes} pass{'es' if passes != 1 else ''} of"
        f" dispatch_due(limit={limit}));"
        f" our CPU {d.cpu / d.wall:.0%}; relay CPU {received['cpu_seconds']:.2f} s"
    )
    print(f"  {'':<40} {'intake, per result':^30} {'dispatch, per delivery':^30}".rstrip())
    columns = f" {'ms':>7} {'share':>5} {'calls':>7} {'ms/call':>8}"
    print(f"  {'where the time goes':<40}{columns}{columns}")
    for bucket in (*BUCKETS, REST):
        print(f"  {bucket:<40}{cell(i, bucket)}{cell(d, bucket)}".rstrip())
    total = [f" {p.wall / p.count * 1000:>7.3f} {'100%':>5} {'':>7} {'':>8}" for p in (i, d)]
    print(f"  {'total (wall)':<40}{total[0]}{total[1]}".rstrip())


def cell(phase: Phase, bucket: str) -> str:
    """ms per unit, share of the phase's wall time, calls per unit, ms per call."""
    if bucket != REST and bucket not in phase.seconds:
        return f" {'-':>7} {'-':>5} {'-':>7} {'-':>8}"
    seconds = phase.share(bucket)
    text = f" {seconds / phase.count * 1000:>7.3f} {seconds / phase.wall:>5.0%}"
    calls = phase.counts[bucket]
    if bucket == REST or not calls:
        return text + f" {'':>7} {'':>8}"
    return text + f" {calls / phase.count:>7.2f} {seconds / calls * 1000:>8.3f}"


def check(
    sessions: sessionmaker[Session],
    work: Workload,
    states: Counter[str],
    received: dict[str, Any],
    mailboxes: Path,
) -> None:
    mail, mailbox = work.mail, work.mailbox
    problems: list[str] = []
    with sessions() as session:
        by_state: Counter[tuple[str | None, str]] = Counter()
        for kind, state, count in session.execute(
            select(Delivery.channel_kind, Delivery.state, func.count()).group_by(
                Delivery.channel_kind, Delivery.state
            )
        ):
            by_state[kind, state] = count
        sizes: dict[str | None, int] = {}
        for kind, size in session.execute(
            select(Delivery.channel_kind, func.sum(func.length(Delivery.envelope))).group_by(
                Delivery.channel_kind
            )
        ):
            sizes[kind] = int(size or 0)
        messages: Counter[str] = Counter()
        for state, count in session.execute(
            select(Message.state, func.count()).group_by(Message.state)
        ):
            messages[state] = count
    wanted = Counter(
        {("mail", "accepted"): mail.total(), ("mailbox", "delivered"): mailbox.total()}
    )
    if by_state != wanted:
        problems.append(f"ledger deliveries {dict(by_state)} != {dict(wanted)}")
    if messages != Counter({"routed": len(work.results)}):
        problems.append(f"ledger messages {dict(messages)} != {len(work.results)} routed")
    if states != Counter({"accepted": mail.total(), "delivered": mailbox.total()}):
        problems.append(f"dispatch_due reported {dict(states)}")
    print(
        f"  check: ledger {by_state[('mail', 'accepted')]} mail deliveries accepted, "
        f"{by_state[('mailbox', 'delivered')]} mailbox deliveries delivered, "
        f"{messages['routed']} messages routed"
    )

    relay_ok = (
        received["messages"] == mail.total()
        and Counter(received["recipients"]) == mail
        and received["bytes"] == sizes.get("mail", 0)
    )
    print(
        f"  check: relay received {received['messages']} messages "
        f"({', '.join(f'{n} to {a}' for a, n in sorted(received['recipients'].items()))}), "
        f"{received['bytes']} bytes over {received['connections']} connection(s); expected "
        f"{mail.total()} messages, {sizes.get('mail', 0)} bytes of sealed envelopes"
        f" -> {'OK' if relay_ok else 'MISMATCH'}"
    )
    if not relay_ok:
        problems.append("the relay did not receive exactly the mail deliveries")

    for name, expected in sorted(mailbox.items()):
        new = sorted((mailboxes / name / "new").iterdir())
        left = list((mailboxes / name / "tmp").iterdir())
        size = sum(path.stat().st_size for path in new)
        maildir_ok = len(new) == expected and not left and size == sizes.get("mailbox", 0)
        print(
            f"  check: Maildir {name}/new holds {len(new)} files, {size} bytes, tmp/ "
            f"{len(left)} left; expected {expected} files, {sizes.get('mailbox', 0)} bytes"
            f" -> {'OK' if maildir_ok else 'MISMATCH'}"
        )
        if not maildir_ok:
            problems.append(f"the Maildir {name} does not hold exactly the mailbox deliveries")
    if problems:
        sys.exit("CHECK FAILED: " + "; ".join(problems))


# --- the run ------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def filesystem(path: Path) -> str:
    """The file system type holding `path` (from /proc/mounts), which decides fsync cost."""
    real, best, kind = os.path.realpath(path), "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=500, help="number of results (N)")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("LABDISPATCH_TEST_POSTGRES_URL", DEFAULT_POSTGRES),
        help="a server where this user may create databases",
    )
    parser.add_argument("--limit", type=int, default=500, help="dispatch_due limit per pass")
    parser.add_argument("--pdf-share", type=float, default=0.05, help="share with a PDF (0-1)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.results < 1 or not 0 <= args.pdf_share <= 1 or args.limit < 1:
        parser.error("--results and --limit must be positive, --pdf-share between 0 and 1")

    work = make_workload(args.results, args.pdf_share)
    with tempfile.TemporaryDirectory(prefix="labdispatch-bench-") as temporary:
        folder = Path(temporary)
        pki = create_demo_pki(
            folder / "pki", {p.key: p.address if p.kind == "mail" else None for p in PEOPLE}
        )
        directory = write_directory(folder, pki)
        sizes = sorted(len(data) for data in work.results)
        print(
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}),"
            f" Python {platform.python_version()}; work folder {folder} ({filesystem(folder)})"
        )
        print(
            f"{len(work.results)} ORU^R01 results of 15 segments, {sizes[0]}-{sizes[-1]} bytes"
            f" ({work.with_pdf} with a 16th, an OBX ED holding a ~100 KB Base64 PDF), each naming"
            f" 1-3 of "
            f"{len(PEOPLE)} recipients: {work.mail.total() + work.mailbox.total()} deliveries "
            f"({work.mail.total()} mail via an aiosmtpd relay in a subprocess, "
            f"{work.mailbox.total()} mailbox into a Maildir); RSA-2048 demo PKI"
        )
        chosen = ("sqlite", "postgresql") if args.database == "both" else (args.database,)
        with ExitStack() as stack:
            # The PostgreSQL database first: an unreachable server fails before any run.
            postgres = (
                stack.enter_context(postgres_database(args.postgres_url))
                if "postgresql" in chosen
                else ""
            )
            for kind in chosen:
                label, url = (
                    ("SQLite", f"sqlite:///{folder / 'sqlite' / 'ledger.db'}")
                    if kind == "sqlite"
                    else ("PostgreSQL", postgres)
                )
                run_database(label, url, folder / kind, directory, pki, work, args.limit)


if __name__ == "__main__":
    main()
