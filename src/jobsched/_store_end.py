"""Store operations after a claim: leases, ends of runs, recovery and release.

Every write here is fenced: by the claim's owner and version for the owner's
own writes, by the version and an expired lease for a recovery. Ends of runs are
written in batches, in one transaction: on PostgreSQL one statement writes the
job rows and their history rows and names the jobs it moved on
(:mod:`jobsched._pgbulk`); elsewhere each run's fenced ``UPDATE`` is sent, then
which of them took effect is read back (their new version), and only for those
writes the history rows.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from ._jsonbatch import BatchedUpdate, Params
from ._models import JobState, RunOutcome
from ._rows import Claim, Decision, JobRow, RunEnd
from ._store_base import StoreBase, in_state

logger = logging.getLogger("jobsched._store")

# How far a recovery advances a job's version: by more than the owner's own end
# does, so that reading the version back tells the two apart.
RECOVERY_VERSION_STEP = 2

#: One finished run waiting to be written: the claim, how it ended, what next.
Ending = tuple[Claim, RunEnd, Decision]


class EndingMixin(StoreBase):
    """The part of :class:`~jobsched._store.Store` that ends runs."""

    # -- leases -------------------------------------------------------------------

    def renew(
        self, claims: Collection[Claim], now: datetime, lease: timedelta
    ) -> list[Claim]:
        """Extend the leases of ``claims``.

        Returns:
            The claims whose lease could not be renewed because another process
            recovered the job (this process has lost them).
        """
        if not claims:
            return []

        jobs = self.tables.jobs

        def work() -> list[Claim]:
            lost = []
            with self.engine.begin() as conn:
                self._without_gap_locks(conn)
                for claim in claims:
                    statement = (
                        update(jobs)
                        .where(*self._fence(claim))
                        .values(lease_until=now + lease)
                    )
                    if conn.execute(statement).rowcount != 1:
                        lost.append(claim)
            return lost

        return self.run(work, "renewing leases")

    def _fence(self, claim: Claim) -> tuple[ColumnElement[bool], ...]:
        jobs = self.tables.jobs
        return (
            jobs.c.id == claim.job_id,
            jobs.c.owner == claim.owner,
            jobs.c.version == claim.version,
        )

    def expired(self, now: datetime, limit: int) -> list[JobRow]:
        """Return up to ``limit`` running jobs whose lease has expired."""
        jobs = self.tables.jobs
        query = (
            select(jobs)
            .where(in_state(jobs, JobState.RUNNING))
            .where(jobs.c.lease_until < now)
            .order_by(jobs.c.lease_until)
            .limit(limit)
        )

        def work() -> list[JobRow]:
            with self.engine.connect() as conn:
                return [self._row(r._mapping) for r in conn.execute(query)]

        return self.run(work, "looking for expired leases")

    # -- finishing ------------------------------------------------------------------

    def finish(self, claim: Claim, end: RunEnd, decision: Decision) -> bool:
        """Record how one claimed run ended; see :meth:`finish_many`."""
        return self.finish_many([(claim, end, decision)])[0]

    def finish_many(self, endings: Sequence[Ending]) -> list[bool]:
        """Record how claimed runs ended and move their jobs on, in one transaction.

        Each job row changes only if it still carries the claim's owner and
        version (fencing); a claim that was lost (its lease expired and another
        process recovered the job) writes nothing.

        Returns:
            For each ending, whether it was written.
        """
        if not endings:
            return []
        return self.run(
            lambda: self._finish_many(endings),
            f"recording {len(endings)} run(s)",
        )

    def _finish_many(self, endings: Sequence[Ending]) -> list[bool]:
        with self.engine.begin() as conn:
            self._without_gap_locks(conn)
            ended: set[tuple[int, int]] = set()
            if self._bulk is not None:
                ended = self._bulk.end(conn, endings)
            else:
                self._ends.execute(conn, [_job_params(e) for e in endings])

            # Which of them took effect: the row has the version our write gave
            # it (a recovery by another process gives another). Never taken
            # from a row count. A retry after a lost commit reply finds its
            # earlier write here too.
            unsure = {
                c.job_id for c, _, _ in endings if (c.job_id, c.version) not in ended
            }
            now_held = self._versions(conn, unsure) if unsure else {}
            written = [
                (claim.job_id, claim.version) in ended
                or now_held.get(claim.job_id) == (claim.version + 1, None)
                for claim, _, _ in endings
            ]

            done = [e for e, ok in zip(endings, written, strict=True) if ok]
            if done and self._bulk is None:
                self._run_ends.execute(conn, [_run_params(e) for e in done])
            for claim, end, decision in done:
                self._record_missed(
                    conn, claim.job_id, claim.name, decision, end.finished_at
                )
        return written

    def _versions(
        self, conn: Connection, ids: Collection[int]
    ) -> dict[int, tuple[int, str | None]]:
        """Read the version and owner of the job rows ``ids``."""
        jobs = self.tables.jobs
        check = select(jobs.c.id, jobs.c.version, jobs.c.owner).where(
            jobs.c.id.in_(sorted(ids))
        )
        return {key: (version, owner) for key, version, owner in conn.execute(check)}

    @cached_property
    def _ends(self) -> BatchedUpdate:
        """The fenced ``UPDATE`` that ends a run's job, or a batch of them."""
        jobs = self.tables.jobs

        def build(p: Params) -> Any:
            return (
                update(jobs)
                .where(
                    jobs.c.id == p["b_id"],
                    jobs.c.owner == p["b_owner"],
                    jobs.c.version == p["b_version"],
                    p.unindexed(jobs.c.status) == JobState.RUNNING.value,
                )
                .values(
                    status=_status_on_end(jobs, p["b_status"]),
                    next_run_at=p["b_next"],
                    scheduled_for=p["b_for"],
                    attempt=p["b_attempt"],
                    owner=None,
                    lease_until=None,
                    last_outcome=p["b_outcome"],
                    missed_count=jobs.c.missed_count + p["b_missed"],
                    error=p["b_error"],
                    version=jobs.c.version + 1,
                    updated_at=p["b_now"],
                )
            )

        rows = [
            ("b_id", "int"),
            ("b_owner", "text"),
            ("b_version", "int"),
            ("b_status", "text"),
            ("b_next", "time"),
            ("b_for", "time"),
            ("b_attempt", "int"),
            ("b_outcome", "text"),
            ("b_missed", "int"),
            ("b_error", "text"),
            ("b_now", "time"),
        ]
        return BatchedUpdate(build, rows, jobs.c.id, dialect=self._json_dialect)

    @cached_property
    def _run_ends(self) -> BatchedUpdate:
        """The ``UPDATE`` that closes a run's history row, or a batch of them."""
        runs = self.tables.runs

        def build(p: Params) -> Any:
            return (
                update(runs)
                .where(
                    runs.c.job_id == p["b_job"],
                    runs.c.scheduled_for == p["b_for"],
                    runs.c.attempt == p["b_attempt"],
                    runs.c.outcome == RunOutcome.RUNNING.value,
                )
                .values(
                    outcome=p["b_outcome"],
                    finished_at=p["b_now"],
                    error_type=p["b_type"],
                    error_message=p["b_message"],
                    traceback=p["b_traceback"],
                )
            )

        rows = [
            ("b_job", "int"),
            ("b_for", "time"),
            ("b_attempt", "int"),
            ("b_outcome", "text"),
            ("b_now", "time"),
            ("b_type", "text"),
            ("b_message", "text"),
            ("b_traceback", "text"),
        ]
        return BatchedUpdate(build, rows, runs.c.job_id, dialect=self._json_dialect)

    def abandon(
        self,
        row: JobRow,
        now: datetime,
        end: RunEnd,
        decision: Decision,
    ) -> bool:
        """Recover a running job whose lease expired, recording its run as ended.

        A recovery advances the row's version by two, which tells it apart from
        the lost owner's own end (one) when ends are read back after a batch
        write.

        Returns:
            Whether this process recovered it (``False``: someone else did, or the
            owner renewed its lease after all).
        """
        jobs = self.tables.jobs
        condition = and_(
            jobs.c.id == row.id,
            jobs.c.version == row.version,
            jobs.c.status == JobState.RUNNING.value,
            jobs.c.lease_until < now,
        )
        slot = Claim(
            job_id=row.id,
            name=row.name,
            function=row.function,
            trigger=row.trigger,
            args=row.args,
            options=row.options,
            owner=row.owner or "",
            version=row.version,
            scheduled_for=row.scheduled_for or now,
            attempt=row.attempt,
            started_at=now,
        )
        return self.run(
            lambda: self._abandon(condition, slot, end, decision),
            f"recovering job {row.name!r}",
        )

    def _abandon(
        self,
        condition: ColumnElement[bool],
        slot: Claim,
        end: RunEnd,
        decision: Decision,
    ) -> bool:
        jobs = self.tables.jobs
        values: dict[str, Any] = {
            "status": _status_on_end(jobs, literal(decision.status.value)),
            "next_run_at": decision.next_run_at,
            "scheduled_for": decision.scheduled_for,
            "attempt": decision.attempt,
            "owner": None,
            "lease_until": None,
            "version": jobs.c.version + RECOVERY_VERSION_STEP,
            "last_outcome": end.outcome.value,
            "missed_count": jobs.c.missed_count + decision.missed_total,
            "error": decision.error,
        }
        with self.engine.begin() as conn:
            if not self._set_if(conn, condition, values, end.finished_at):
                return False

            ending = (slot, end, decision)
            self._run_ends.execute(conn, [_run_params(ending)])
            self._record_missed(conn, slot.job_id, slot.name, decision, end.finished_at)
        return True

    def release(self, claim: Claim, now: datetime) -> bool:
        """Give back a claimed run that never started, so any process runs it now."""
        return self.release_many([claim], now)[0]

    def release_many(self, claims: Sequence[Claim], now: datetime) -> list[bool]:
        """Give back claimed runs that never started, in one transaction.

        Each job row is fenced by the claim; its run row is deleted, and the
        fire time is due again at once, with the attempt it had.

        Returns:
            For each claim, whether it was given back (``False``: the claim
            was lost meanwhile).
        """
        if not claims:
            return []

        def work() -> list[bool]:
            with self.engine.begin() as conn:
                return [self._release_one(conn, claim, now) for claim in claims]

        what = f"releasing job {claims[0].name!r}"
        if len(claims) > 1:
            what = f"releasing {len(claims)} jobs"
        return self.run(work, what)

    def _release_one(self, conn: Connection, claim: Claim, now: datetime) -> bool:
        runs = self.tables.runs
        values = {
            "status": _status_on_end(
                self.tables.jobs, literal(JobState.SCHEDULED.value)
            ),
            "next_run_at": claim.scheduled_for,
            "scheduled_for": claim.scheduled_for,
            "attempt": claim.attempt - 1,
            "owner": None,
            "lease_until": None,
        }
        if not self._set_if(conn, and_(*self._fence(claim)), values, now):
            return False

        conn.execute(
            delete(runs).where(
                runs.c.job_id == claim.job_id,
                runs.c.scheduled_for == claim.scheduled_for,
                runs.c.attempt == claim.attempt,
            )
        )
        return True


