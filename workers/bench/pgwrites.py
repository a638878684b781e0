"""What a run wrote to PostgreSQL: WAL bytes and table + index growth, per result.

WAL is read as the server's insert position (`pg_current_wal_lsn`) before and after the
run, so it counts the whole server: when other databases were written meanwhile (rows in
`pg_stat_database`, or databases created: CREATE DATABASE copies its template through the
WAL) the figure says so, as an upper bound for ours. Growth is the run's own
database (`pg_database_size`), split by table (`pg_total_relation_size`: heap, TOAST and
indexes).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

_TABLES = text(
    "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p', 'm')"
    " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname NOT LIKE 'pg_toast%'"
)
_OTHERS_WRITTEN = text(
    "SELECT coalesce(sum(tup_inserted + tup_updated + tup_deleted), 0)::bigint"
    " FROM pg_stat_database WHERE datname IS DISTINCT FROM current_database()"
)


@dataclass(frozen=True)
class Snapshot:
    lsn: str
    database_size: int
    tables: dict[str, int]
    others_written: int  # rows written in other databases, as the statistics count them
    databases: frozenset[int]  # OIDs of the server's databases


def snapshot(engine: Engine) -> Snapshot:
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        return Snapshot(
            lsn=str(connection.scalar(text("SELECT pg_current_wal_lsn()::text"))),
            database_size=int(
                connection.scalar(text("SELECT pg_database_size(current_database())")) or 0
            ),
            tables={str(name): int(size) for name, size in connection.execute(_TABLES).all()},
            others_written=int(connection.scalar(_OTHERS_WRITTEN) or 0),
            databases=frozenset(
                int(oid) for oid in connection.scalars(text("SELECT oid FROM pg_database"))
            ),
        )


@dataclass(frozen=True)
class Writes:
    results: int
    wal: int  # bytes, whole server
    growth: int  # bytes, the run's database
    tables: dict[str, int]  # growth by table, bytes
    others_written: int
    others_created: int = 0  # databases created on the server during the run

    def line(self) -> str:
        per = max(1, self.results)
        biggest = sorted(self.tables.items(), key=lambda item: -item[1])[:4]
        split = ", ".join(f"{name} {size / per / 1024:.1f}" for name, size in biggest if size)
        line = (
            f"PostgreSQL writes    {(self.wal + self.growth) / per / 1024:.1f} KB/result: "
            f"WAL {self.wal / per / 1024:.1f} KB/result ({self.wal / 1e6:.1f} MB in the run), "
            f"table + index growth {self.growth / per / 1024:.1f} KB/result "
            f"({self.growth / 1e6:.1f} MB" + (f"; KB/result by table: {split})" if split else ")")
        )
        others = []
        if self.others_written:
            others.append(f"other databases wrote {self.others_written} rows")
        if self.others_created:
            others.append(f"{self.others_created} database(s) were created")
        if others:
            line += (
                f"; WAL is the whole server's and meanwhile {' and '.join(others)}: an upper bound"
            )
        return line


def writes(engine: Engine, before: Snapshot, after: Snapshot, results: int) -> Writes:
    with engine.connect() as connection:
        wal = connection.scalar(
            text("SELECT pg_wal_lsn_diff(CAST(:after AS pg_lsn), CAST(:before AS pg_lsn))"),
            {"after": after.lsn, "before": before.lsn},
        )
    return Writes(
        results=results,
        wal=int(wal or 0),
        growth=after.database_size - before.database_size,
        tables={
            name: size - before.tables.get(name, 0)
            for name, size in after.tables.items()
            if size != before.tables.get(name, 0)
        },
        others_written=max(0, after.others_written - before.others_written),
        others_created=len(after.databases - before.databases),
    )
