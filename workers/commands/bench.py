"""`labdispatch bench`: the end-to-end throughput benchmark (see `workers.bench.run`).

Pushes N synthetic ORU^R01 results (1 to 3 recipients, 10 to 30 OBX, 5 % with a 100 KB PDF;
with --small ~3 KB, no PDF) over MLLP through the listener, the Celery workers, a real
Redis, a scratch PostgreSQL ledger and a real SMTP receiver, waits until every delivery is
recorded, and prints the figures: throughput, ACK latency (at --rate R, open loop: offered
by the clock, late sends counted), the floor per result and the ratio to it, PostgreSQL
bytes written per result. A progress line shows on a terminal.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from workers.bench.run import DEFAULT_ADMIN_URL, SINKS, BenchOptions, run_bench


def register(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="end-to-end benchmark: synthetic results over MLLP to sealed mail, figures printed",
        description=__doc__,
    )
    bench.add_argument("--messages", type=int, default=10_000, help="results to push")
    bench.add_argument("--workers", type=int, default=2, help="Celery pool processes")
    bench.add_argument("--recipients", type=int, default=200, help="clinicians in the directory")
    bench.add_argument(
        "--connections", type=int, default=16, help="MLLP connections (an LIS opens a few)"
    )
    bench.add_argument("--window", type=int, default=2, help="unanswered messages per connection")
    bench.add_argument("--batch-size", type=int, default=100, help="IDs per task")
    bench.add_argument(
        "--postgres",
        default=os.environ.get("LABDISPATCH_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        metavar="ADMIN_URL",
        help="PostgreSQL server for the scratch ledger (a database is created, then dropped)",
    )
    bench.add_argument(
        "--sqlite", action="store_true", help="use an SQLite ledger instead of PostgreSQL"
    )
    bench.add_argument(
        "--broker-url",
        default="",
        help="Redis to use (default: the embedded Redis server, started for the run)",
    )
    bench.add_argument("--noop-tasks", type=int, default=5_000, help="tasks for the no-op rate")
    bench.add_argument("--workdir", type=Path, help="keep the run's files here")
    bench.add_argument("--seed", type=int, default=1)
    bench.add_argument(
        "--profile", action="store_true", help="sample listener and workers with py-spy"
    )
    bench.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="open loop: offer R results per second by the clock (default: closed loop, the"
        " next result as soon as an ACK frees the window)",
    )
    bench.add_argument(
        "--small", action="store_true", help="~3 KB results (1 to 3 recipients, no PDF)"
    )
    bench.add_argument(
        "--sink",
        choices=SINKS,
        default="lean",
        help="SMTP receiver: lean (PIPELINING, little CPU; default) or aiosmtpd (the demo's)",
    )
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = BenchOptions(
        messages=args.messages,
        workers=args.workers,
        recipients=args.recipients,
        connections=args.connections,
        window=args.window,
        batch_size=args.batch_size,
        postgres_admin_url=None if args.sqlite else args.postgres,
        broker_url=args.broker_url,
        noop_tasks=args.noop_tasks,
        workdir=args.workdir,
        seed=args.seed,
        profile=args.profile,
        rate=args.rate,
        small=args.small,
        sink=args.sink,
    )
    print(
        f"labdispatch bench: {options.messages} results, {options.workers} worker process(es), "
        f"{options.connections} MLLP connection(s), window {options.window}, "
        + (f"open loop at {options.rate:g}/s" if options.rate else "closed loop")
        + f", {options.sink} SMTP receiver",
        flush=True,
    )
    result = run_bench(options)
    for line in result.lines():
        print(line)
    return 0