def _status_on_end(jobs: Any, status: Any) -> Any:
    """Return the status a run's end writes.

    That is ``status``, except that a job paused while it ran becomes paused
    instead of scheduled.
    """
    paused_meanwhile = and_(status == JobState.SCHEDULED.value, jobs.c.paused == true())
    return case((paused_meanwhile, JobState.PAUSED.value), else_=status)


def _job_params(ending: Ending) -> dict[str, Any]:
    claim, end, decision = ending
    return {
        "b_id": claim.job_id,
        "b_owner": claim.owner,
        "b_version": claim.version,
        "b_status": decision.status.value,
        "b_next": decision.next_run_at,
        "b_for": decision.scheduled_for,
        "b_attempt": decision.attempt,
        "b_outcome": end.outcome.value,
        "b_missed": decision.missed_total,
        "b_error": decision.error,
        "b_now": end.finished_at,
    }


def _run_params(ending: Ending) -> dict[str, Any]:
    claim, end, _ = ending
    return {
        "b_job": claim.job_id,
        "b_for": claim.scheduled_for,
        "b_attempt": claim.attempt,
        "b_outcome": end.outcome.value,
        "b_now": end.finished_at,
        "b_type": end.error_type,
        "b_message": end.error_message,
        "b_traceback": end.traceback,
    }
