"""Claiming, running and recording runs: the part of the scheduler that runs jobs.

:class:`RunningMixin` holds the run path shared by ``run_pending()`` and the
background workers: claim due jobs, run each with its executor, queue its end
(written, fenced by the claim, by :class:`~jobsched._endqueue.EndQueueMixin`),
publish events, and recover runs whose owner died.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._clock import Clock
from ._decide import Ended, decide_claim, decide_end, parse_row
from ._endqueue import EndQueueMixin
from ._errors import StoreError
from ._events import (
    JobBroken,
    LeaseExpired,
    RunStarted,
)
from ._models import JobState, RunOutcome, RunResult
from ._registry import JobSpec, Registry, decode_args
from ._rows import Claim, Decision, JobRow, RunEnd
from ._runner import (
    Execution,
    RunContext,
    execute,
    execute_in_process,
    execute_with_timeout,
    running_as,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger("jobsched._scheduler")


class Background:
    """Runs a function in a thread of its own; :meth:`wait` re-raises its error."""

    def __init__(self, work: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._work = work
        self._thread = threading.Thread(
            target=self._run, name="jobsched-ends", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as error:  # handed to the caller of wait()
            self._error = error

    def join(self) -> None:
        """Wait for the function to return."""
        self._thread.join()

    def wait(self) -> None:
        """Wait for the function to return, and raise what it raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error


# Longest time a run's end waits in the queue before run_pending() writes it.
MAX_END_DELAY = 0.05
# How long the last job of a run_pending() batch should wait behind the others
# (seconds): the batch holds about this much work at the recent pace.
CLAIM_AHEAD = 0.1
# Longest wait (seconds) of a claimed job for the runs claimed before it, when
# they turn out slower than their pace promised: it is then given back.
QUEUE_PATIENCE = 1.0
# Jobs claimed by the first batch, before any pace is known.
FIRST_BATCH = 10
# Weight of the latest batch in the running average of seconds per job.
PACE_WEIGHT = 0.5


