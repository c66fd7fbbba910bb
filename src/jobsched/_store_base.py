"""What every part of the store shares: the engine, retries and common writes.

Each state change of a job is one conditional ``UPDATE``: a claim matches only
the version it read, and every write after a claim matches only the owner and
version that the claim produced (fencing). A lost race is a normal result
(``False`` or an empty list), never an exception. Transient database errors
(lost connections, ``database is locked``, deadlocks, serialization failures)
retry the whole transaction with backoff; an error that outlasts the retries is
raised as :class:`~jobsched.StoreError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, exc, insert, literal, select, update
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
from ._jsonbatch import can_batch
from ._models import JobState, RunOutcome
from ._notify import channel_name
from ._pgbulk import PostgresBulk, can_bulk
from ._rows import Decision, JobRow
from ._tables import Tables

logger = logging.getLogger("jobsched._store")

T = TypeVar("T")

# Attempts of one transaction before a transient error is given up on.
RETRY_ATTEMPTS = 6
# Backoff between those attempts: starts small, doubles, capped (seconds).
RETRY_INITIAL_WAIT = 0.05
RETRY_MAX_WAIT = 2.0


# MySQL/MariaDB server errors worth a retry. PyMySQL raises OperationalError for
# every server error it does not classify, including refusals that would only
# fail again (a CHECK constraint, a trigger's SIGNAL); client errors (2000 to
# 2999: the connection) are always worth one.
_MYSQL_TRANSIENT = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161,  # network
        1205,  # lock wait timeout
        1213,  # deadlock
        1290, 1836,  # read-only (a failover in progress)
        1317,  # query interrupted
        1927,  # connection killed
        4031,  # disconnected for inactivity
    }
)  # fmt: skip


def is_transient(error: BaseException) -> bool:
    """Tell whether a database error may go away if the transaction is retried."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.InterfaceError):
        return True
    if not isinstance(error, exc.OperationalError):
        return False
    code = _mysql_code(error)
    return code is None or 2000 <= code < 3000 or code in _MYSQL_TRANSIENT


def _mysql_code(error: exc.DBAPIError) -> int | None:
    """The MySQL/MariaDB error number of ``error``, or ``None`` for other drivers."""
    driver = type(error.orig).__module__
    if not driver.startswith(("pymysql", "MySQLdb", "mysql")):
        return None
    args = getattr(error.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    logger.warning(
        "transient database error (attempt %d of %d), retrying: %s",
        state.attempt_number,
        RETRY_ATTEMPTS,
        error,
        extra={"jobsched": {"action": "db_retry", "attempt": state.attempt_number}},
    )


def in_state(jobs: Any, state: JobState) -> ColumnElement[bool]:
    """``status = '<state>'`` with the status written into the SQL text.

    A bound parameter would hide it from the planner of a prepared statement's
    generic plan, which could then not use the partial indexes.
    """
    return jobs.c.status == literal(state.value, literal_execute=True)  # type: ignore[no-any-return]


class StoreBase:
    """The engine, the tables, the retrying of transactions and shared writes.

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

    def _without_gap_locks(self, conn: Connection) -> None:
        """Run this transaction at ``READ COMMITTED`` on MySQL/MariaDB.

        Call it first thing in the transaction. At the default ``REPEATABLE
        READ``, InnoDB locks the gaps of the due index that a claim batch
        reads, and concurrent claims, ends and lease renewals then deadlock on
        each other's updates of the indexes; compare-and-set and fenced writes
        need no more than row locks.
        """
        if self.dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")

    @cached_property
    def _json_dialect(self) -> str | None:
        """The dialect, where per-row writes go as one JSON batch statement.

        See :mod:`jobsched._jsonbatch`; ``None`` elsewhere (and on PostgreSQL,
        which has statements of its own).
        """
        if self._bulk is None and can_batch(self.engine):
            return self.dialect
        return None

    def _lock_candidates(self) -> bool:
        """Tell whether the engine can skip rows that other claimers locked."""
        version = self.engine.dialect.server_version_info or ()
        if self.dialect == "postgresql":
            return True
        if self.dialect in ("mysql", "mariadb"):
            is_maria = getattr(self.engine.dialect, "is_mariadb", False)
            return version >= ((10, 6) if is_maria else (8, 0, 1))
        return False

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
