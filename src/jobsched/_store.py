"""Every SQL statement jobsched runs, and the retrying of transient errors.

Each state change of a job is one conditional ``UPDATE`` whose row count says
whether this process won: a claim matches only the version it read, and every
write after a claim matches only the owner and version that the claim produced
(fencing). A lost race is a normal result (``False`` or an empty list), never an
exception. Transient database errors (lost connections, ``database is locked``,
deadlocks, serialization failures) retry the whole transaction with backoff; an
error that outlasts the retries is raised as :class:`~jobsched.StoreError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    exc,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from ._errors import StoreError
from ._models import JobState, RunOutcome
from ._notify import channel_name
from ._pgbulk import PostgresBulk, can_bulk
from ._rows import Claim as Claim
from ._rows import ClaimSettings as ClaimSettings
from ._rows import Decision as Decision
from ._rows import JobRow as JobRow
from ._rows import RunEnd as RunEnd
from ._store_end import EndingMixin
from ._tables import Tables, create_tables

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Attempts of one transaction before a transient error is given up on.
RETRY_ATTEMPTS = 6
# Backoff between those attempts: starts small, doubles, capped (seconds).
RETRY_INITIAL_WAIT = 0.05
RETRY_MAX_WAIT = 2.0


def is_transient(error: BaseException) -> bool:
    """Tell whether a database error may go away if the transaction is retried."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (exc.OperationalError, exc.InterfaceError))


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    logger.warning(
        "transient database error (attempt %d of %d), retrying: %s",
        state.attempt_number,
        RETRY_ATTEMPTS,
        error,
        extra={"jobsched": {"action": "db_retry", "attempt": state.attempt_number}},
    )


