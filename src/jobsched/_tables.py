"""The table definitions, and creating or checking them.

Three tables, each named with a configurable prefix (default ``jobsched_``):

``jobs``
    One row per job: its schedule, arguments, state, next run time and lease.
``runs``
    One row per run, and per fire time recorded as missed.
``meta``
    Key-value rows; ``schema_version`` says which layout the tables have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    exc,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator

from ._errors import SchemaVersionError

logger = logging.getLogger(__name__)

#: The layout of the tables this code reads and writes.
SCHEMA_VERSION = 1
#: The default prefix of every table and index name.
DEFAULT_PREFIX = "jobsched_"
# Longest indexed string: 191 characters keep a utf8mb4 MySQL index in 767 bytes.
NAME_LENGTH = 191
# Long enough for "hostname:pid:uuid4-hex" owner tokens.
OWNER_LENGTH = 128
# How often creating the tables is retried when another process races us.
CREATE_ATTEMPTS = 5


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, stored as naive UTC and read back as aware UTC.

    Storing naive UTC everywhere (``timestamp`` on PostgreSQL, ``DATETIME(6)`` on
    MySQL, text on SQLite) keeps the stored value independent of every session
    time zone, and comparisons in SQL stay plain comparisons.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        """Use microsecond precision on MySQL, whose default is whole seconds."""
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        """Convert an aware datetime to naive UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"an aware datetime is required, got naive {value!r}")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        """Mark a stored naive UTC value as UTC."""
        if value is None:
            return None
        if value.tzinfo is not None:
            return value.astimezone(timezone.utc)
        return value.replace(tzinfo=timezone.utc)


# SQLite only makes INTEGER PRIMARY KEY columns auto-increment.
_Key = BigInteger().with_variant(Integer(), "sqlite")


@dataclass(frozen=True)
class Tables:
    """The bound :class:`~sqlalchemy.Table` objects for one prefix."""

    prefix: str
    metadata: MetaData
    jobs: Table
    runs: Table
    meta: Table


def define_tables(prefix: str = DEFAULT_PREFIX) -> Tables:
    """Define the jobsched tables with the given name prefix.

    Args:
        prefix: Prepended to every table and index name.

    Returns:
        The tables, on a :class:`~sqlalchemy.MetaData` of their own, ready for
        ``metadata.create_all(engine)`` or for a migration tool.
    """
    metadata = MetaData()
    jobs = Table(
        f"{prefix}jobs",
        metadata,
        Column("id", _Key, primary_key=True, autoincrement=True),
        Column("name", String(NAME_LENGTH), nullable=False, unique=True),
        Column("function", String(NAME_LENGTH), nullable=False),
        Column("trigger", Text, nullable=False),
        Column("args", Text, nullable=False),
        Column("options", Text, nullable=False),
        Column("status", String(16), nullable=False),
        # Set by pause(); a running job becomes paused when its run ends.
        Column("paused", Boolean, nullable=False, default=False),
        Column("next_run_at", UTCDateTime),
        Column("scheduled_for", UTCDateTime),
        Column("attempt", Integer, nullable=False, default=0),
        Column("owner", String(OWNER_LENGTH)),
        Column("lease_until", UTCDateTime),
        Column("version", Integer, nullable=False, default=0),
        Column("last_run_at", UTCDateTime),
        Column("last_outcome", String(16)),
        Column("error", Text),
        Column("missed_count", Integer, nullable=False, default=0),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        # Partial where the database has them (PostgreSQL, SQLite): an update
        # that moves a row out of the indexed status adds no index entry.
        Index(
            f"{prefix}jobs_due",
            "status",
            "next_run_at",
            postgresql_where=text("status = 'scheduled'"),
            sqlite_where=text("status = 'scheduled'"),
        ),
        Index(
            f"{prefix}jobs_lease",
            "status",
            "lease_until",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
    )
    runs = Table(
        f"{prefix}runs",
        metadata,
        Column("id", _Key, primary_key=True, autoincrement=True),
        Column("job_id", _Key, nullable=False),
        Column("job_name", String(NAME_LENGTH), nullable=False),
        Column("scheduled_for", UTCDateTime, nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("owner", String(OWNER_LENGTH)),
        Column("started_at", UTCDateTime),
        Column("finished_at", UTCDateTime),
        Column("outcome", String(16), nullable=False),
        Column("error_type", String(255)),
        Column("error_message", Text),
        Column("traceback", Text),
        # The second, independent guard against running one fire time twice.
        UniqueConstraint(
            "job_id", "scheduled_for", "attempt", name=f"{prefix}runs_once"
        ),
        Index(f"{prefix}runs_job", "job_name", "id"),
        # For pruning, which only deletes finished runs: a run row opened by a
        # claim adds no entry until its end.
        Index(
            f"{prefix}runs_finished",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
            sqlite_where=text("finished_at IS NOT NULL"),
        ),
    )
    meta = Table(
        f"{prefix}meta",
        metadata,
        Column("key", String(64), primary_key=True),
        Column("value", String(255), nullable=False),
    )

    # Whoever creates the tables (create_all here, or the application's own
    # metadata.create_all) also records their layout.
    @event.listens_for(meta, "after_create")
    def _write_version(target: Table, connection: Any, **_: Any) -> None:
        connection.execute(
            insert(target).values(key="schema_version", value=str(SCHEMA_VERSION))
        )

    return Tables(prefix=prefix, metadata=metadata, jobs=jobs, runs=runs, meta=meta)


def create_tables(engine: Engine, tables: Tables) -> None:
    """Create the tables if they are missing, and check the schema version.

    Safe to call from many processes at once: a process that loses the race to
    create a table sees it exist on its next try.

    Args:
        engine: Where to create them.
        tables: The tables to create.

    Raises:
        SchemaVersionError: The tables were written by a newer jobsched.
    """
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            tables.metadata.create_all(engine, checkfirst=True)
            break
        except exc.DBAPIError as error:
            # Another process created a table between our check and our CREATE.
            if attempt == CREATE_ATTEMPTS:
                raise
            logger.debug("concurrent table creation, retrying: %s", error)

    _write_schema_version(engine, tables)
    check_schema_version(engine, tables)


def _write_schema_version(engine: Engine, tables: Tables) -> None:
    meta = tables.meta
    with engine.connect() as conn:
        found = conn.execute(
            select(meta.c.value).where(meta.c.key == "schema_version")
        ).scalar()
        if found is not None:
            return

        try:
            conn.execute(
                insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION))
            )
            conn.commit()
        except exc.IntegrityError:
            conn.rollback()  # another process wrote it first


def check_schema_version(engine: Engine, tables: Tables) -> bool:
    """Check that the stored schema is one this code can use.

    Tables created by the application's own migrations may lack the version row;
    they are taken to have the layout of this version.

    Args:
        engine: The database.
        tables: The tables to check.

    Returns:
        ``True`` when the tables exist with a usable schema, ``False`` when they
        do not exist yet.

    Raises:
        SchemaVersionError: The tables were written by a newer jobsched.
    """
    inspector = inspect(engine)
    if not inspector.has_table(tables.jobs.name):
        return False
    if not inspector.has_table(tables.meta.name):
        return True

    meta = tables.meta
    with engine.connect() as conn:
        found = conn.execute(
            select(meta.c.value).where(meta.c.key == "schema_version")
        ).scalar()

    if found is not None and int(found) > SCHEMA_VERSION:
        raise SchemaVersionError(int(found), SCHEMA_VERSION)
    return True
