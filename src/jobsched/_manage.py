"""The management API of the scheduler: events, listing, pausing, triggering."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ._admin import DEFAULT_PAGE_SIZE, Admin, check_page_size, job_info
from ._clock import Clock
from ._decide import Parsed, parse_row, with_jitter
from ._errors import (
    ConfigurationError,
    JobschedError,
    SchedulerStateError,
)
from ._events import Event, EventBus
from ._models import JobInfo, JobState, Page, RunInfo
from ._registry import Registry, as_delta
from ._rows import JobRow
from ._sync import Synchronizer
from ._triggers import CronTrigger, OnceTrigger, Trigger, preview


class ManagementMixin:
    """The management methods of :class:`~jobsched.Scheduler`."""

    clock: Clock
    _admin: Admin
    _events: EventBus
    _registry: Registry
    _sync: Synchronizer

    def _ensure_ready(self) -> None:
        raise NotImplementedError

    def _after_change(self) -> None:
        raise NotImplementedError

    # -- events ----------------------------------------------------------------

    def subscribe(
        self,
        listener: Callable[[Event], None],
        kinds: tuple[type[Event], ...] = (Event,),
    ) -> None:
        """Call ``listener`` with every event of this process of the given kinds.

        Args:
            listener: Called with each event, in the thread where it happened,
                after the change is committed. Exceptions it raises are logged.
            kinds: Event classes to receive (default: all).
        """
        self._events.subscribe(listener, kinds)

    def unsubscribe(self, listener: Callable[[Event], None]) -> None:
        """Stop calling ``listener``."""
        self._events.unsubscribe(listener)

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
        state = _state(status)
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
        trigger = _usable(row).trigger
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
        self._admin.remove(name, self.clock.now())

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
        if keep is not None and (isinstance(keep, bool) or keep < 1):
            raise ConfigurationError(f"keep must be at least 1, got {keep!r}")
        age = _age(older_than)
        self._ensure_ready()
        cutoff = self.clock.now() - age if age is not None else None
        return self._admin.prune_runs(cutoff, keep)

    def preview(
        self, job: str | Trigger, count: int = 5, *, local: bool = False
    ) -> list[datetime]:
        """Return the next ``count`` fire times of a job or a trigger, after now.

        Args:
            job: A job's name (its stored schedule is used, so an interval is
                counted from its stored anchor), or a trigger not registered yet.
            count: How many fire times.
            local: Return them in the cron trigger's time zone instead of UTC
                (the same instants either way).

        Returns:
            Aware datetimes, strictly increasing.

        Raises:
            JobNotFound: No job of that name.
            SchedulerStateError: The job's stored schedule is broken.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigurationError(
                f"count must be a whole number >= 0, got {count!r}"
            )
        if isinstance(job, str):
            self._ensure_ready()
            row, _ = self._admin.get_full(job)
            trigger: Trigger = _usable(row).trigger
        else:
            trigger = job

        times = preview(self._sync.resolve(trigger), self.clock.now(), count)
        if local and isinstance(trigger, CronTrigger):
            zone = ZoneInfo(trigger.timezone)
            return [moment.astimezone(zone) for moment in times]
        return times


def _age(older_than: float | timedelta | None) -> timedelta | None:
    """Validate a pruning age."""
    try:
        age = as_delta(older_than, "older_than")
    except (JobschedError, TypeError) as error:
        raise ConfigurationError(f"older_than must be a duration: {error}") from None
    if age is not None and age < timedelta(0):
        raise ConfigurationError(f"older_than must not be negative, got {older_than!r}")
    return age


def _usable(row: JobRow) -> Parsed:
    """Decode a stored row, or say plainly that it is broken."""
    try:
        return parse_row(row.trigger, row.options, row.args)
    except (ValueError, JobschedError) as error:
        raise SchedulerStateError(f"job {row.name!r} is broken: {error}") from error


def _state(status: JobState | str | None) -> JobState | None:
    """Turn a status filter into a :class:`JobState`, rejecting unknown names."""
    if status is None:
        return None
    try:
        return JobState(status)
    except ValueError:
        known = ", ".join(state.value for state in JobState)
        raise ConfigurationError(
            f"unknown job status {status!r}; expected one of {known}"
        ) from None
