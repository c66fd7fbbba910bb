"""The SQL behind the management API: listing, pausing, triggering, removing.

Listings are paginated by key, never by OFFSET, so a page costs the same however
deep it is: jobs are ordered by name, runs by id (newest first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, update

from ._errors import ConfigurationError, JobNotFound, SchedulerStateError
from ._models import JobInfo, JobState, RunInfo, RunOutcome
from ._registry import decode_args
from ._rows import JobRow
from ._store import Store
from ._triggers import Trigger, trigger_from_spec

#: Page size of a listing when none is given.
DEFAULT_PAGE_SIZE = 100
#: The largest page a listing returns.
MAX_PAGE_SIZE = 1000


def check_page_size(limit: int) -> None:
    """Reject a page size outside 1..MAX_PAGE_SIZE.

    Raises:
        ConfigurationError: The size is out of range.
    """
    if (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not (1 <= limit <= MAX_PAGE_SIZE)
    ):
        raise ConfigurationError(
            f"page size must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}"
        )


class Admin:
    """Management queries on top of a :class:`~jobsched._store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.jobs = store.tables.jobs
        self.runs = store.tables.runs

    def list_rows(
        self, status: JobState | None, after: str | None, limit: int
    ) -> list[tuple[JobRow, dict[str, Any]]]:
        """Return up to ``limit`` job rows ordered by name, after the cursor."""
        jobs = self.jobs
        query = select(jobs).order_by(jobs.c.name).limit(limit)
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if after is not None:
            query = query.where(jobs.c.name > after)

        def work() -> list[tuple[JobRow, dict[str, Any]]]:
            with self.store.engine.connect() as conn:
                return [
                    (self.store._row(r._mapping), dict(r._mapping))
                    for r in conn.execute(query)
                ]

        return self.store.run(work, "listing jobs")

    def get_full(self, name: str) -> tuple[JobRow, dict[str, Any]]:
        """Return one job row and all its columns.

        Raises:
            JobNotFound: There is no such job.
        """
        jobs = self.jobs

        def work() -> tuple[JobRow, dict[str, Any]] | None:
            with self.store.engine.connect() as conn:
                found = conn.execute(select(jobs).where(jobs.c.name == name)).first()
            if found is None:
                return None
            return self.store._row(found._mapping), dict(found._mapping)

        result = self.store.run(work, f"reading job {name!r}")
        if result is None:
            raise JobNotFound(name)
        return result

    def _change(self, name: str, condition: Any, values: dict[str, Any]) -> bool:
        jobs = self.jobs
        statement = update(jobs).where(jobs.c.name == name, condition).values(**values)

        return self.store.run(
            lambda: self.store.change(statement), f"changing job {name!r}"
        )

    def pause(self, name: str, now: datetime) -> None:
        """Pause a job: at once if it waits, when its run ends if it runs.

        Raises:
            JobNotFound: There is no such job.
        """
        jobs = self.jobs
        self.get_full(name)
        self._change(
            name,
            jobs.c.status == JobState.SCHEDULED.value,
            {
                "status": JobState.PAUSED.value,
                "version": jobs.c.version + 1,
                "updated_at": now,
            },
        )
        # Not a fenced change: the running owner keeps its claim and version.
        self._change(name, jobs.c.paused == False, {"paused": True})  # noqa: E712

    def resume(self, name: str, now: datetime, next_run_at: datetime | None) -> None:
        """Resume a paused job, whose next run time is ``next_run_at``.

        Raises:
            JobNotFound: There is no such job.
        """
        jobs = self.jobs
        self.get_full(name)
        self._change(name, jobs.c.paused == True, {"paused": False})  # noqa: E712
        self._change(
            name,
            jobs.c.status == JobState.PAUSED.value,
            {
                "status": JobState.SCHEDULED.value,
                "next_run_at": next_run_at,
                "scheduled_for": None,
                "attempt": 0,
                "version": jobs.c.version + 1,
                "updated_at": now,
            },
        )

    def run_now(self, name: str, now: datetime) -> None:
        """Make a job due now (a one-off that ended runs once more).

        Raises:
            JobNotFound: There is no such job.
            SchedulerStateError: It is running, paused or broken.
        """
        jobs = self.jobs
        allowed = (JobState.SCHEDULED, JobState.DONE, JobState.FAILED)
        changed = self._change(
            name,
            jobs.c.status.in_([s.value for s in allowed]),
            {
                "status": JobState.SCHEDULED.value,
                "next_run_at": now,
                "scheduled_for": None,
                "attempt": 0,
                "version": jobs.c.version + 1,
                "updated_at": now,
            },
        )
        if not changed:
            row, _ = self.get_full(name)
            raise SchedulerStateError(
                f"job {name!r} is {row.status.value}; only a scheduled, done or "
                "failed job can be run now"
            )

    def remove(self, name: str, now: datetime) -> None:
        """Delete a job's row; its run history stays.

        A run in progress is recorded as abandoned in the same transaction: it
        may finish, but its result has no job to move on and is not written.

        Raises:
            JobNotFound: There is no such job.
        """
        jobs, runs = self.jobs, self.runs

        def work() -> bool:
            with self.store.engine.begin() as conn:
                found = conn.execute(
                    select(jobs.c.id).where(jobs.c.name == name)
                ).scalar()
                if found is None:
                    return False
                conn.execute(
                    update(runs)
                    .where(
                        runs.c.job_id == found,
                        runs.c.outcome == RunOutcome.RUNNING.value,
                    )
                    .values(
                        outcome=RunOutcome.ABANDONED.value,
                        finished_at=now,
                        error_message="the job was removed while this run was going",
                    )
                )
                conn.execute(delete(jobs).where(jobs.c.id == found))
            return True

        if not self.store.run(work, f"removing job {name!r}"):
            raise JobNotFound(name)

    def list_runs(
        self, name: str | None, before: int | None, limit: int
    ) -> list[RunInfo]:
        """Return up to ``limit`` runs, newest first, older than the cursor."""
        runs = self.runs
        query = select(runs).order_by(runs.c.id.desc()).limit(limit)
        if name is not None:
            query = query.where(runs.c.job_name == name)
        if before is not None:
            query = query.where(runs.c.id < before)

        def work() -> list[RunInfo]:
            with self.store.engine.connect() as conn:
                return [_run_info(r._mapping) for r in conn.execute(query)]

        return self.store.run(work, "listing runs")

    def prune_runs(self, older_than: datetime | None, keep: int | None) -> int:
        """Delete old finished runs.

        Args:
            older_than: Delete runs that ended before this time.
            keep: Delete runs beyond the newest ``keep`` of each job.

        Returns:
            How many rows were deleted.
        """
        runs = self.runs
        finished = runs.c.outcome != RunOutcome.RUNNING.value

        def work() -> int:
            deleted = 0
            with self.store.engine.begin() as conn:
                if older_than is not None:
                    deleted += conn.execute(
                        delete(runs).where(finished, runs.c.finished_at < older_than)
                    ).rowcount
                if keep is not None:
                    deleted += self._prune_keep(conn, keep, finished)
            return deleted

        return self.store.run(work, "pruning runs")

    def _prune_keep(self, conn: Any, keep: int, finished: Any) -> int:
        runs = self.runs
        deleted = 0
        names = conn.execute(
            select(runs.c.job_name)
            .group_by(runs.c.job_name)
            .having(func.count() > keep)
        ).scalars()
        for name in list(names):
            # The id of the oldest run to keep for this job.
            cutoff = conn.execute(
                select(runs.c.id)
                .where(runs.c.job_name == name)
                .order_by(runs.c.id.desc())
                .offset(keep - 1)
                .limit(1)
            ).scalar()
            if cutoff is None:
                continue
            deleted += conn.execute(
                delete(runs).where(
                    and_(runs.c.job_name == name, runs.c.id < cutoff, finished)
                )
            ).rowcount
        return deleted


def _run_info(row: Any) -> RunInfo:
    return RunInfo(
        id=row["id"],
        job=row["job_name"],
        scheduled_for=row["scheduled_for"],
        attempt=row["attempt"],
        owner=row["owner"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=RunOutcome(row["outcome"]),
        error_type=row["error_type"],
        error_message=row["error_message"],
        traceback=row["traceback"],
    )


def job_info(row: JobRow, full: Mapping[str, Any]) -> JobInfo:
    """Build the management view of a job row."""
    try:
        trigger: Trigger | None = trigger_from_spec(json.loads(row.trigger))
    except (ValueError, TypeError, AttributeError):
        trigger = None
    try:
        args, kwargs = decode_args(row.args)
    except (ValueError, TypeError):
        args, kwargs = (), {}
    outcome = full.get("last_outcome")
    return JobInfo(
        name=row.name,
        function=row.function,
        trigger=trigger,
        status=row.status,
        next_run_at=row.next_run_at,
        last_run_at=full.get("last_run_at"),
        last_outcome=RunOutcome(outcome) if outcome else None,
        attempt=row.attempt,
        owner=row.owner,
        lease_until=row.lease_until,
        args=args,
        kwargs=kwargs,
        error=full.get("error"),
        missed_count=full.get("missed_count") or 0,
    )
