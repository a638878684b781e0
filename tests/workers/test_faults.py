"""Fault tests through the real processes: kill -9 a worker, lose Redis, refuse SMTP, cut MLLP.

Each test runs what an installation runs (`labdispatch mllp serve`, `labdispatch worker`,
a Redis server, an SMTP receiver), pushes synthetic results over MLLP as a laboratory does,
breaks something in the middle of the run, and ends with the same check: every result is
in the ledger once, every one of its recipients' deliveries is `accepted`, and the receiver
got exactly the ledger's envelopes, each (Message-ID, recipient) at least once. A copy sent
again after a crash carries the Message-ID of the first (the recipient's client drops it);
those copies are counted, printed and bounded.

Leases, requeue delays, retries and the circuit's open time are seconds here (see
`stack_fixtures.FAST_SETTINGS`), so recovering takes seconds, as it takes minutes with the
production defaults.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select

from pipeline.delivery.deliver import COMMIT_EVERY
from pipeline.ledger.models import Event, Message, Rejection
from tests.conftest import scratch_postgres
from tests.workers.stack_fixtures import FAST_SETTINGS, FaultStack, PrivateRedis, wait_for
from workers.mllp.client import MllpClient
from workers.mllp.framing import frame

#: Seconds the stack has to settle once the fault is over.
SETTLE_TIMEOUT = 90.0
#: Failures in a row that open a destination's circuit (the default, said here for the test).
BREAKER_FAILURES = 5


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path / "redis").start() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    with scratch_postgres(postgres_admin) as url:
        yield url


def _stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    settings: dict[str, str] | None = None,
) -> FaultStack:
    """The embedded default (SQLite in the var dir, the Redis server the program starts
    itself) or PostgreSQL with a private redis-server; closed when the test ends
    (processes stopped, embedded broker stopped)."""
    if backend == "embedded":
        stack = FaultStack(tmp_path, monkeypatch, settings=settings)
    else:
        server: PrivateRedis = request.getfixturevalue("private_redis")
        stack = FaultStack(
            tmp_path,
            monkeypatch,
            database_url=request.getfixturevalue("postgres_url"),
            broker_url=server.url,
            settings=settings,
        )
    request.addfinalizer(stack.close)
    return stack.start()


def _all_aa(stack: FaultStack, report_codes: dict[str, int], count: int) -> None:
    assert report_codes == {"AA": count}, f"ACK codes {report_codes}\n{stack.diagnostics()}"


BACKENDS = [
    pytest.param("embedded", id="embedded"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("victim", ["pool-child", "whole-worker"])
def test_kill_9_of_a_worker_mid_batch_loses_nothing(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    victim: str,
) -> None:
    stack = _stack(request, tmp_path, monkeypatch, backend)
    # Enough work that the one-pass workers are still at it, well after the push, while the
    # test looks for a batch at work (300 results were delivered in about a second, and 600
    # still left too short a window on a loaded machine).
    results = stack.results(2000)
    expected = stack.expected_deliveries(results)
    started = time.monotonic()
    _all_aa(stack, dict(stack.push(results).codes), len(results))

    # Mid-run, with a batch at work (deliveries under a worker's lease).
    wait_for(
        lambda: 0 < stack.accepted() < expected // 2 and stack.claimed() > 0,
        timeout=30,
        what="some deliveries accepted, most still to do, a batch at work",
        alive=stack.alive,
        details=stack.diagnostics,
    )
    if victim == "pool-child":
        accepted_at_kill = stack.accepted()  # at the first kill; WorkerLostError below
        killed = _kill_pool_processes_until_one_dies_at_work(stack, expected)
        pool_processes_killed = len(killed)
    else:
        killed, pool_processes_killed = _kill_workers_until_one_dies_in_a_batch(stack, expected)
        accepted_at_kill = stack.accepted()
    assert accepted_at_kill < expected, "the run was over before the kill"

    settled = stack.settle(len(results), timeout=SETTLE_TIMEOUT)
    if victim == "pool-child":
        # The worker saw the task die with its process: the kill hit a batch at work, which
        # Celery gives back to the broker (reject_on_worker_lost).
        log = stack.log_dir / "worker.log"
        wait_for(
            lambda: "WorkerLostError" in log.read_text(errors="replace"),
            timeout=30,
            what="the worker reporting the task of the killed pool process lost",
            details=stack.diagnostics,
        )
    tally = stack.check_all_delivered(results)
    stack.alive()
    print(
        f"\n[{backend}, kill -9 {victim} {killed}] {accepted_at_kill}/{expected} accepted at "
        f"the kill; settled {settled:.1f} s later; {tally.line()}; "
        f"{time.monotonic() - started:.1f} s in all"
    )
    # Only sends whose outcome was not committed yet go out again: at most one commit group
    # per pool process killed.
    assert tally.duplicates <= COMMIT_EVERY * pool_processes_killed


#: Pool processes killed at most, one after the other, to hit one in the middle of a task.
KILL_TRIES = 3


def _kill_pool_processes_until_one_dies_at_work(stack: FaultStack, expected: int) -> list[int]:
    """SIGKILL a pool process seen at work, and again (another one, up to KILL_TRIES) while
    the worker does not report a task lost with it: a one-pass batch is short, so a process
    seen busy can have finished its task by the time the signal lands. The caller still
    asserts that one kill hit a task (WorkerLostError) before the run was over."""
    log = stack.log_dir / "worker.log"
    killed: list[int] = []
    while len(killed) < KILL_TRIES and stack.accepted() < expected:
        killed.append(stack.working_pool_process())
        os.kill(killed[-1], signal.SIGKILL)
        # The worker notices the dead process at once: a lost task is logged within a second.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if "WorkerLostError" in log.read_text(errors="replace"):
                return killed
            time.sleep(0.1)
    return killed


def _kill_workers_until_one_dies_in_a_batch(
    stack: FaultStack, expected: int
) -> tuple[list[int], int]:
    """SIGKILL the whole worker; while the kill fell between two batches (no lease left held:
    nobody else works, so leases held now are the dead worker's unfinished batch), start
    another and kill it in turn once it holds a batch, up to KILL_TRIES. Returns the pids
    killed and the pool processes killed; a new worker is running when it returns."""
    killed: list[int] = []
    pool_processes_killed = 0
    name = "worker"
    for attempt in range(1, KILL_TRIES + 1):
        killed += stack.kill_worker(name)
        pool_processes_killed += stack.concurrency
        held = stack.claimed()
        name = f"worker{attempt + 1}"
        stack.start_worker(name)
        if held > 0:
            return killed, pool_processes_killed
        wait_for(
            lambda: stack.accepted() < expected and stack.claimed() > 0,
            timeout=30,
            what="the next worker at work on a batch",
            alive=stack.alive,
            details=stack.diagnostics,
        )
    pytest.fail(f"the worker was killed between batches, not in one, {KILL_TRIES} times")


@pytest.mark.postgres
def test_redis_stopped_restarted_empty_and_flushed_loses_nothing(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    private_redis: PrivateRedis,
) -> None:
    stack = _stack(request, tmp_path, monkeypatch, "postgresql")
    started = time.monotonic()
    before = stack.results(150)
    expected_before = stack.expected_deliveries(before)
    _all_aa(stack, dict(stack.push(before).codes), len(before))
    wait_for(
        lambda: 0 < stack.accepted() < expected_before // 2,
        timeout=30,
        what="some deliveries accepted, most still to do",
        alive=stack.alive,
        details=stack.diagnostics,
    )

    # Redis goes away with everything it carried.
    private_redis.stop()
    stopped = time.monotonic()
    accepted_at_stop = stack.accepted()
    during = stack.results(60)
    report = stack.push(during)
    # The ACK means "in the ledger", which needs no broker.
    _all_aa(stack, dict(report.codes), len(during))
    assert stack.recorded(during) == len(during)
    # The listener could not hand them to the workers, and said so: reconcile will.
    assert "after-commit hook failed" in (stack.log_dir / "mllp.log").read_text()
    # Down for a few reconcile rounds (beat cannot queue them either), not just a blink.
    outage = 3 * float(FAST_SETTINGS["RECONCILE_INTERVAL"])
    wait_for(
        lambda: time.monotonic() - stopped >= outage,
        timeout=outage + 5,
        what="the outage lasting its time",
        alive=stack.alive,
    )
    down_for = time.monotonic() - stopped

    private_redis.start()  # empty: no persistence
    wait_for(
        lambda: stack.accepted() > accepted_at_stop,
        timeout=30,
        what="deliveries going on once Redis is back",
        alive=stack.alive,
        details=stack.diagnostics,
    )

    # Then flushed, while it carries work.
    after = stack.results(60)
    _all_aa(stack, dict(stack.push(after).codes), len(after))
    broker = private_redis.client()
    try:
        wait_for(
            lambda: _queued(broker) > 0,
            timeout=30,
            what="work queued in Redis to flush",
            details=stack.diagnostics,
            interval=0.01,
        )
        flushed = _queued(broker)
        broker.flushall()
    finally:
        broker.close()

    everything = before + during + after
    settled = stack.settle(len(everything), timeout=SETTLE_TIMEOUT)
    tally = stack.check_all_delivered(everything)
    stack.alive()  # the listener and the worker rode it out
    print(
        f"\n[redis down {down_for:.1f} s, restarted empty, then flushed with {flushed} "
        f"task(s) in it] settled {settled:.1f} s after the flush; {tally.line()}; "
        f"{time.monotonic() - started:.1f} s in all"
    )
    assert tally.duplicates == 0  # no process died: nothing was sent without its record


def _queued(broker: redis.Redis) -> int:
    """Tasks Redis holds for our queues, waiting or being worked on."""
    waiting = sum(
        int(broker.llen(key))
        for key in broker.scan_iter(match="labdispatch.*")
        if broker.type(key) == b"list"
    )
    return waiting + int(broker.hlen("unacked"))


@pytest.mark.parametrize("when", ["from-the-start", "mid-run"])
def test_smtp_relay_refusing_then_back_delivers_everything_once(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    stack = _stack(
        request,
        tmp_path,
        monkeypatch,
        "embedded",
        settings={"BREAKER_FAILURES": str(BREAKER_FAILURES)},
    )
    results = stack.results(150)
    expected = stack.expected_deliveries(results)
    started = time.monotonic()
    if when == "from-the-start":
        stack.sink.refusing = True
    _all_aa(stack, dict(stack.push(results).codes), len(results))
    if when == "mid-run":
        wait_for(
            lambda: 0 < stack.accepted() < expected // 2,
            timeout=30,
            what="some deliveries accepted, most still to do",
            alive=stack.alive,
            details=stack.diagnostics,
        )
        stack.sink.refusing = True
    refused_from = time.monotonic()

    wait_for(
        lambda: (
            stack.events_like("retried", "circuit open") > 0
            and stack.delivery_states()["retrying"] > 0
        ),
        timeout=30,
        what="deliveries retrying and the relay's circuit open",
        alive=stack.alive,
        details=stack.diagnostics,
    )
    # The relay stays down a few open periods more: attempts must not grow with the backlog.
    down = 4 * float(FAST_SETTINGS["BREAKER_OPEN_SECONDS"])
    wait_for(
        lambda: time.monotonic() - refused_from >= down,
        timeout=down + 5,
        what="the outage lasting its time",
        alive=stack.alive,
    )
    states_during = stack.delivery_states()
    stack.sink.refusing = False
    outage = time.monotonic() - refused_from

    settled = stack.settle(len(results), timeout=SETTLE_TIMEOUT)
    tally = stack.check_all_delivered(results)
    stack.alive()
    attempts = stack.attempts_by_outcome()
    failed_attempts = attempts["transient"]
    retried = stack.events_like("retried", "")
    print(
        f"\n[smtp refusing {when} for {outage:.1f} s] deliveries then {dict(states_during)}; "
        f"{failed_attempts} failed attempts, {retried} 'retried' events, "
        f"{stack.sink.handler.refused} refusals at the relay; settled {settled:.1f} s after "
        f"it came back; {tally.line()}; {time.monotonic() - started:.1f} s in all"
    )
    assert failed_attempts > 0 and retried > 0 and stack.sink.handler.refused > 0
    # Every attempt is in the ledger: the refused ones and one accepted per delivery.
    assert attempts == {"transient": failed_attempts, "accepted": tally.deliveries}
    # Each pool process spends BREAKER_FAILURES attempts to learn the relay is down, then one
    # trial per open period; without the breaker every waiting delivery would be tried at
    # every backoff (0.5-1 s): hundreds of attempts.
    open_periods = outage / float(FAST_SETTINGS["BREAKER_OPEN_SECONDS"])
    bound = stack.concurrency * (BREAKER_FAILURES + open_periods + 2)
    assert failed_attempts <= bound, f"{failed_attempts} failed attempts, bound {bound:.0f}"
    assert tally.duplicates == 0  # a refused transaction never reached the receiver


def test_lis_cut_mid_message_and_resending_after_a_lost_ack_gives_one_envelope_each(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = _stack(request, tmp_path, monkeypatch, "embedded")
    results = stack.results(20, pdf_ratio=0.0)
    cut, lost, rest = results[0], results[1], results[2:]
    address = ("127.0.0.1", stack.stack.mllp_port)

    # The LIS dies half-way through a message: nothing is stored, nothing is refused.
    with socket.create_connection(address) as connection:
        connection.sendall(frame(cut.data)[: len(cut.data) // 2])
    # The LIS sends a message, and the connection is gone before the ACK comes back...
    with socket.create_connection(address) as connection:
        connection.sendall(frame(lost.data))
    wait_for(
        lambda: stack.recorded([lost]) == 1,
        timeout=15,
        what="the message whose ACK was lost in the ledger",
        details=stack.diagnostics,
    )
    assert stack.recorded([cut]) == 0  # half a frame is no message
    # ... so it sends it again, twice, and then what it had not finished, and the rest.
    with MllpClient(*address) as client:
        replies = [client.exchange(lost.data) for _ in range(2)]
        replies.append(client.exchange(cut.data))
    assert [(r.code, r.control_id) for r in replies] == [
        ("AA", lost.control_id),
        ("AA", lost.control_id),
        ("AA", cut.control_id),
    ]
    _all_aa(stack, dict(stack.push(rest).codes), len(rest))

    stack.settle(len(results), timeout=SETTLE_TIMEOUT)
    tally = stack.check_all_delivered(results)
    with stack.sessions() as session:
        kinds = session.scalars(
            select(Event.kind)
            .join(Message, Event.message_id == Message.id)
            .where(Message.control_id == lost.control_id, Event.delivery_id.is_(None))
        ).all()
        rejected = session.scalar(select(func.count()).select_from(Rejection))
    print(f"\n[MLLP cut and lost ACK] {tally.line()}")
    assert kinds.count("received") == 1 and kinds.count("duplicate") == 2, kinds
    assert rejected == 0
    assert tally.duplicates == 0  # the resent message made no second envelope
