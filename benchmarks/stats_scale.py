"""The statistics queries on a large ledger: are the billing report and the dashboard still
under a second with 10 million deliveries in PostgreSQL?

    .venv/bin/python -m benchmarks.stats_scale --deliveries 10000000 [--keep] [--postgres URL]

It creates a scratch database, migrates it, seeds it in SQL (generate_series, no ORM: the
secondary indexes are dropped for the load and built afterwards, as a bulk load is done),
ANALYZEs and VACUUMs it, then times each query (best of 3 after one warm-up) and prints a
table, the seeding time and the database size. The database is dropped at the end unless
--keep is given.

The seeded ledger, for N deliveries: N/2 messages over the 365 days before now, from 20
laboratories of very different sizes; 70,000 recipients (specialties, 5% with no channel,
85% with a valid certificate, 5% expired); two deliveries per message on the recipient's
channel (mail 60% over 40 domains, mailbox 25%, https 10%); 1% for an unknown identifier
(unroutable); final states read / delivered / accepted / failed with attempts, the last
hours' deliveries still pending or retrying (a few thousand, some stuck on two
destinations); 1% of messages resent (a "duplicate" event); 0.5% rejected at intake; MDN
receipts for 30% of mail deliveries handed over. Message bytes and envelopes are a few
bytes (their size does not change these queries: they are TOASTed out of the rows read).
Events other than "duplicate" are not seeded: the (kind, at) index reads duplicates only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.orm import Session

from pipeline.db import database_url, make_engine, migrate, session_factory, utcnow
from pipeline.settings import Settings
from pipeline.stats import dashboard
from pipeline.stats.adoption import adoption_stats
from pipeline.stats.deliveries import delivery_stats
from pipeline.stats.period import day_period
from workers.bench.scratch import drop_database

LABS = 20
RECIPIENTS = 70_000
DAYS = 365

#: The indexes the 0005 migration adds for the statistics.
STATS_INDEXES = (
    "ix_deliveries_laboratory_message_received_at",
    "ix_deliveries_read_at",
    "ix_deliveries_updated_at",
    "ix_messages_received_at_laboratory",
    "ix_receipts_received_at",
    "ix_events_kind_at",
)

#: The big tables whose secondary indexes and unique constraints are built after the load.
BULK_TABLES = ("messages", "deliveries", "events", "receipts", "rejections")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "LABDISPATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="an admin URL on the server where the scratch database is created",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--reuse", metavar="URL", help="time the queries on a database kept by --keep (no seeding)"
    )
    args = parser.parse_args()
    if args.reuse:
        engine = create_engine(database_url(args.reuse))
        try:
            print_timings(time_queries(engine, _seeded_now(engine)))
        finally:
            engine.dispose()
        return 0

    admin = create_engine(database_url(args.postgres), isolation_level="AUTOCOMMIT")
    name = f"labdispatch_stats_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        run(url, args.deliveries)
    finally:
        if args.keep:
            print(f"\nkept: {admin.url.set(database=name).render_as_string(hide_password=True)}")
        else:
            drop_database(admin, name)
        admin.dispose()
    return 0


def run(url: str, deliveries: int) -> None:
    with tempfile.TemporaryDirectory() as var:
        engine = make_engine(Settings(var_dir=Path(var), database_url=url))
    try:
        migrate(engine)
        now = utcnow().replace(microsecond=0)
        started = time.perf_counter()
        seed(engine, deliveries, now)
        seeded = time.perf_counter() - started
        with engine.connect() as connection:
            size = connection.scalar(
                text("SELECT pg_size_pretty(pg_database_size(current_database()))")
            )
            counts = {
                table: connection.scalar(text(f"SELECT count(*) FROM {table}"))
                for table in (
                    "messages",
                    "deliveries",
                    "recipients",
                    "events",
                    "rejections",
                    "receipts",
                )
            }
        print(f"seeded in {seeded:.0f} s: " + ", ".join(f"{n:,} {t}" for t, n in counts.items()))
        print(f"database size: {size}")
        with engine.connect() as connection:
            for name, index_size in connection.execute(
                text(
                    "SELECT indexrelname, pg_size_pretty(pg_relation_size(indexrelid))"
                    " FROM pg_stat_user_indexes WHERE indexrelname = ANY(:names) ORDER BY 1"
                ),
                {"names": list(STATS_INDEXES)},
            ):
                print(f"  index {name}: {index_size}")
        print()
        print_timings(time_queries(engine, now))
    finally:
        engine.dispose()


def print_timings(timings: list[tuple[str, float, float, int]]) -> None:
    print(f"{'query':<58} {'best ms':>9} {'median ms':>10} {'rows':>6}")
    for label, best, median, rows in timings:
        flag = "" if best < 1000 else "  OVER 1 s"
        print(f"{label:<58} {best:>9.1f} {median:>10.1f} {rows:>6}{flag}")


def _seeded_now(engine: Engine) -> datetime:
    """The `now` a kept database was seeded at: its newest message."""
    with engine.connect() as connection:
        newest = connection.scalar(text("SELECT max(received_at) FROM messages"))
    assert isinstance(newest, datetime)
    return newest


def seed(engine: Engine, deliveries: int, now: datetime) -> None:
    messages = max(deliveries // 2, 1)
    with engine.connect() as connection:
        connection.execute(text("SET maintenance_work_mem = '1GB'"))
        connection.execute(text("SET work_mem = '256MB'"))
        dropped = _drop_secondary_indexes(connection)
        # No foreign key triggers during the load: every reference is built consistent.
        connection.execute(text("SET session_replication_role = replica"))
        params = {"n": deliveries, "m": messages, "now": now, "days": DAYS, "labs": LABS}
        for label, statement in SEED_STATEMENTS:
            step = time.perf_counter()
            connection.execute(text(statement), params)
            connection.commit()
            print(f"  {label}: {time.perf_counter() - step:.1f} s", file=sys.stderr)
        connection.execute(text("SET session_replication_role = origin"))
        step = time.perf_counter()
        for statement in dropped:
            connection.execute(text(statement))
        connection.commit()
        print(f"  indexes rebuilt: {time.perf_counter() - step:.1f} s", file=sys.stderr)
        for table in (
            "messages",
            "deliveries",
            "recipients",
            "recipient_channels",
            "recipient_certificates",
            "events",
            "receipts",
            "rejections",
        ):
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT coalesce(max(id), 1) FROM {table}))"
                )
            )
        connection.commit()
    step = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM (FREEZE, ANALYZE)"))
    print(f"  vacuum analyze: {time.perf_counter() - step:.1f} s", file=sys.stderr)


def _drop_secondary_indexes(connection: Connection) -> list[str]:
    """Drop the big tables' secondary indexes and unique constraints; return the DDL that
    puts them back exactly as the migrations made them."""
    restore: list[str] = []
    constraints = connection.execute(
        text(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)"
            " FROM pg_constraint c WHERE c.contype = 'u'"
            " AND c.conrelid::regclass::text = ANY(:tables)"
        ),
        {"tables": list(BULK_TABLES)},
    ).all()
    for table, name, definition in constraints:
        connection.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        restore.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    indexes = connection.execute(
        text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i"
            " WHERE i.schemaname = 'public' AND i.tablename = ANY(:tables)"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
        ),
        {"tables": list(BULK_TABLES)},
    ).all()
    for name, definition in indexes:
        connection.execute(text(f'DROP INDEX "{name}"'))
        restore.append(definition)
    connection.commit()
    return restore


#: Pseudo-random but repeatable: h(x) in [0, 1) from PostgreSQL's integer hash.
_H = "((hashint8(({x})::bigint) & 2147483647)::float8 / 2147483648.0)"


def h(x: str) -> str:
    return _H.format(x=x)


SEED_STATEMENTS: list[tuple[str, str]] = [
    (
        "laboratories",
        """INSERT INTO laboratories (id, code, name)
        SELECT g, 'LAB' || lpad(g::text, 2, '0'), 'Laboratoire ' || g
        FROM generate_series(1, :labs) g""",
    ),
    (
        "recipients",
        f"""INSERT INTO recipients (id, key, kind, name, specialty, created_at, updated_at)
        SELECT g, 'dr-' || g, 'clinician', 'DOCTOR ' || g,
          (ARRAY[NULL, 'general practice', 'general practice', 'general practice',
                 'cardiology', 'endocrinology', 'nephrology', 'paediatrics', 'oncology',
                 'gynaecology'])[1 + floor({h("g * 3 + 1")} * 10)::int],
          :now - interval '2 years', :now - interval '2 years'
        FROM generate_series(1, {RECIPIENTS}) g""",
    ),
    (
        "channels",
        f"""INSERT INTO recipient_channels (id, recipient_id, kind, address, priority)
        SELECT g, g, kind,
          CASE kind WHEN 'mail' THEN 'dr' || g || '@domain' || (g % 40) || '.example'
                    WHEN 'mailbox' THEN 'dr-' || g
                    ELSE 'https://host' || (g % 15) || '.example/inbox/' || g END,
          0
        FROM (SELECT g, CASE WHEN {h("g * 5 + 2")} < 0.60 THEN 'mail'
                             WHEN {h("g * 5 + 2")} < 0.85 THEN 'mailbox'
                             WHEN {h("g * 5 + 2")} < 0.95 THEN 'https' END AS kind
              FROM generate_series(1, {RECIPIENTS}) g) r
        WHERE kind IS NOT NULL""",
    ),
    (
        "certificates",
        f"""INSERT INTO recipient_certificates
          (id, recipient_id, pem, subject, fingerprint_sha256, not_before, not_after)
        SELECT g, g, 'PEM', 'CN=DOCTOR ' || g, md5(g::text) || md5('c' || g),
          :now - interval '1 year',
          CASE WHEN {h("g * 7 + 3")} < 0.85 THEN :now + interval '1 year'
               ELSE :now - interval '10 days' END
        FROM generate_series(1, {RECIPIENTS}) g
        WHERE {h("g * 7 + 3")} < 0.90""",
    ),
    (
        "messages",
        # Labs of very different sizes: a triangular draw, LAB20 ~20 times LAB01.
        f"""INSERT INTO messages (id, laboratory, control_id, revision, state, content_sha256,
          size, sending_application, message_type, version, processing_id, result_status,
          document_count, charset, source, source_name, raw_encrypted, storage_key_id,
          received_at)
        SELECT g, 'LAB' || lpad(lab::text, 2, '0'), 'C' || g, 1,
          CASE WHEN at > :now - interval '3 minutes' AND g % 4 = 0 THEN 'received'
               ELSE 'routed' END,
          md5(g::text) || md5('m' || g), 3000, 'LIS', 'ORU^R01', '2.5', 'P', 'F', 0, '',
          'mllp', '', '\\x00'::bytea, 'bench', at
        FROM (SELECT g,
                1 + floor((sqrt(8 * floor({h("g")} * 210) + 1) - 1) / 2)::int AS lab,
                :now - make_interval(secs => (:m - g) * (:days * 86400.0 / :m)) AS at
              FROM generate_series(1, :m) g) s""",
    ),
    (
        "deliveries",
        f"""INSERT INTO deliveries (id, message_id, laboratory, message_received_at,
          recipient_id, recipient_key, wanted, role, channel_kind, channel_address, state,
          attempts, next_attempt_at, first_attempt_at, last_error, envelope_message_id,
          envelope_id, envelope, created_at, updated_at, sealed_at, accepted_at,
          delivered_at, read_at, failed_at)
        SELECT d.id, d.message_id, m.laboratory, m.received_at,
          CASE WHEN d.unknown THEN NULL ELSE d.recipient END,
          CASE WHEN d.unknown THEN NULL ELSE 'dr-' || d.recipient END,
          CASE WHEN d.unknown THEN 'RPPS:' || (10000000000 + d.id) ELSE '' END,
          CASE WHEN d.id % 2 = 0 THEN 'ordering' ELSE 'copy_to' END,
          c.kind, c.address, s.state, s.attempts,
          CASE WHEN s.state = 'retrying' THEN :now + interval '5 minutes' END,
          CASE WHEN s.attempts > 0 THEN m.received_at + interval '3 seconds' END,
          CASE WHEN s.state IN ('failed', 'retrying') THEN '451 try again later' ELSE '' END,
          CASE WHEN c.kind IS NOT NULL THEN '<' || md5(d.id::text) || '@bench.example>' END,
          CASE WHEN c.kind IS NOT NULL THEN md5('e' || d.id) END,
          CASE WHEN s.state = 'retrying' OR (s.state = 'pending' AND d.r1 < 0.5)
               THEN '\\x00'::bytea END,
          m.received_at + interval '1 second',
          greatest(m.received_at + interval '1 second', t.accepted_at, t.delivered_at,
                   t.read_at, t.failed_at,
                   CASE WHEN s.state = 'retrying' THEN :now - interval '1 minute' END),
          CASE WHEN s.state NOT IN ('unroutable', 'pending')
               THEN m.received_at + interval '2 seconds' END,
          t.accepted_at, t.delivered_at, t.read_at, t.failed_at
        FROM (SELECT g AS id, (g + 1) / 2 AS message_id,
                -- two different recipients for the two deliveries of a message
                1 + (floor({h("((g + 1) / 2) * 11 + 5")} * {RECIPIENTS})::int
                     + (g % 2)
                     * (1 + floor({h("((g + 1) / 2) * 37 + 1")} * ({RECIPIENTS} - 1))::int)
                    ) % {RECIPIENTS} AS recipient,
                {h("g * 13 + 7")} < 0.01 AS unknown,
                {h("g * 17 + 9")} AS r1, {h("g * 19 + 4")} AS r2
              FROM generate_series(1, :n) g) d
        JOIN messages m ON m.id = d.message_id AND m.state <> 'received'
        LEFT JOIN recipient_channels c ON c.recipient_id = d.recipient AND NOT d.unknown
        CROSS JOIN LATERAL (SELECT
          CASE WHEN c.kind IS NULL THEN 'unroutable'
               WHEN m.received_at > :now - interval '10 minutes' THEN
                 CASE WHEN d.r1 < 0.6 THEN 'pending' ELSE 'accepted' END
               -- stuck: two destinations refuse for the last day
               WHEN m.received_at > :now - interval '1 day'
                    AND (c.address LIKE '%@domain7.example' OR c.address LIKE 'https://host3.%')
                 THEN CASE WHEN d.r1 < 0.7 THEN 'retrying' ELSE 'failed' END
               WHEN d.r1 < 0.03 THEN 'failed'
               WHEN d.r1 < 0.40 THEN 'read'
               WHEN d.r1 < 0.70 THEN 'delivered'
               ELSE 'accepted' END AS state,
          CASE WHEN c.kind IS NULL THEN 0
               WHEN d.r2 < 0.85 THEN 1 WHEN d.r2 < 0.95 THEN 2 ELSE 3 + floor(d.r2 * 100)::int % 3
          END AS attempts) s0
        CROSS JOIN LATERAL (SELECT s0.state,
          CASE WHEN s0.state IN ('pending') THEN 0
               WHEN s0.state = 'failed' THEN 5 ELSE s0.attempts END AS attempts) s
        CROSS JOIN LATERAL (SELECT
          CASE WHEN s.state IN ('accepted', 'delivered', 'read')
               THEN least(:now, m.received_at + make_interval(secs => 4 + d.r2 * 600))
               END AS accepted_at,
          CASE WHEN s.state IN ('delivered', 'read')
               THEN least(:now, m.received_at + make_interval(secs => 5 + d.r2 * 1200))
               END AS delivered_at,
          CASE WHEN s.state = 'read'
               THEN least(:now, m.received_at + make_interval(secs => 1800 + d.r2 * 259200))
               END AS read_at,
          CASE WHEN s.state = 'failed'
               THEN least(:now, m.received_at + make_interval(secs => 60 + d.r2 * 86400))
               END AS failed_at) t""",
    ),
    (
        "duplicate events",
        f"""INSERT INTO events (message_id, delivery_id, at, kind, detail)
        SELECT m.id, NULL, m.received_at + interval '30 seconds', 'duplicate',
          'sent again (mllp); not delivered again'
        FROM messages m WHERE {h("m.id * 23 + 1")} < 0.01""",
    ),
    (
        "rejections",
        f"""INSERT INTO rejections (received_at, source, source_name, laboratory, control_id,
          ack_code, error, hl7_code, reason, size, content_sha256, raw_encrypted,
          storage_key_id)
        SELECT :now - make_interval(secs => {h("g * 29 + 3")} * :days * 86400),
          'mllp', '', 'LAB' || lpad((1 + g % :labs)::text, 2, '0'), 'R' || g,
          CASE WHEN g % 3 = 0 THEN 'AR' ELSE 'AE' END, 'structure', '101',
          'OBX-5 missing in segment 4', 2000, md5(g::text) || md5('r' || g), '\\x00'::bytea,
          'bench'
        FROM generate_series(1, :m / 200) g""",
    ),
    (
        "receipts",
        f"""INSERT INTO receipts (delivery_id, received_at, kind, disposition,
          original_message_id, report_message_id, source, detail)
        SELECT d.id, coalesce(d.read_at, d.delivered_at, d.accepted_at + interval '1 minute'),
          'mdn', CASE WHEN d.state = 'read' THEN 'displayed' ELSE 'processed' END,
          d.envelope_message_id, '<mdn' || d.id || '@far.example>', 'imap INBOX', ''
        FROM deliveries d
        WHERE d.channel_kind = 'mail' AND d.state IN ('accepted', 'delivered', 'read')
          AND {h("d.id * 31 + 7")} < 0.30""",
    ),
]


def time_queries(engine: Engine, now: datetime) -> list[tuple[str, float, float, int]]:
    this_month = now.date().replace(day=1)
    last_month_end = this_month - timedelta(days=1)
    month = day_period(last_month_end.replace(day=1), last_month_end)
    big_lab, small_lab = "LAB20", "LAB05"
    cases: list[tuple[str, Callable[[Session], object]]] = [
        (
            f"deliveries by month, all labs ({month.first_day:%Y-%m})",
            lambda s: delivery_stats(s, month, group_by="month"),
        ),
        (
            f"deliveries by month, {big_lab} (largest lab)",
            lambda s: delivery_stats(s, month, group_by="month", laboratory=big_lab),
        ),
        (
            f"deliveries by month, {small_lab}",
            lambda s: delivery_stats(s, month, group_by="month", laboratory=small_lab),
        ),
        (
            f"deliveries by day, {big_lab}, one month",
            lambda s: delivery_stats(s, month, group_by="day", laboratory=big_lab),
        ),
        (
            "deliveries by channel, all labs, one month",
            lambda s: delivery_stats(s, month, group_by="channel"),
        ),
        (
            f"deliveries by recipient, {big_lab}, one month",
            lambda s: delivery_stats(s, month, group_by="recipient", laboratory=big_lab),
        ),
        (
            "adoption, all labs and specialties, one month",
            lambda s: adoption_stats(s, month, now=now),
        ),
        (
            f"adoption, {big_lab}, one month",
            lambda s: adoption_stats(s, month, laboratory=big_lab, now=now),
        ),
        ("dashboard snapshot (all parts)", lambda s: dashboard.dashboard_snapshot(s, now)),
        ("  dashboard: throughput, last 60 minutes", lambda s: dashboard.throughput(s, now)),
        (
            "  dashboard: deliveries by state, last 24 h",
            lambda s: dashboard.deliveries_by_state(s, now),
        ),
        ("  dashboard: stages (route, seal, send)", lambda s: dashboard.stages(s, now)),
        ("  dashboard: slowest destinations", lambda s: dashboard.slowest_destinations(s, now)),
        ("  dashboard: recent rejects", lambda s: dashboard.recent_rejects(s)),
        ("  dashboard: adoption, last 30 days", lambda s: dashboard.adoption(s, now)),
    ]
    sessions = session_factory(engine)
    results = []
    for label, query in cases:
        samples = []
        rows = 0
        for attempt in range(4):  # one warm-up, then 3 timed
            with sessions() as session:
                start = time.perf_counter()
                answer = query(session)
                elapsed = (time.perf_counter() - start) * 1000
            if attempt:
                samples.append(elapsed)
            rows = len(answer) if isinstance(answer, list | tuple | dict) else 1
        results.append((label, min(samples), statistics.median(samples), rows))
    return results


if __name__ == "__main__":
    sys.exit(main())
