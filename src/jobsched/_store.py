"""The store: every SQL statement jobsched runs, behind one object.

:class:`Store` joins the shared plumbing (:mod:`jobsched._store_base`: the
engine, retries, fenced writes), claiming (:mod:`jobsched._store_claim`) and
ending runs (:mod:`jobsched._store_end`), and adds reading the next due time,
registering jobs and the database clock.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, exc, func, insert, literal_column, select, update
from sqlalchemy.sql.elements import ColumnElement

from ._errors import StoreError
from ._models import JobState
from ._rows import Claim as Claim
from ._rows import ClaimSettings as ClaimSettings
from ._rows import Decision as Decision
from ._rows import JobRow as JobRow
from ._rows import RunEnd as RunEnd
from ._store_base import RETRY_ATTEMPTS as RETRY_ATTEMPTS
from ._store_base import in_state
from ._store_base import is_transient as is_transient
from ._store_claim import ClaimingMixin
from ._store_end import EndingMixin
from ._tables import create_tables


class Store(ClaimingMixin, EndingMixin):
    """The only place that talks to the database.

    Args:
        engine: The host application's engine.
        tables: The table definitions to use.
    """

    # -- plumbing ---------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the tables if needed and check their schema version."""
        self.run(lambda: create_tables(self.engine, self.tables), "creating tables")

    def server_time(self) -> datetime:
        """Return the database server's current time, aware UTC."""
        return self.run(self._server_time, "reading the database clock")

    def _server_time(self) -> datetime:
        with self.engine.connect() as conn:
            value = conn.execute(select(_server_now(self.dialect))).scalar_one()

        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        if not isinstance(moment, datetime):
            raise StoreError(f"the database returned {value!r} as its time")
        if moment.tzinfo is None:
            return moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)

    def _notify(self, conn: Connection) -> None:
        """Wake the listening pollers when this transaction commits (PostgreSQL)."""
        if self.dialect == "postgresql":
            conn.execute(select(func.pg_notify(self.channel, "")))

    # -- reading ------------------------------------------------------------------

    def get_row(self, name: str) -> JobRow | None:
        """Return the job row named ``name``, if there is one."""

        def work() -> JobRow | None:
            jobs = self.tables.jobs
            with self.engine.connect() as conn:
                found = conn.execute(select(jobs).where(jobs.c.name == name)).first()
            return None if found is None else self._row(found._mapping)

        return self.run(work, f"reading job {name!r}")

    def next_event(self, functions: Collection[str]) -> datetime | None:
        """Return the earliest time at which this process has work.

        That is the earliest next run time of a scheduled job among
        ``functions``, or the earliest lease expiry of any running job (any
        process recovers any dead owner's run); see :meth:`next_events`.
        """
        times = [t for t in self.next_events(functions) if t is not None]
        return min(times) if times else None

    def next_events(
        self, functions: Collection[str]
    ) -> tuple[datetime | None, datetime | None]:
        """Return the earliest due time and the earliest lease expiry.

        The due time is among jobs of ``functions``; the lease expiry among all
        running jobs. One query, answered by the due and lease indexes.
        """
        jobs = self.tables.jobs
        lease = (
            select(func.min(jobs.c.lease_until))
            .where(in_state(jobs, JobState.RUNNING))
            .scalar_subquery()
        )
        due = (
            select(func.min(jobs.c.next_run_at))
            .where(in_state(jobs, JobState.SCHEDULED))
            .where(jobs.c.function.in_(sorted(functions)))
            .scalar_subquery()
        )
        columns = [due, lease] if functions else [lease]

        def work() -> tuple[datetime | None, datetime | None]:
            with self.engine.connect() as conn:
                found = tuple(conn.execute(select(*columns)).one())
            return (found[0], found[1]) if functions else (None, found[0])

        return self.run(work, "polling for due jobs")

    # -- registering ----------------------------------------------------------------

    def insert_job(self, values: dict[str, Any], now: datetime) -> bool:
        """Insert a job row unless one with its name exists.

        Returns:
            ``True`` when this call inserted it, ``False`` when the name was taken
            (also when another process inserted it at the same moment).
        """
        jobs = self.tables.jobs
        row = {
            "attempt": 0,
            "version": 0,
            "missed_count": 0,
            "created_at": now,
            "updated_at": now,
            **values,
        }

        def work() -> bool:
            with self.engine.connect() as conn:
                try:
                    conn.execute(insert(jobs).values(row))
                    self._notify(conn)
                    conn.commit()
                except exc.IntegrityError:
                    conn.rollback()
                    return False
            return True

        return self.run(work, f"inserting job {values['name']!r}")

    def update_job(self, row: JobRow, values: dict[str, Any], now: datetime) -> bool:
        """Change a job row if it still has the version that was read.

        A row that is running keeps its version, so that the owner's lease
        renewals and its final write (fenced by owner and version) still match:
        such a change only touches columns that the owner's writes leave alone
        (schedule, arguments, options).

        Returns:
            Whether the row was changed (``False``: someone changed it first).
        """
        jobs = self.tables.jobs
        running = row.status is JobState.RUNNING
        statement = (
            update(jobs)
            .where(
                jobs.c.id == row.id,
                jobs.c.version == row.version,
                jobs.c.status == row.status.value,
            )
            .values(
                **values,
                version=jobs.c.version + (0 if running else 1),
                updated_at=now,
            )
        )

        return self.run(lambda: self.change(statement), f"updating job {row.name!r}")

    def change(self, statement: Any) -> bool:
        """Run one fenced ``UPDATE``; tell the pollers if it changed a row.

        Returns:
            Whether exactly one row was changed.
        """
        with self.engine.begin() as conn:
            changed = conn.execute(statement).rowcount == 1
            if changed:
                self._notify(conn)
        return changed


def _server_now(dialect: str) -> ColumnElement[Any]:
    """Return an SQL expression for the server's current UTC time."""
    if dialect == "postgresql":
        return literal_column("(clock_timestamp() AT TIME ZONE 'UTC')")
    if dialect in ("mysql", "mariadb"):
        return literal_column("UTC_TIMESTAMP(6)")
    if dialect == "sqlite":
        return literal_column("strftime('%Y-%m-%d %H:%M:%f', 'now')")
    return func.current_timestamp()
