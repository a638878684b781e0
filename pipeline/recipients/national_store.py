"""Applying a national extraction to the directory: staged, set-based, in one transaction.

The rows are streamed into temporary tables (COPY on PostgreSQL, batched INSERTs on
SQLite), then the directory is brought in step with a fixed number of set-based
statements, whatever the file's size: national recipients created, renamed or removed;
their MSSanté mailboxes added, changed ("Dématérialisation") or withdrawn. An unchanged
file changes nothing. The caller's transaction holds it all: a refused file, or a failure
half-way, leaves the directory as it was.

Only recipients whose `source` is `national` are touched. A recipient the laboratory keeps
(`local`: CSV or by hand) that holds the same identifier or key is left exactly as it is,
and the national rows naming it are counted as kept, not applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from pipeline.db import utcnow
from pipeline.recipients.models import (
    LOCAL,
    NATIONAL,
    Channel,
    Recipient,
    RecipientIdentifier,
)
from pipeline.recipients.national_files import (
    Mailbox,
    NationalFileError,
    Practitioner,
    ProgressFn,
    Skipped,
    find_sources,
    read_mailboxes,
    read_practitioners,
)

MSSANTE_KIND = "mssante"
#: Without `allow_removals`, a file may withdraw at most this share of the national
#: mailboxes: a truncated download must not empty the directory.
MAX_WITHDRAWN_SHARE = 0.10
_BATCH = 5000

_staging = MetaData()
MAILBOXES_IN = Table(
    "national_mailboxes_in",
    _staging,
    Column("line", Integer, nullable=False),
    Column("key", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("id_type", String(16), nullable=False),
    Column("id_value", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("specialty", String(200), nullable=False),
    Column("address", String(500), nullable=False),
    Column("accepts_results", Boolean, nullable=True),
    Column("priority", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)
PEOPLE_IN = Table(
    "national_people_in",
    _staging,
    Column("line", Integer, nullable=False),
    Column("key", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("specialty", String(200), nullable=False),
    prefixes=["TEMPORARY"],
)
KEYS_IN = Table(
    "national_keys_in",
    _staging,
    Column("key", String(64), nullable=False, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("id_type", String(16), nullable=False),
    Column("id_value", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("specialty", String(200), nullable=False),
    prefixes=["TEMPORARY"],
)


@dataclass
class NationalReport:
    rows: int = 0
    recipients_created: int = 0
    recipients_updated: int = 0
    recipients_removed: int = 0
    mailboxes_added: int = 0
    mailboxes_changed: int = 0
    #: (recipient key, address) of every mailbox withdrawn: deliveries queued for one fail.
    withdrawn: list[tuple[str, str]] = field(default_factory=list)
    #: Recipients the laboratory keeps itself (same identifier or key): left alone.
    kept_local: int = 0
    skipped: Skipped = field(default_factory=Skipped)

    @property
    def changed(self) -> bool:
        return bool(
            self.recipients_created
            or self.recipients_updated
            or self.recipients_removed
            or self.mailboxes_added
            or self.mailboxes_changed
            or self.withdrawn
        )


def apply_national(
    session: Session,
    mailboxes: Iterable[Mailbox],
    practitioners: Iterable[Practitioner],
    report: NationalReport,
    *,
    allow_removals: bool = False,
    now: datetime | None = None,
) -> None:
    """Stage the rows, then bring the national part of the directory in step with them.
    The caller commits (or rolls back: nothing is half-applied)."""
    now = now or utcnow()
    connection = session.connection()
    postgres = connection.dialect.name == "postgresql"
    for table in (MAILBOXES_IN, PEOPLE_IN, KEYS_IN):
        table.drop(connection, checkfirst=True)
        table.create(connection)
    # A failure leaves them to the caller's rollback (which takes them away: they were
    # made in its transaction).
    report.rows = _load(session, MAILBOXES_IN, (_mailbox_row(m) for m in mailboxes), postgres)
    _load(session, PEOPLE_IN, (_person_row(p) for p in practitioners), postgres)
    _merge(session, report, allow_removals=allow_removals, now=now)
    for table in (MAILBOXES_IN, PEOPLE_IN, KEYS_IN):
        table.drop(connection)


def _mailbox_row(m: Mailbox) -> tuple[Any, ...]:
    return (
        m.line,
        m.key,
        m.kind,
        m.id_type,
        m.id_value,
        m.name,
        m.specialty,
        m.address,
        m.accepts_results,
        m.priority,
    )


def _person_row(p: Practitioner) -> tuple[Any, ...]:
    return (p.line, p.key, p.name, p.specialty)


def _load(session: Session, table: Table, rows: Iterator[tuple[Any, ...]], postgres: bool) -> int:
    """Stream `rows` into a staging table; returns how many."""
    names = [column.name for column in table.columns]
    count = 0
    if postgres:
        driver = session.connection().connection.driver_connection
        assert driver is not None
        command = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
        with driver.cursor() as cursor, cursor.copy(command) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    else:
        statement = insert(table)
        while batch := list(islice(rows, _BATCH)):
            session.execute(statement, [dict(zip(names, row, strict=True)) for row in batch])
            count += len(batch)
    if not postgres:
        session.execute(text(f"CREATE INDEX {table.name}_key ON {table.name} (key, line)"))
    session.execute(text(f"ANALYZE {table.name}"))
    return count


def _merge(
    session: Session,
    report: NationalReport,
    *,
    allow_removals: bool,
    now: datetime,
) -> None:
    m, p, k = MAILBOXES_IN.c, PEOPLE_IN.c, KEYS_IN.c
    recipients = cast(Table, Recipient.__table__)
    identifiers = cast(Table, RecipientIdentifier.__table__)
    channels = cast(Table, Channel.__table__)
    r, ri, ch = recipients.c, identifiers.c, channels.c

    if session.get_bind().dialect.name == "postgresql":
        # Fresh statistics, or the planner may loop over what it believes are a few rows
        # (autovacuum has not seen yesterday's import yet). Not on an empty table: the
        # planner's guesses for a never-analysed table serve a first import better.
        for table in (recipients, identifiers, channels):
            if session.scalar(select(exists().select_from(table))):
                session.execute(text(f"ANALYZE {table.name}"))
    # The same mailbox twice for one recipient: the first row wins.
    later = MAILBOXES_IN.alias("earlier")
    session.execute(
        delete(MAILBOXES_IN).where(
            exists().where(
                later.c.key == m.key, later.c.address == m.address, later.c.line < m.line
            )
        )
    )
    # Recipients the laboratory keeps itself are not the import's to change.
    local_owner = or_(
        exists().where(r.key == m.key, r.source == LOCAL),
        exists()
        .select_from(identifiers.join(recipients, r.id == ri.recipient_id))
        .where(ri.id_type == m.id_type, ri.value == m.id_value, r.source == LOCAL),
    )
    report.kept_local = (
        session.scalar(select(func.count(func.distinct(m.key))).where(local_owner)) or 0
    )
    if report.kept_local:
        session.execute(delete(MAILBOXES_IN).where(local_owner))

    # One row of facts per recipient: its first mailbox row, named from the activity file
    # when it has the person.
    first_m = select(m.key, func.min(m.line).label("line")).group_by(m.key).subquery()
    first_p = select(p.key, func.min(p.line).label("line")).group_by(p.key).subquery()
    people = (
        select(p.key, p.name, p.specialty)
        .join(first_p, and_(first_p.c.key == p.key, first_p.c.line == p.line))
        .subquery()
    )
    session.execute(
        insert(KEYS_IN).from_select(
            ["key", "kind", "id_type", "id_value", "name", "specialty"],
            select(
                m.key,
                m.kind,
                m.id_type,
                m.id_value,
                func.coalesce(func.nullif(people.c.name, ""), m.name),
                func.coalesce(func.nullif(people.c.specialty, ""), m.specialty),
            )
            .join(first_m, and_(first_m.c.key == m.key, first_m.c.line == m.line))
            .outerjoin(people, people.c.key == m.key),
        )
    )
    session.execute(text(f"ANALYZE {KEYS_IN.name}"))

    national = r.source == NATIONAL
    # Mailboxes withdrawn: national channels no row names any more.
    wanted = exists().where(m.key == r.key, m.address == ch.address)
    withdrawn = (
        select(ch.id, r.key, ch.address)
        .join(recipients, r.id == ch.recipient_id)
        .where(national, ch.kind == MSSANTE_KIND, ~wanted)
    )
    rows = session.execute(withdrawn).all()
    total = (
        session.scalar(
            select(func.count())
            .select_from(channels.join(recipients, r.id == ch.recipient_id))
            .where(national)
        )
        or 0
    )
    if rows and not allow_removals and len(rows) > MAX_WITHDRAWN_SHARE * total:
        raise NationalFileError(
            f"this file would withdraw {len(rows)} of the {total} national mailboxes "
            f"(more than {MAX_WITHDRAWN_SHARE:.0%}): a truncated download? If it is right, "
            "import again with --allow-removals; nothing was imported"
        )
    report.withdrawn = [(key, address) for _, key, address in rows]
    if rows:
        session.execute(delete(channels).where(ch.id.in_(select(withdrawn.subquery().c.id))))
    # Recipients gone from the file.
    gone = and_(national, ~exists().where(k.key == r.key))
    report.recipients_removed = _counted(session, select(r.id).where(gone))
    session.execute(delete(recipients).where(gone))

    # New recipients, and their identifier.
    new_recipients = select(
        k.key,
        k.kind,
        k.name,
        func.nullif(k.specialty, ""),
        literal(NATIONAL),
        bindparam("now", now, type_=recipients.c.created_at.type),
        bindparam("now2", now, type_=recipients.c.updated_at.type),
    ).where(~exists().where(r.key == k.key))
    report.recipients_created = _counted(session, new_recipients)
    session.execute(
        insert(recipients).from_select(
            ["key", "kind", "name", "specialty", "source", "created_at", "updated_at"],
            new_recipients,
        )
    )
    session.execute(
        insert(identifiers).from_select(
            ["recipient_id", "id_type", "value", "authority"],
            select(r.id, k.id_type, k.id_value, literal(""))
            .join(KEYS_IN, k.key == r.key)
            .where(national, ~exists().where(ri.id_type == k.id_type, ri.value == k.id_value)),
        )
    )
    # Renamed, or a new specialty.
    renamed = and_(
        national,
        r.key == k.key,
        or_(
            r.name != k.name,
            r.kind != k.kind,
            r.specialty.is_distinct_from(func.nullif(k.specialty, "")),
        ),
    )
    report.recipients_updated = _counted(session, select(r.id).where(renamed))
    if report.recipients_updated:
        session.execute(
            update(recipients)
            .where(renamed)
            .values(
                name=k.name, kind=k.kind, specialty=func.nullif(k.specialty, ""), updated_at=now
            )
        )

    # Mailboxes: new ones, then a changed flag or priority.
    new_mailboxes = (
        select(r.id, literal(MSSANTE_KIND), m.address, m.priority, m.accepts_results)
        .join(recipients, r.key == m.key)
        .where(
            national,
            ~exists().where(
                ch.recipient_id == r.id, ch.kind == MSSANTE_KIND, ch.address == m.address
            ),
        )
    )
    report.mailboxes_added = _counted(session, new_mailboxes)
    session.execute(
        insert(channels).from_select(
            ["recipient_id", "kind", "address", "priority", "accepts_results"], new_mailboxes
        )
    )
    changed = and_(
        ch.kind == MSSANTE_KIND,
        ch.recipient_id == r.id,
        national,
        r.key == m.key,
        ch.address == m.address,
        or_(ch.accepts_results.is_distinct_from(m.accepts_results), ch.priority != m.priority),
    )
    report.mailboxes_changed = _counted(session, select(ch.id).where(changed))
    if report.mailboxes_changed:
        session.execute(
            update(channels)
            .where(changed)
            .values(accepts_results=m.accepts_results, priority=m.priority)
        )


def _counted(session: Session, query: Select[Any]) -> int:
    """How many rows `query` gives (what the statement built on it will touch): the
    drivers' rowcount is not reliable for INSERT … SELECT here."""
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def import_national(
    session: Session,
    paths: list[Path],
    *,
    progress: ProgressFn | None = None,
    allow_removals: bool = False,
) -> NationalReport:
    """Import the extraction files `paths` (`.txt` or `.zip`, see `national_files`) as one
    complete refresh of the national directory; the caller commits."""
    mssante, people = find_sources(paths)
    total = mssante.size + (people.size if people is not None else 0)
    report = NationalReport()
    practitioners = (
        read_practitioners(people, progress, done=mssante.size, total=total)
        if people is not None
        else iter(())
    )
    apply_national(
        session,
        read_mailboxes(mssante, report.skipped, progress, total),
        practitioners,
        report,
        allow_removals=allow_removals,
    )
    return report
