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

from ._admin import Admin
from ._clock import Clock, DatabaseClock
from ._errors import (
    ConfigurationError,
    JobDefinitionError,
    JobNotFound,
    SchedulerStateError,
    StoreError,
)
from ._events import (
    EventBus,
)
from ._forksafe import protect
from ._manage import ManagementMixin
from ._models import (
    Misfire,
    Overlap,
)
from ._registry import (
    JobSpec,
    Registry,
    build_spec,
    check_name,
    default_name,
    encode_args,
)
from ._rows import Claim, Decision, RunEnd
from ._running import RunningMixin
from ._store import Store
from ._sync import Synchronizer
from ._tables import DEFAULT_PREFIX, check_schema_version, define_tables
from ._triggers import (
    OnceTrigger,
    Trigger,
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
#: Most jobs claimed at once by run_pending(); fewer while runs are slow.
DEFAULT_BATCH = 500
#: How long stop() waits for running jobs by default (seconds).
DEFAULT_STOP_TIMEOUT = 30.0


def _owner_token() -> str:
    """Return an owner identity unique to this process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _check_positive(*, whole: bool = False, **values: float) -> None:
    """Reject a scheduler option that is not a positive (whole) number."""
    kinds = (int,) if whole else (int, float)
    what = "a positive whole number" if whole else "a positive number"
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            raise ConfigurationError(f"{name} must be {what}, got {value!r}")


class Scheduler(RunningMixin, ManagementMixin):
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
        batch_size: Most due jobs claimed at once by :meth:`run_pending`. It
            claims fewer while recent runs were slow: about as many as it
            expects to start within a tenth of a second.
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
        _check_positive(whole=True, max_workers=max_workers, batch_size=batch_size)
        _check_positive(poll_interval=poll_interval)
        lease_delta = (
            lease if isinstance(lease, timedelta) else timedelta(seconds=lease)
        )
        _check_positive(lease=lease_delta.total_seconds())

        self.engine = engine
        protect(engine)
        self.tables = define_tables(table_prefix)
        self.store = Store(engine, self.tables)
        self._admin = Admin(self.store)
        self.clock: Clock = clock or DatabaseClock(self.store.server_time)
        self.max_workers = max_workers
        self.poll_interval = float(poll_interval)
        self.lease = lease_delta
        self.batch_size = batch_size
        self._create_tables = create_tables
        self._registry = Registry()
        self._lock = threading.RLock()
        # One claim at a time per scheduler: its threads share one owner
        # token, so two of their claims at once could not tell whose is whose.
        self._claim_lock = threading.Lock()
        self._synced: set[str] = set()
        self._schema_ready = False
        self._pid = os.getpid()
        self.owner = _owner_token()
        self._sync = Synchronizer(self.store, self.clock)
        self._leases = LeaseKeeper(self)
        self._poller: Poller | None = None
        # Ends of runs waiting to be written together (see EndQueueMixin).
        self._ends: list[tuple[Claim, RunEnd, Decision]] = []
        self._ends_since = 0.0
        self._pace: float | None = None
        self._events = EventBus()

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
        name = options.pop("name", None)
        if name is None:
            name = default_name(func)
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
        spec = self._registry.get(function) if function is not None else None
        if function is None or spec is None:
            wanted = job if isinstance(job, str) else default_name(job)
            raise JobNotFound(
                wanted,
                f"no function {wanted!r} is registered in this scheduler; "
                "enqueue() runs a function registered here (a job stored by "
                "another process shows in jobs() and get_job())",
            )

        job_name = name or f"{function}@{uuid.uuid4().hex[:16]}"
        check_name(job_name)
        try:
            # Name the function (or the given name), not a generated one.
            text = encode_args(name or function, args, dict(kwargs or {}))
            self._ensure_ready()
            trigger = OnceTrigger(at if at is not None else self.clock.now())
        except JobDefinitionError as error:
            raise error.for_job(name or function) from error

        # The one-off runs with the policies its function was registered with.
        inserted = self.store.insert_job(
            self._sync.row_values(job_name, function, trigger, text, spec.options),
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
            # The engine's pool refuses the parent's connections (see _forksafe).
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

    # -- background thread -------------------------------------------------------

    def start(self) -> None:
        """Start polling and running jobs in background threads.

        One thread polls the table and sleeps until the next due time (at most
        ``poll_interval``); ``max_workers`` threads run the jobs. It claims no
        more jobs than it has free workers.

        Raises:
            SchedulerStateError: It is already started, or the tables do not
                exist and ``create_tables`` is off.
            SchemaVersionError: The tables were written by a newer jobsched.
        """
        self._check_fork()
        try:
            # Refuse at once what no retry can fix (no tables, newer schema).
            self._ensure_ready()
        except StoreError as error:
            logger.warning("database not reachable yet, will keep trying: %s", error)

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
