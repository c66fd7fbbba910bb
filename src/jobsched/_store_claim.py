"""Claiming due jobs: one compare-and-set per row, in batches.

Every candidate row is decided in Python (run which fire time, skip which,
or mark it broken) and written with a compare-and-set on its id, version and
status. Plain runs of a batch are written together (one statement on
PostgreSQL, see :mod:`jobsched._pgbulk`); decisions that also skip fire times
are written one at a time. The run history rows of the won claims are inserted
in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, and_, exc, insert, select, update

from ._jsonbatch import BatchedUpdate, Params
from ._models import JobState, RunOutcome
from ._rows import Claim, ClaimSettings, Decision, JobRow
from ._store_base import StoreBase, _job_row, in_state

logger = logging.getLogger("jobsched._store")


class ClaimingMixin(StoreBase):
    """The part of :class:`~jobsched._store.Store` that claims due jobs."""

    def claim_due(
        self,
        functions: Collection[str],
        owner: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        decide: Callable[[JobRow], Decision],
        applied: list[tuple[JobRow, Decision]] | None = None,
        due_before: datetime | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` due jobs among ``functions`` for ``owner``.

        Every candidate is decided by ``decide`` (which may run it, skip its
        missed fire times, or mark it broken) and written with one compare-and-set
        ``UPDATE`` on its id, status and version; only rows whose update matched
        are returned as claims, together with their new run rows. When
        ``applied`` is given, every decision that was written (claims, skips and
        broken rows alike) is appended to it after the commit.

        Jobs due at or before ``due_before`` (default: ``now``) are candidates;
        the claims' leases and start times are taken from ``now``.
        """
        if not functions or limit <= 0:
            return []

        jobs = self.tables.jobs
        query = (
            select(*self._row_columns)
            .where(in_state(jobs, JobState.SCHEDULED))
            .where(jobs.c.next_run_at <= (now if due_before is None else due_before))
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
                self._without_gap_locks(conn)
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
        own ``UPDATE ... WHERE id AND version AND status``, applied to the whole
        batch by one statement on MariaDB 10.6+ and SQLite 3.38+
        (:mod:`jobsched._jsonbatch`) and sent together otherwise; which of them
        won is then read back under the same fence (owner and new version),
        never taken from a row count.
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
        """Apply each row's compare-and-set, then read back which ones won.

        The read-back tells winners by owner and new version, so two claims of
        one row under the same owner at once could both read the row as theirs.
        The scheduler never makes them: its threads claim one at a time (the
        scheduler's claim lock), and each process has its own owner token.
        """
        jobs = self.tables.jobs
        self._claims.execute(
            conn,
            [
                {
                    "b_id": row.id,
                    "b_version": row.version,
                    "b_next": decision.next_run_at,
                    "b_attempt": decision.attempt,
                    "b_for": decision.run_for,
                }
                for row, decision in decided
            ],
            {"b_owner": owner, "b_lease": now + lease, "b_now": now},
        )

        check = select(jobs.c.id, jobs.c.version).where(
            jobs.c.id.in_([row.id for row, _ in decided]),
            jobs.c.owner == owner,
            jobs.c.status == JobState.RUNNING.value,
        )
        taken = dict(conn.execute(check).all())
        return [(r, d) for r, d in decided if taken.get(r.id) == r.version + 1]

    @cached_property
    def _claims(self) -> BatchedUpdate:
        """The compare-and-set ``UPDATE`` that claims a row, or a batch of rows."""
        jobs = self.tables.jobs

        def build(p: Params) -> Any:
            return (
                update(jobs)
                .where(
                    jobs.c.id == p["b_id"],
                    jobs.c.version == p["b_version"],
                    p.unindexed(jobs.c.status) == JobState.SCHEDULED.value,
                )
                .values(
                    status=JobState.RUNNING.value,
                    owner=p["b_owner"],
                    lease_until=p["b_lease"],
                    last_run_at=p["b_now"],
                    updated_at=p["b_now"],
                    version=jobs.c.version + 1,
                    next_run_at=p["b_next"],
                    attempt=p["b_attempt"],
                    scheduled_for=p["b_for"],
                    error=None,
                )
            )

        rows = [
            ("b_id", "int"),
            ("b_version", "int"),
            ("b_next", "time"),
            ("b_attempt", "int"),
            ("b_for", "time"),
        ]
        shared = ["b_owner", "b_lease", "b_now"]
        return BatchedUpdate(build, rows, jobs.c.id, shared, self._json_dialect)

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
