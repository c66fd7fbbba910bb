"""The scheduler: registration, polling, running and the management API."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar, overload

from sqlalchemy import Engine

from ._admin import DEFAULT_PAGE_SIZE, Admin, check_page_size, job_info
from ._clock import Clock, DatabaseClock
from ._decide import Ended, decide_claim, decide_end, parse_row, with_jitter
from ._errors import (
    JobDefinitionError,
    JobNotFound,
    SchedulerStateError,
    StoreError,
)
from ._models import (
    JobInfo,
    JobOptions,
    JobState,
    Misfire,
    Overlap,
    Page,
    RunInfo,
    RunOutcome,
    RunResult,
)
from ._registry import (
    JobSpec,
    Registry,
    as_delta,
    build_spec,
    check_name,
    decode_args,
    default_name,
    encode_args,
)
from ._runner import (
    Execution,
    execute,
    execute_in_process,
    execute_with_timeout,
)
from ._store import Claim, Decision, JobRow, RunEnd, Store
from ._sync import Synchronizer
from ._tables import DEFAULT_PREFIX, check_schema_version, define_tables
from ._triggers import (
    OnceTrigger,
    Trigger,
    preview,
)
from ._worker import LeaseKeeper, Poller

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds between polls when nothing is known to be due sooner.
DEFAULT_POLL_INTERVAL = 1.0
#: How long a claim stays valid without renewal; renewed every third of it.
DEFAULT_LEASE = timedelta(seconds=30)
#: Worker threads of start(); also the most jobs one process runs at once.
DEFAULT_MAX_WORKERS = 4
#: Most jobs claimed by one statement batch in run_pending().
DEFAULT_BATCH = 10
#: How long stop() waits for running jobs by default (seconds).
DEFAULT_STOP_TIMEOUT = 30.0


def _owner_token() -> str:
    """Return an owner identity unique to this process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Scheduler:
    """Runs registered jobs from one jobs table that many processes share.

    Every process of an application creates its own ``Scheduler`` on the shared
    database and registers the same jobs; each due run is executed by exactly one
    of them. Nothing is kept in the process: stop it, start more, restart it, and
    the table carries on.

    Args:
        engine: The application's SQLAlchemy engine (SQLite, PostgreSQL or
            MySQL/MariaDB).
        table_prefix: Prefix of the jobsched table names.
        clock: Where "now" comes from. The default is the database server's
            clock, so hosts whose clocks disagree still agree on what is due;
            tests pass a :class:`jobsched.testing.FakeClock`.
        max_workers: Jobs run at once by :meth:`start` in this process.
        poll_interval: Longest time (seconds) between two looks at the table.
        lease: How long a claim is valid without renewal; a process that dies
            loses its runs to another process after this long.
        batch_size: Most due jobs claimed at once by :meth:`run_pending`.
        create_tables: Create the tables on first use. Pass ``False`` when the
            application creates them with its own migrations (see
            :func:`jobsched.define_tables`).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        table_prefix: str = DEFAULT_PREFIX,
        clock: Clock | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        lease: float | timedelta = DEFAULT_LEASE,
        batch_size: int = DEFAULT_BATCH,
        create_tables: bool = True,
    ) -> None:
        if max_workers < 1 or batch_size < 1:
            raise ValueError("max_workers and batch_size must be at least 1")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")

        self.engine = engine
        self.tables = define_tables(table_prefix)
        self.store = Store(engine, self.tables)
        self._admin = Admin(self.store)
        self.clock: Clock = clock or DatabaseClock(self.store.server_time)
        self.max_workers = max_workers
        self.poll_interval = float(poll_interval)
        self.lease = as_delta(lease, "lease") or DEFAULT_LEASE
        self.batch_size = batch_size
        self._create_tables = create_tables
        self._registry = Registry()
        self._lock = threading.RLock()
        self._synced: set[str] = set()
        self._schema_ready = False
        self._pid = os.getpid()
        self.owner = _owner_token()
        self._sync = Synchronizer(self.store, self.clock)
        self._leases = LeaseKeeper(self)
        self._poller: Poller | None = None
        self._unwritten: dict[tuple[int, int], tuple[Claim, RunEnd, Decision]] = {}

    # -- registration ---------------------------------------------------------------

    @overload
    def job(self, func: F, /) -> F: ...

    @overload
    def job(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        seconds: bool = False,
        every: float | timedelta | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        jitter: float | timedelta | None = None,
        at: datetime | None = None,
        trigger: Trigger | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        misfire: Misfire | str = Misfire.COALESCE,
        grace: float | timedelta | None = None,
        catch_up_window: float | timedelta | None = None,
        overlap: Overlap | str = Overlap.SKIP,
        max_attempts: int = 1,
        retry_wait: Any = None,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        paused: bool = False,
        timeout: float | timedelta | None = None,
        executor: str = "thread",
    ) -> Callable[[F], F]: ...

    def job(self, func: F | None = None, /, **options: Any) -> F | Callable[[F], F]:
        """Register a function as a job, with or without a schedule.

        Use it bare (``@scheduler.job``) for a function that only runs when
        enqueued, or with one schedule: ``cron=`` (with ``timezone=`` and
        optionally ``seconds=True``), ``every=`` (seconds or a timedelta, with
        optional ``start=``, ``end=`` and ``jitter=``), ``at=`` (one aware
        datetime) or a ready ``trigger=``. Registering validates everything at
        once; nothing touches the database until the scheduler first runs.

        Args:
            func: The function, when used without parentheses.
            **options: ``name`` (default ``module.qualname``), the schedule
                above, ``args``/``kwargs`` (JSON values), ``misfire``
                (``"coalesce"`` or ``"catch_up"``), ``grace``,
                ``catch_up_window``, ``overlap`` (``"skip"`` or ``"queue"``),
                ``max_attempts``, ``retry_wait`` (a tenacity wait strategy),
                ``retry_on`` (exception types), ``paused``, ``timeout``
                (seconds) and ``executor`` (``"thread"`` or ``"process"``).
                The user guide describes each.

        Returns:
            The function itself, unchanged, or a decorator that registers it.

        Raises:
            JobDefinitionError: Anything invalid, with the job's name in the
                message (``InvalidTrigger``, ``InvalidArguments``,
                ``DuplicateJob`` are subclasses).
        """

        def register(target: F) -> F:
            self.register(target, **options)
            return target

        return register(func) if func is not None else register

    def register(self, func: Callable[..., Any], **options: Any) -> JobSpec:
        """Register ``func`` as a job; the non-decorator form of :meth:`job`.

        Args:
            func: The function to run.
            **options: As for :meth:`job`.

        Returns:
            The registered job's definition.
        """
        name = options.pop("name", None) or default_name(func)
        check_name(name)
        try:
            spec = build_spec(name, func, **options)
        except JobDefinitionError as error:
            raise error.for_job(name) from error
        except TypeError as error:
            raise JobDefinitionError(str(error), job=name) from error

        self._registry.add(spec)
        with self._lock:
            self._synced.discard(name)
        return spec

    def enqueue(
        self,
        job: Callable[..., Any] | str,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        at: datetime | None = None,
        name: str | None = None,
    ) -> str:
        """Run a registered function once, now or at ``at``, with JSON arguments.

        Args:
            job: The registered function, or its job name.
            args: Positional arguments (JSON values).
            kwargs: Keyword arguments (JSON values).
            at: When to run it (an aware datetime); now when omitted.
            name: A unique name for this one-off job; generated when omitted.

        Returns:
            The new job's name.

        Raises:
            JobNotFound: The function is not registered with this scheduler.
            JobDefinitionError: Bad arguments or time, or the name is taken.
        """
        function = job if isinstance(job, str) else self._registry.name_of(job)
        if function is None or self._registry.get(function) is None:
            raise JobNotFound(job if isinstance(job, str) else default_name(job))

        job_name = name or f"{function}@{uuid.uuid4().hex[:16]}"
        check_name(job_name)
        try:
            text = encode_args(job_name, args, dict(kwargs or {}))
            self._ensure_ready()
            trigger = OnceTrigger(at if at is not None else self.clock.now())
        except JobDefinitionError as error:
            raise error.for_job(job_name) from error

        inserted = self.store.insert_job(
            self._sync.row_values(job_name, function, trigger, text, JobOptions()),
            self.clock.now(),
        )
        if not inserted:
            raise JobDefinitionError("a job of that name exists already", job=job_name)

        self._after_change()
        return job_name

    def _ensure_ready(self) -> None:
        """Fork check, tables, and registered jobs written to the table."""
        self._check_fork()
        with self._lock:
            if not self._schema_ready:
                if self._create_tables:
                    self.store.ensure_schema()
                elif not self.store.run(
                    lambda: check_schema_version(self.engine, self.tables),
                    "checking the schema",
                ):
                    raise SchedulerStateError(
                        "the jobsched tables do not exist; create them with "
                        "jobsched.define_tables(...).metadata.create_all(engine) "
                        "or pass create_tables=True"
                    )
                self._schema_ready = True

            for spec in self._registry.scheduled():
                if spec.name not in self._synced:
                    self._sync.sync(spec)
                    self._synced.add(spec.name)

    def _check_fork(self) -> None:
        """After a fork, drop the parent's pooled connections and identity."""
        if os.getpid() == self._pid:
            return

        with self._lock:
            if os.getpid() == self._pid:
                return
            # Sockets inherited from the parent must never be used by the child.
            self.engine.dispose(close=False)
            self._pid = os.getpid()
            self.owner = _owner_token()
            self._leases = LeaseKeeper(self)
            self._poller = None
            if isinstance(self.clock, DatabaseClock):
                self.clock = DatabaseClock(self.store.server_time)
                self._sync = Synchronizer(self.store, self.clock)

    def _after_change(self) -> None:
        """Wake the local poller: something may be due sooner than it thought."""
        poller = self._poller
        if poller is not None:
            poller.wake()

    # -- running -----------------------------------------------------------------

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
            self._flush_unwritten()
            cutoff = self.clock.now()
            self._recover_expired(cutoff)
            while True:
                claims = self._claim(cutoff, self.batch_size)
                if not claims:
                    break
                with self._leases.keeping(claims):
                    self._run_batch(claims, results)
        except StoreError as error:
            logger.warning(
                "run_pending: database unavailable, will try again: %s",
                error,
                extra={"jobsched": {"action": "poll_failed"}},
            )
        return results

    def _run_batch(self, claims: list[Claim], results: list[RunResult]) -> None:
        """Run claims in order; if one stops the process, give the rest back."""
        started = 0
        try:
            for claim in claims:
                started += 1
                results.append(self.run_claim(claim))
        except BaseException:
            for unstarted in claims[started:]:
                self.store.release(unstarted, self.clock.now())
            raise

    def _claim(self, due_before: datetime, limit: int) -> list[Claim]:
        functions = self._registry.names()
        return self.store.claim_due(
            functions,
            self.owner,
            due_before,
            self.lease,
            limit,
            lambda row: decide_claim(row, due_before),
        )

    def run_claim(self, claim: Claim) -> RunResult:
        """Run one claimed job and record how it ended (used by the workers)."""
        spec = self._registry.get(claim.function)
        logger.info(
            "running job %r (fire time %s, attempt %d)",
            claim.name,
            claim.scheduled_for.isoformat(),
            claim.attempt,
            extra={"jobsched": {"action": "run_started", "job": claim.name}},
        )
        if spec is None:  # unregistered since the claim: give it back
            self.store.release(claim, self.clock.now())
            return RunResult(
                claim.name, 0, claim.scheduled_for, claim.attempt, RunOutcome.ABANDONED
            )

        args, kwargs = decode_args(claim.args)
        execution = self._execute(spec, args, kwargs)
        self._log_execution(claim, execution)
        self._finish(claim, spec, execution)
        result = RunResult(
            job=claim.name,
            run_id=0,
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
        )
        self._record(claim, end, decision)

    def _record(self, claim: Claim, end: RunEnd, decision: Decision) -> None:
        """Write a run's end; if the database is down, keep it and try later.

        A result that cannot be written is kept in memory with its lease still
        renewed, and written by the next poll that reaches the database, so a
        run that happened is never recorded as abandoned merely because the
        database was away when it ended.
        """
        # Renewing past this point would only race the write that ends the run.
        self._leases.discard(claim)
        try:
            written = self.store.finish(claim, end, decision)
        except StoreError as error:
            logger.warning(
                "job %r: could not record its run yet, will retry: %s",
                claim.name,
                error,
                extra={"jobsched": {"action": "record_deferred", "job": claim.name}},
            )
            with self._lock:
                self._unwritten[(claim.job_id, claim.version)] = (claim, end, decision)
            self._leases.pin(claim)
            return

        if not written:
            logger.warning(
                "job %r: lost its claim while running (lease expired and another "
                "process recovered it); its result was not recorded",
                claim.name,
                extra={"jobsched": {"action": "claim_lost", "job": claim.name}},
            )

    def _flush_unwritten(self) -> None:
        """Write the run results that an earlier database failure held back."""
        with self._lock:
            pending = list(self._unwritten.items())
        for key, (claim, end, decision) in pending:
            written = self.store.finish(claim, end, decision)  # StoreError: later
            with self._lock:
                self._unwritten.pop(key, None)
            self._leases.unpin(claim)
            if not written:
                logger.warning(
                    "job %r: lost its claim before its result could be written",
                    claim.name,
                    extra={"jobsched": {"action": "claim_lost", "job": claim.name}},
                )

    def _log_execution(self, claim: Claim, execution: Execution) -> None:
        extra = {
            "jobsched": {
                "action": f"run_{execution.outcome.value}",
                "job": claim.name,
                "worker": self.owner,
                "duration_s": round(execution.duration, 6),
            }
        }
        if execution.error is None:
            logger.info(
                "job %r succeeded in %.3f s",
                claim.name,
                execution.duration,
                extra=extra,
            )
        else:
            logger.error(
                "job %r failed after %.3f s",
                claim.name,
                execution.duration,
                exc_info=execution.error,
                extra=extra,
            )

    def _recover_expired(self, now: datetime) -> None:
        """Recover running jobs whose owner stopped renewing the lease."""
        for row in self.store.expired(self._registry.names(), now):
            if row.owner == self.owner:
                continue  # our own run, alive: its lease keeper is late, not dead
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
            logger.warning(
                "job %r: recovered from %s, whose lease expired; the run is "
                "recorded as abandoned",
                row.name,
                row.owner,
                extra={"jobsched": {"action": "lease_expired", "job": row.name}},
            )

    # -- background thread -------------------------------------------------------

    def start(self) -> None:
        """Start polling and running jobs in background threads.

        One thread polls the table and sleeps until the next due time (at most
        ``poll_interval``); ``max_workers`` threads run the jobs. It claims no
        more jobs than it has free workers.

        Raises:
            SchedulerStateError: It is already started.
        """
        self._check_fork()
        with self._lock:
            if self._poller is not None and self._poller.is_alive():
                raise SchedulerStateError("the scheduler is already started")
            self._poller = Poller(self)
            self._poller.start()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop claiming jobs and wait up to ``timeout`` seconds for running ones.

        Jobs still running after the timeout keep their leases renewed while
        this process lives, so nobody else starts them twice.
        """
        poller = self._poller
        if poller is not None:
            poller.stop(timeout)
            self._poller = None

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._poller is not None and self._poller.is_alive()

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- management ------------------------------------------------------------

    def jobs(
        self,
        *,
        status: JobState | str | None = None,
        after: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[JobInfo]:
        """List jobs by name, a page at a time.

        Args:
            status: Only jobs in this state.
            after: The ``next_cursor`` of the previous page.
            limit: Page size, 1 to 1000.

        Returns:
            A page of jobs; ``next_cursor`` is ``None`` on the last page.
        """
        check_page_size(limit)
        self._ensure_ready()
        state = JobState(status) if status is not None else None
        rows = self._admin.list_rows(state, after, limit)
        items = [job_info(row, full) for row, full in rows]
        cursor = items[-1].name if len(items) == limit else None
        return Page(items, cursor)

    def get_job(self, name: str) -> JobInfo:
        """Return one job by name.

        Raises:
            JobNotFound: There is no such job.
        """
        self._ensure_ready()
        row, full = self._admin.get_full(name)
        return job_info(row, full)

    def pause(self, name: str) -> None:
        """Pause a job; a running job pauses when its current run ends."""
        self._ensure_ready()
        self._admin.pause(name, self.clock.now())

    def resume(self, name: str) -> None:
        """Resume a paused job from its next fire time after now."""
        self._ensure_ready()
        row, _ = self._admin.get_full(name)
        trigger = parse_row(row.trigger, row.options, row.args).trigger
        now = self.clock.now()
        first = row.next_run_at if isinstance(trigger, OnceTrigger) else None
        later = with_jitter(trigger, name, trigger.next_after(now))
        self._admin.resume(name, now, first or later)
        self._after_change()

    def run_now(self, name: str) -> None:
        """Make a job due at once (the next poll of any process runs it)."""
        self._ensure_ready()
        self._admin.run_now(name, self.clock.now())
        self._after_change()

    def remove(self, name: str) -> None:
        """Delete a job's row (its run history is kept).

        A registered job is written again the next time a process starts with
        it registered; remove it from the code as well.
        """
        self._ensure_ready()
        self._admin.remove(name)

    def runs(
        self,
        name: str | None = None,
        *,
        before: int | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[RunInfo]:
        """List runs, newest first, a page at a time.

        Args:
            name: Only this job's runs.
            before: The ``next_cursor`` of the previous page.
            limit: Page size, 1 to 1000.

        Returns:
            A page of runs; ``next_cursor`` is ``None`` on the last page.
        """
        check_page_size(limit)
        self._ensure_ready()
        items = self._admin.list_runs(name, before, limit)
        cursor = items[-1].id if len(items) == limit else None
        return Page(items, cursor)

    def prune_runs(
        self,
        *,
        older_than: float | timedelta | None = None,
        keep: int | None = None,
    ) -> int:
        """Delete finished runs older than ``older_than``, or beyond ``keep`` per job.

        Returns:
            How many runs were deleted.
        """
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep!r}")
        self._ensure_ready()
        age = as_delta(older_than, "older_than")
        cutoff = self.clock.now() - age if age is not None else None
        return self._admin.prune_runs(cutoff, keep)

    def preview(self, name: str, count: int = 5) -> list[datetime]:
        """Return the next ``count`` fire times of a job (UTC), after now."""
        spec = self._registry.get(name)
        trigger = spec.trigger if spec is not None else None
        if trigger is None:
            trigger = self.get_job(name).trigger
        if trigger is None:
            raise JobNotFound(name)
        return preview(self._sync.resolve(trigger), self.clock.now(), count)