class RunningMixin(EndQueueMixin):
    """The run path of :class:`~jobsched.Scheduler` (see the module docstring)."""

    clock: Clock
    owner: str
    lease: timedelta
    batch_size: int
    max_workers: int
    _registry: Registry
    _claim_lock: Any
    _pace: float | None

    def _ensure_ready(self) -> None:
        raise NotImplementedError

    def run_pending(self) -> list[RunResult]:
        """Run every job of this process that is due now, in the calling thread.

        Call it from a loop the application already has. Each call claims the
        jobs due at the moment of the call (never a job that this process has not
        registered), runs them one after another, records every run, and returns.
        Fire times that passed while nobody was polling are handled by each job's
        misfire policy: by default they coalesce into one run, and each one not
        run is recorded as missed. A job that raises is recorded as failed; the
        exception does not propagate (except ``KeyboardInterrupt`` and
        ``SystemExit``, which are recorded first and then re-raised).

        A database that stays unreachable through the retries is logged and the
        call returns what it ran so far; the next call tries again.

        Returns:
            What ran, in the order it ran.
        """
        results: list[RunResult] = []
        try:
            self._ensure_ready()
            self._write_ends()
            cutoff = self.clock.now()
            next_event = self.store.next_event(self._registry.names())
            if next_event is None or next_event > cutoff:
                return results  # one indexed query when nothing is due

            self._recover_expired(cutoff)
            self._claim_and_run(cutoff, results)
        except StoreError as error:
            logger.warning(
                "run_pending: database unavailable, will try again: %s",
                error,
                extra={"jobsched": {"action": "poll_failed"}},
            )
        return results

    def _claim_and_run(self, cutoff: datetime, results: list[RunResult]) -> None:
        """Claim and run batches until nothing due before ``cutoff`` is left.

        The ends of one batch are written in a helper thread while the next
        batch is claimed and run (not on SQLite, whose single writer would
        only make the two wait for each other); all are written on return.
        """
        overlap = self.store.dialect != "sqlite"
        writer: Background | None = None
        try:
            while True:
                claims = self._claim(cutoff, self._batch_limit())
                if not claims:
                    break

                started = time.monotonic()
                with self._leases.keeping(claims):
                    ran = self._run_batch(claims, results)
                self._keep_pace((time.monotonic() - started) / ran)

                if writer is not None:
                    writer.wait()  # raises what the writing raised
                writer = Background(self._write_ends) if overlap else None
                if writer is None:
                    self._write_ends()
        finally:
            if writer is not None:
                writer.join()
        self._write_ends()

    def _release(self, claims: list[Claim]) -> None:
        """Give back claims that were never started (see ``Store.release_many``).

        Raises:
            StoreError: The database failed; the claims' leases will lapse and
                another process will recover them.
        """
        for claim in claims:
            self._leases.discard(claim)
        if not claims:
            return

        try:
            self.store.release_many(claims, self.clock.now())
        except StoreError as error:
            logger.warning(
                "could not give back %d job(s) not started (their leases will "
                "lapse): %s",
                len(claims),
                error,
            )
            raise

    def _batch_limit(self) -> int:
        """How many jobs the next ``run_pending()`` batch claims.

        As many as are expected to start within :data:`CLAIM_AHEAD` at the
        recent pace, between 1 and ``batch_size``: quick jobs are claimed in
        large batches (few transactions), slow ones a few at a time (a claimed
        job never waits long, and other processes take the rest).
        """
        if self._pace is None:
            return min(self.batch_size, FIRST_BATCH)
        expected = int(CLAIM_AHEAD / self._pace) if self._pace > 0 else self.batch_size
        return max(1, min(self.batch_size, expected))

    def _queue_limit(self) -> int:
        """How many claimed jobs ``start()`` may queue for its busy workers.

        As many as its workers are expected to start within
        :data:`CLAIM_AHEAD` at the recent pace, at most ``batch_size``; none
        before a pace is known. Quick jobs are then claimed many at a time, and
        slow ones only as workers come free.
        """
        if self._pace is None:
            return 0
        if self._pace <= 0:
            return self.batch_size
        return min(self.batch_size, int(self.max_workers * CLAIM_AHEAD / self._pace))

    def _keep_pace(self, seconds_per_job: float) -> None:
        """Fold the latest batch's seconds per job into the running average."""
        if self._pace is None:
            self._pace = seconds_per_job
        else:
            self._pace += PACE_WEIGHT * (seconds_per_job - self._pace)

    def _run_batch(self, claims: list[Claim], results: list[RunResult]) -> int:
        """Run claims in order; return how many were started.

        Ends are written together once the batch is done, or as soon as one has
        waited :data:`MAX_END_DELAY`, so quick jobs share a transaction and slow
        ones are recorded as they end. Once the batch has taken longer than
        :data:`QUEUE_PATIENCE` (its runs were slower than their pace
        promised), the claims not started yet are given back, for any process
        to run, and the next batch is sized at the new pace. If a job stops the
        process, the rest are given back too.
        """
        started = 0
        began = time.monotonic()
        try:
            for claim in claims:
                if started and time.monotonic() - began > QUEUE_PATIENCE:
                    with contextlib.suppress(StoreError):  # logged; leases lapse
                        self._release(claims[started:])
                    break
                started += 1
                results.append(self._run_claim(claim))
                if self._ends_waiting() >= MAX_END_DELAY:
                    # A failure keeps the ends queued (and their leases): the
                    # rest of the batch runs, and a later write records them.
                    with contextlib.suppress(StoreError):
                        self._write_ends()
            return started
        except BaseException:
            with contextlib.suppress(StoreError):  # logged; the leases lapse
                self._release(claims[started:])
            with contextlib.suppress(StoreError):
                self._write_ends()
            raise

    def _claim(self, due_before: datetime, limit: int) -> list[Claim]:
        """Claim up to ``limit`` jobs due by ``due_before``.

        The leases, start times and decisions are taken at the time of the
        claim, which in a long ``run_pending()`` call is well after
        ``due_before``: a lease counted from the start of the call could be
        expired before its run starts.
        """
        applied: list[tuple[JobRow, Decision]] = []
        with self._claim_lock:
            now = max(self.clock.now(), due_before)
            claims = self.store.claim_due(
                self._registry.names(),
                self.owner,
                now,
                self.lease,
                limit,
                lambda row: decide_claim(row, now),
                applied,
                due_before=due_before,
            )
        for row, decision in applied:
            self._announce_missed(row.name, decision, now)
            if decision.status is JobState.BROKEN:
                reason = decision.error or "cannot run"
                self._events.publish(
                    JobBroken(timestamp=now, job=row.name, reason=reason)
                )
        return claims

    def run_claim(self, claim: Claim) -> RunResult:
        """Run one claimed job and write how it ended before returning."""
        try:
            return self._run_claim(claim)
        finally:
            self._write_ends()

    def _run_claim(self, claim: Claim) -> RunResult:
        """Run one claimed job and queue how it ended (see :meth:`_record`)."""
        spec = self._registry.get(claim.function)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "running job %r (fire time %s, attempt %d)",
                claim.name,
                claim.scheduled_for.isoformat(),
                claim.attempt,
                extra={"jobsched": {"action": "run_started", "job": claim.name}},
            )
        if spec is None:  # unregistered since the claim: give it back
            self._release([claim])
            return RunResult(
                claim.name, 0, claim.scheduled_for, claim.attempt, RunOutcome.ABANDONED
            )

        if self._events.active:
            self._events.publish(
                RunStarted(
                    timestamp=claim.started_at,
                    job=claim.name,
                    scheduled_for=claim.scheduled_for,
                    attempt=claim.attempt,
                )
            )
        args, kwargs = decode_args(claim.args)
        context = RunContext(
            claim.name, claim.scheduled_for, claim.attempt, claim.run_id
        )
        with running_as(context):
            execution = self._execute(spec, args, kwargs)
        self._log_execution(claim, execution)
        self._finish(claim, spec, execution)
        result = RunResult(
            job=claim.name,
            run_id=claim.run_id,
            scheduled_for=claim.scheduled_for,
            attempt=claim.attempt,
            outcome=execution.outcome,
            error=execution.error,
            duration=execution.duration,
        )
        if execution.must_propagate and execution.error is not None:
            raise execution.error
        return result

    def _execute(
        self, spec: JobSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Execution:
        timeout = spec.options.timeout
        seconds = None if timeout is None else timeout.total_seconds()
        if spec.executor == "process":
            return execute_in_process(spec.func, args, kwargs, seconds)
        if seconds is not None:
            return execute_with_timeout(spec.func, args, kwargs, seconds)
        return execute(spec.func, args, kwargs)

    def _finish(self, claim: Claim, spec: JobSpec, execution: Execution) -> None:
        now = self.clock.now()
        ended = Ended(
            claim.name,
            claim.trigger,
            claim.options,
            claim.scheduled_for,
            claim.attempt,
            execution.outcome,
            execution.error,
        )
        decision = decide_end(spec, ended, now)
        end = RunEnd(
            outcome=execution.outcome,
            finished_at=now,
            error_type=execution.error_type,
            error_message=execution.error_message,
            traceback=execution.traceback,
            duration=execution.duration,
        )
        self._record(claim, end, decision)

    def _log_execution(self, claim: Claim, execution: Execution) -> None:
        succeeded = execution.outcome is RunOutcome.SUCCEEDED
        if succeeded and not logger.isEnabledFor(logging.INFO):
            return

        extra = {
            "jobsched": {
                "action": f"run_{execution.outcome.value}",
                "job": claim.name,
                "worker": self.owner,
                "duration_s": round(execution.duration, 6),
            }
        }
        if succeeded:
            logger.info(
                "job %r succeeded in %.3f s",
                claim.name,
                execution.duration,
                extra=extra,
            )
        else:
            logger.error(
                "job %r %s after %.3f s: %s",
                claim.name,
                execution.outcome.value.replace("_", " "),
                execution.duration,
                execution.error_message,
                exc_info=execution.error,
                extra=extra,
            )

    def _recover_expired(self, now: datetime) -> None:
        """Recover running jobs whose owner stopped renewing the lease."""
        for row in self.store.expired(now, self.batch_size):
            if self._leases.holds(row.id, row.version):
                continue  # our own live run: its renewal is late, not dead
            self.recover(row, now)

    def recover(self, row: JobRow, now: datetime) -> None:
        """Record a dead owner's run as abandoned and move its job on."""
        try:
            parse_row(row.trigger, row.options, row.args)
            ended = Ended(
                row.name,
                row.trigger,
                row.options,
                row.scheduled_for or now,
                row.attempt,
                RunOutcome.ABANDONED,
            )
            decision = decide_end(self._registry.get(row.function), ended, now)
        except ValueError as error:
            decision = Decision(
                status=JobState.BROKEN, next_run_at=None, error=f"cannot run: {error}"
            )

        message = f"lease of {row.owner} expired at {row.lease_until}"
        end = RunEnd(RunOutcome.ABANDONED, now, error_message=message)
        if self.store.abandon(row, now, end, decision):
            self._events.publish(
                LeaseExpired(
                    timestamp=now,
                    job=row.name,
                    scheduled_for=row.scheduled_for or now,
                    attempt=row.attempt,
                    owner=row.owner,
                )
            )
            logger.warning(
                "job %r: recovered from %s, whose lease expired; the run is "
                "recorded as abandoned",
                row.name,
                row.owner,
                extra={"jobsched": {"action": "lease_expired", "job": row.name}},
            )