class Store(EndingMixin):
    """The only place that talks to the database.

    Args:
        engine: The host application's engine.
        tables: The table definitions to use.
    """

    def __init__(self, engine: Engine, tables: Tables) -> None:
        self.engine = engine
        self.tables = tables
        self.channel = channel_name(tables.prefix)
        self.dialect = engine.dialect.name
        # One statement per batch where the engine allows it (PostgreSQL with
        # psycopg 3, whose array and binary parameters it uses).
        self._bulk = PostgresBulk(engine, tables) if can_bulk(engine) else None
        self._retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(RETRY_ATTEMPTS),
            wait=wait_exponential(multiplier=RETRY_INITIAL_WAIT, max=RETRY_MAX_WAIT)
            + wait_random(0, RETRY_INITIAL_WAIT),
            before_sleep=_log_retry,
            reraise=True,
        )

    # -- plumbing ---------------------------------------------------------------

    def run(self, work: Callable[[], T], what: str) -> T:
        """Run ``work`` with transient errors retried, wrapping what remains.

        Args:
            work: Opens its own connection and transaction, so a retry starts over.
            what: Names the operation in the error message.

        Returns:
            What ``work`` returned.

        Raises:
            StoreError: The database failed with an error that was not transient,
                or that outlasted the retries.
        """
        try:
            return self._retrying(work)
        except exc.SQLAlchemyError as error:
            raise StoreError(f"{what} failed: {error}") from error

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

    def _lock_candidates(self) -> bool:
        """Tell whether the engine can skip rows that other claimers locked."""
        version = self.engine.dialect.server_version_info or ()
        if self.dialect == "postgresql":
            return True
        if self.dialect in ("mysql", "mariadb"):
            is_maria = getattr(self.engine.dialect, "is_mariadb", False)
            return version >= ((10, 6) if is_maria else (8, 0, 1))
        return False

    # -- reading ------------------------------------------------------------------

    def _row(self, mapping: Any) -> JobRow:
        return JobRow(
            id=mapping["id"],
            name=mapping["name"],
            function=mapping["function"],
            trigger=mapping["trigger"],
            args=mapping["args"],
            options=mapping["options"],
            status=_state(mapping["status"]),
            next_run_at=mapping["next_run_at"],
            scheduled_for=mapping["scheduled_for"],
            attempt=mapping["attempt"],
            owner=mapping["owner"],
            lease_until=mapping["lease_until"],
            version=mapping["version"],
        )

    @cached_property
    def _row_columns(self) -> list[Any]:
        """The columns of a :class:`JobRow`, in the order of its fields."""
        return [self.tables.jobs.c[field.name] for field in fields(JobRow)]

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
            .where(jobs.c.status == JobState.RUNNING.value)
            .scalar_subquery()
        )
        due = (
            select(func.min(jobs.c.next_run_at))
            .where(jobs.c.status == JobState.SCHEDULED.value)
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

    # -- claiming -------------------------------------------------------------------

    def claim_due(
        self,
        functions: Collection[str],
        owner: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        decide: Callable[[JobRow], Decision],
        applied: list[tuple[JobRow, Decision]] | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` due jobs among ``functions`` for ``owner``.

        Every candidate is decided by ``decide`` (which may run it, skip its
        missed fire times, or mark it broken) and written with one compare-and-set
        ``UPDATE`` on its id, status and version; only rows whose update matched
        are returned as claims, together with their new run rows. When
        ``applied`` is given, every decision that was written (claims, skips and
        broken rows alike) is appended to it after the commit.
        """
        if not functions or limit <= 0:
            return []

        jobs = self.tables.jobs
        query = (
            select(*self._row_columns)
            .where(jobs.c.status == JobState.SCHEDULED.value)
            .where(jobs.c.next_run_at <= now)
            .where(jobs.c.function.in_(sorted(functions)))
            .order_by(jobs.c.next_run_at)
            .limit(limit)
        )
        locking = self._lock_candidates()
        if locking:
            query = query.with_for_update(skip_locked=True)

        settings = ClaimSettings(owner, now, lease, decide)

        def work() -> list[Claim]:
            done: list[tuple[JobRow, Decision]] = []
            rows: list[JobRow] = []
            try:
                claims = self._claim_batch(query, locking, settings, rows, done)
            except exc.IntegrityError as error:
                # A fire time that already has a run row must not block every
                # other due job: redo the batch one job at a time.
                logger.warning(
                    "claim batch rejected by the run history: %s", error.orig
                )
                done.clear()
                claims = [
                    c for row in rows for c in self._claim_alone(row, settings, done)
                ]

            if applied is not None:  # committed: report every decision that won
                applied.extend(done)
            return claims

        return self.run(work, "claiming due jobs")

    def _claim_batch(
        self,
        query: Any,
        locking: bool,
        settings: ClaimSettings,
        rows: list[JobRow],
        done: list[tuple[JobRow, Decision]],
    ) -> list[Claim]:
        """Read due rows into ``rows`` and claim them in one transaction."""
        if locking:
            with self.engine.begin() as conn:
                rows.extend(map(_job_row, conn.execute(query).all()))
                return self._claim_rows(conn, rows, *settings, done)

        # No row locks (SQLite): read first, then write in a transaction that
        # starts with a write, so no read lock is ever upgraded.
        with self.engine.connect() as conn:
            rows.extend(map(_job_row, conn.execute(query).all()))
        with self.engine.begin() as conn:
            return self._claim_rows(conn, rows, *settings, done)

    def _claim_alone(
        self, row: JobRow, settings: ClaimSettings, done: list[tuple[JobRow, Decision]]
    ) -> list[Claim]:
        """Claim one row; if its fire time already has a run row, skip that time."""
        try:
            with self.engine.begin() as conn:
                return self._claim_rows(conn, [row], *settings, done)
        except exc.IntegrityError:
            pass

        decision = settings.decide(row)
        when = decision.run_for.isoformat() if decision.run_for else "?"
        skip = Decision(
            status=JobState.SCHEDULED if decision.next_run_at else JobState.DONE,
            next_run_at=decision.next_run_at,
            error=(
                f"fire time {when} (attempt {decision.attempt}) already has a run; "
                "skipped so that it does not run twice"
            ),
        )
        logger.error("job %r: %s", row.name, skip.error)
        owner, now, lease, _ = settings
        with self.engine.begin() as conn:
            won, _ = self._claim_one(conn, row, skip, owner, now, lease)
        if won:
            done.append((row, skip))
        return []

    def _claim_rows(
        self,
        conn: Connection,
        rows: Iterable[JobRow],
        owner: str,
        now: datetime,
        lease: timedelta,
        decide: Callable[[JobRow], Decision],
        done: list[tuple[JobRow, Decision]],
    ) -> list[Claim]:
        decided = [(row, decide(row)) for row in rows]
        plain = [(r, d) for r, d in decided if d.run_for is not None and not d.missed]
        special = [(r, d) for r, d in decided if d.run_for is None or d.missed]

        claims = self._claim_plain(conn, plain, owner, now, lease, done)
        for row, decision in special:
            won, claim = self._claim_one(conn, row, decision, owner, now, lease)
            if won:
                done.append((row, decision))
            if claim is not None:
                claims.append(claim)

        return sorted(claims, key=lambda claim: claim.scheduled_for)

    def _claim_plain(
        self,
        conn: Connection,
        decided: list[tuple[JobRow, Decision]],
        owner: str,
        now: datetime,
        lease: timedelta,
        done: list[tuple[JobRow, Decision]],
    ) -> list[Claim]:
        """Claim rows that simply run, and open their run rows.

        On PostgreSQL one statement does it all and says which rows it took
        (:mod:`jobsched._pgbulk`). Elsewhere each row's compare-and-set is its
        own ``UPDATE ... WHERE id AND version AND status``, sent together; which
        of them won is then read back under the same fence (owner and new
        version), never taken from a row count.
        """
        if not decided:
            return []

        if self._bulk is not None:
            run_ids = self._bulk.claim(conn, decided, owner, now, lease)
            won = [(r, d) for r, d in decided if r.id in run_ids]
            claims = [self._new_claim(r, d, owner, now, run_ids[r.id]) for r, d in won]
        else:
            won = self._claim_each(conn, decided, owner, now, lease)
            claims = [self._new_claim(r, d, owner, now) for r, d in won]
            if claims:
                conn.execute(
                    insert(self.tables.runs), [self._run_row(c) for c in claims]
                )
                claims = self._with_run_ids(conn, claims)

        if len(won) < len(decided):
            taken = {row.id for row, _ in won}
            for row, _ in decided:
                if row.id not in taken:
                    logger.debug("job %r was claimed by another process", row.name)
        done.extend(won)
        return claims

    def _claim_each(
        self,
        conn: Connection,
        decided: list[tuple[JobRow, Decision]],
        owner: str,
        now: datetime,
        lease: timedelta,
    ) -> list[tuple[JobRow, Decision]]:
        """Send one compare-and-set per row, then read back which ones won."""
        jobs = self.tables.jobs
        conn.execute(
            self._claim_statement,
            [
                {
                    "b_id": row.id,
                    "b_version": row.version,
                    "b_next": decision.next_run_at,
                    "b_attempt": decision.attempt,
                    "b_for": decision.run_for,
                    "b_owner": owner,
                    "b_lease": now + lease,
                    "b_now": now,
                }
                for row, decision in decided
            ],
        )

        check = select(jobs.c.id, jobs.c.version).where(
            jobs.c.id.in_([row.id for row, _ in decided]),
            jobs.c.owner == owner,
            jobs.c.status == JobState.RUNNING.value,
        )
        taken = dict(conn.execute(check).all())
        return [(r, d) for r, d in decided if taken.get(r.id) == r.version + 1]

    @cached_property
    def _claim_statement(self) -> Any:
        """The compare-and-set ``UPDATE`` that claims one row."""
        jobs = self.tables.jobs
        return (
            update(jobs)
            .where(
                jobs.c.id == bindparam("b_id"),
                jobs.c.version == bindparam("b_version"),
                jobs.c.status == JobState.SCHEDULED.value,
            )
            .values(
                status=JobState.RUNNING.value,
                owner=bindparam("b_owner"),
                lease_until=bindparam("b_lease"),
                last_run_at=bindparam("b_now"),
                updated_at=bindparam("b_now"),
                version=jobs.c.version + 1,
                next_run_at=bindparam("b_next"),
                attempt=bindparam("b_attempt"),
                scheduled_for=bindparam("b_for"),
                error=None,
            )
        )

    def _with_run_ids(self, conn: Connection, claims: list[Claim]) -> list[Claim]:
        """Fill in the keys of the run rows just inserted for ``claims``."""
        runs = self.tables.runs
        query = select(
            runs.c.id, runs.c.job_id, runs.c.scheduled_for, runs.c.attempt
        ).where(
            runs.c.job_id.in_([c.job_id for c in claims]),
            runs.c.outcome == RunOutcome.RUNNING.value,
        )
        ids = {
            (job, slot, attempt): key for key, job, slot, attempt in conn.execute(query)
        }
        return [
            replace(c, run_id=ids.get((c.job_id, c.scheduled_for, c.attempt), 0))
            for c in claims
        ]

    def _claim_one(
        self,
        conn: Connection,
        row: JobRow,
        decision: Decision,
        owner: str,
        now: datetime,
        lease: timedelta,
    ) -> tuple[bool, Claim | None]:
        """Apply one decision that skips fire times or marks a row broken.

        Returns:
            Whether the row was changed (``False``: another process changed it
            first), and the new claim when the decision runs a fire time.
        """
        jobs = self.tables.jobs
        values: dict[str, Any] = {
            "status": decision.status.value,
            "next_run_at": decision.next_run_at,
            "attempt": decision.attempt,
            "scheduled_for": decision.scheduled_for,
            "missed_count": jobs.c.missed_count + decision.missed_total,
            "error": decision.error,
        }
        if decision.run_for is not None:
            values.update(owner=owner, lease_until=now + lease, last_run_at=now)

        fence = and_(
            jobs.c.id == row.id,
            jobs.c.version == row.version,
            jobs.c.status == JobState.SCHEDULED.value,
        )
        if not self._set_if(conn, fence, values, now):
            logger.debug("lost the claim of job %r to another process", row.name)
            return False, None

        self._record_missed(conn, row.id, row.name, decision, now)
        if decision.run_for is None:
            return True, None

        claim = self._new_claim(row, decision, owner, now)
        result = conn.execute(insert(self.tables.runs).values(self._run_row(claim)))
        key = result.inserted_primary_key
        return True, replace(claim, run_id=int(key[0]) if key else 0)

    @staticmethod
    def _new_claim(
        row: JobRow, decision: Decision, owner: str, now: datetime, run_id: int = 0
    ) -> Claim:
        return Claim(
            job_id=row.id,
            name=row.name,
            function=row.function,
            trigger=row.trigger,
            args=row.args,
            options=row.options,
            owner=owner,
            version=row.version + 1,
            scheduled_for=decision.run_for or now,
            attempt=decision.attempt,
            started_at=now,
            run_id=run_id,
        )

    def _set_if(
        self,
        conn: Connection,
        condition: ColumnElement[bool],
        values: dict[str, Any],
        now: datetime,
    ) -> bool:
        """Apply ``values`` to the one job row matching ``condition``, fenced."""
        jobs = self.tables.jobs
        changes = {"version": jobs.c.version + 1, "updated_at": now, **values}
        statement = update(jobs).where(condition).values(**changes)
        return conn.execute(statement).rowcount == 1

    @staticmethod
    def _run_row(claim: Claim) -> dict[str, Any]:
        return {
            "job_id": claim.job_id,
            "job_name": claim.name,
            "scheduled_for": claim.scheduled_for,
            "attempt": claim.attempt,
            "owner": claim.owner,
            "started_at": claim.started_at,
            "outcome": RunOutcome.RUNNING.value,
        }

    def _record_missed(
        self,
        conn: Connection,
        job_id: int,
        name: str,
        decision: Decision,
        now: datetime,
    ) -> None:
        if not decision.missed:
            return

        # A retry after a commit whose reply was lost may record them again.
        runs = self.tables.runs
        recorded = set(
            conn.execute(
                select(runs.c.scheduled_for).where(
                    runs.c.job_id == job_id,
                    runs.c.attempt == 0,
                    runs.c.scheduled_for.in_(decision.missed),
                )
            ).scalars()
        )
        missed = [fire for fire in decision.missed if fire not in recorded]
        if not missed:
            return

        logger.info(
            "job %r missed %d fire time(s): %s",
            name,
            decision.missed_total,
            decision.reason,
            extra={"jobsched": {"action": "run_missed", "job": name}},
        )
        conn.execute(
            insert(self.tables.runs),
            [
                {
                    "job_id": job_id,
                    "job_name": name,
                    "scheduled_for": fire,
                    "attempt": 0,
                    "finished_at": now,
                    "outcome": RunOutcome.MISSED.value,
                    "error_message": decision.reason,
                }
                for fire in missed
            ],
        )


def _job_row(values: Any) -> JobRow:
    """Build a :class:`JobRow` from the values of :attr:`Store._row_columns`."""
    (key, name, function, trigger, args, options, status) = values[:7]
    (next_run_at, scheduled_for, attempt, owner, lease_until, version) = values[7:]
    return JobRow(
        key,
        name,
        function,
        trigger,
        args,
        options,
        _state(status),
        next_run_at,
        scheduled_for,
        attempt,
        owner,
        lease_until,
        version,
    )


def _state(value: str) -> JobState:
    """Read a stored status; one this version does not know counts as broken."""
    try:
        return JobState(value)
    except ValueError:
        return JobState.BROKEN


def _server_now(dialect: str) -> ColumnElement[Any]:
    """Return an SQL expression for the server's current UTC time."""
    if dialect == "postgresql":
        return literal_column("(clock_timestamp() AT TIME ZONE 'UTC')")
    if dialect in ("mysql", "mariadb"):
        return literal_column("UTC_TIMESTAMP(6)")
    if dialect == "sqlite":
        return literal_column("strftime('%Y-%m-%d %H:%M:%f', 'now')")
    return func.current_timestamp()
