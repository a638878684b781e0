"""Intake cost per message: what labdispatch spends reading one result, measured.

Prints medians (and p95) of `read_results` — decode, structure checks against hl7apy's
reference model, routing facts and recipients — for a 15-segment ORU^R01 and for the
largest corpus file, beside a full hl7apy `parse_message` of the same bytes for scale.

With `--ledger`, also what recording costs per message: `accept_batch` + commit of groups of
`--group` fresh 15-segment results (what one group commit of the MLLP listener does), on a
scratch SQLite file and, with `--postgres ADMIN_URL`, on a scratch PostgreSQL database.

    python benchmarks/intake_cost.py [--rounds 300] [--corpus ../shared/corpus]
    python benchmarks/intake_cost.py --ledger [--group 100] [--groups 30] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlalchemy import Engine
from timing import measure  # benchmarks/timing.py (scripts run from this folder)

from pipeline.db import begin_write, make_engine, migrate, session_factory
from pipeline.delivery.intake import Inbound, accept_batch
from pipeline.delivery.services import DeliveryServices, SignerRegistry
from pipeline.hl7.intake import read_results
from pipeline.ledger.storage import StorageCipher
from pipeline.settings import Settings, SigningSettings

ROOT = Path(__file__).resolve().parents[1]


def fifteen_segment_oru() -> bytes:
    """MSH, PID, PV1, ORC, OBR and ten OBX: the shape of a typical chemistry panel."""
    segments = [
        "MSH|^~\\&|SIL|LABO|LABDISPATCH|LABDISPATCH|20261128093000||ORU^R01^ORU_R01|BENCH-1|P|2.5"
        "|||||FRA|UNICODE UTF-8",
        "PID|||248125612345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||DUPONT^Hélène"
        "||19481215|F",
        "PV1|1|O",
        "ORC|RE|CMD-1|LAB-1||CM||||202611280715|||810001234567^MARTIN^Sophie^^^DR^^^"
        "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
        "OBR|1|CMD-1|LAB-1|24326-1^Ionogramme^LN|||202611280700|||||||||810001234567^MARTIN^"
        "Sophie^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS||||||202611280925|||F"
        "|||0751234567^LEROY^Paul^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
    ]
    for number in range(1, 11):
        segments.append(
            f"OBX|{number}|NM|{2950 + number}-2^Analyte {number}^LN||{100 + number}|mmol/L"
            "|135-145|N|||F|||202611280900"
        )
    assert len(segments) == 15
    return ("\r".join(segments) + "\r").encode("utf-8")


def hl7apy_full(data: bytes) -> Callable[[], object]:
    text = data.decode("utf-8").lstrip("\ufeff")

    def run() -> object:
        return parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)

    return run


@contextmanager
def ledger_engine(kind: str, admin_url: str) -> Iterator[Engine]:
    """A scratch ledger engine, made as the service makes it (`make_engine`)."""
    if kind == "postgresql":
        from workers.bench.scratch import postgres_database

        with postgres_database(admin_url) as url, tempfile.TemporaryDirectory() as var:
            engine = make_engine(Settings(var_dir=Path(var), database_url=url))
            try:
                yield engine
            finally:
                engine.dispose()
        return
    with tempfile.TemporaryDirectory() as folder:
        var = Path(folder)
        engine = make_engine(Settings(var_dir=var, database_url=f"sqlite:///{var}/ledger.db"))
        try:
            yield engine
        finally:
            engine.dispose()


def recording_cost(engine: Engine, group: int, groups: int) -> tuple[float, float]:
    """Per-message milliseconds (median over groups) of accept_batch + commit, and the
    median per-group commit time in ms."""
    migrate(engine)
    sessions = session_factory(engine)
    services = DeliveryServices(
        cipher=StorageCipher.from_key(os.urandom(32)),
        signers=SignerRegistry(SigningSettings()),
        factories={},
    )
    template = fifteen_segment_oru()
    per_message: list[float] = []
    per_group: list[float] = []
    number = 0
    for round_ in range(groups + 3):  # three warm-up groups
        batch = []
        for _ in range(group):
            number += 1
            data = template.replace(b"|BENCH-1|", f"|BENCH-{number}|".encode())
            batch.append(Inbound(data, "mllp", "127.0.0.1:9"))
        start = time.perf_counter()
        with sessions() as session:
            begin_write(session)
            accept_batch(session, batch, services, now=services.clock())
            session.commit()
        elapsed = time.perf_counter() - start
        if round_ >= 3:
            per_message.append(elapsed * 1000 / group)
            per_group.append(elapsed * 1000)
    return statistics.median(per_message), statistics.median(per_group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--ledger", action="store_true", help="also time recording")
    parser.add_argument("--group", type=int, default=100, help="messages per group commit")
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--postgres", default="", help="admin URL of a PostgreSQL server")
    args = parser.parse_args()

    if args.ledger:
        kinds = ["sqlite"] + (["postgresql"] if args.postgres else [])
        print(f"{'ledger':<12} {'group':>6} {'per message':>14} {'per group commit':>18}")
        for kind in kinds:
            with ledger_engine(kind, args.postgres) as engine:
                message_ms, group_ms = recording_cost(engine, args.group, args.groups)
            print(f"{kind:<12} {args.group:>6} {message_ms:11.3f} ms {group_ms:15.2f} ms")

    cases = [("15-segment ORU^R01 (synthetic, 10 OBX)", fifteen_segment_oru())]
    corpus_files = sorted(args.corpus.glob("*.hl7"), key=lambda path: path.stat().st_size)
    if corpus_files:
        largest = corpus_files[-1]
        cases.append((f"largest corpus file {largest.name}", largest.read_bytes()))

    print(f"{'message':<58} {'bytes':>8} {'labdispatch':>18} {'hl7apy full parse':>20}")
    for label, data in cases:
        results = list(read_results(data))
        assert all(result.ok for result in results), [str(r.error) for r in results]
        ours = measure(lambda data=data: list(read_results(data)), args.rounds)
        try:
            theirs = measure(hl7apy_full(data), max(20, args.rounds // 10))
            theirs_text = f"{theirs[0]:7.3f} ms p95 {theirs[1]:6.2f}"
        except Exception as error:  # hl7apy refuses some real messages (e.g. PRT in 2.5)
            theirs_text = f"fails: {type(error).__name__}"
        print(f"{label:<58} {len(data):>8} {ours[0]:7.3f} ms p95 {ours[1]:5.2f} {theirs_text:>20}")


if __name__ == "__main__":
    main()
