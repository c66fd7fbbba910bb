"""Value types shared by the scheduler, the store and the runner."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from ._triggers import Trigger

T = TypeVar("T")


class JobState(str, enum.Enum):
    """The state of a job row, stored verbatim in its ``status`` column."""

    #: Waiting for its next run time (or for the next attempt of a retry).
    SCHEDULED = "scheduled"
    #: Claimed by a process, which holds its lease.
    RUNNING = "running"
    #: Kept, but not run until resumed.
    PAUSED = "paused"
    #: Has no fire times left; its last run succeeded.
    DONE = "done"
    #: Has no fire times left; its last run failed after every attempt.
    FAILED = "failed"
    #: The row cannot be interpreted (bad trigger, time zone or arguments). It is
    #: kept as written, with the reason in ``error``, and never run.
    BROKEN = "broken"


class RunOutcome(str, enum.Enum):
    """How a run ended, stored verbatim in the runs table."""

    #: Still in progress.
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Never started: the fire time passed unused (misfire, grace or overlap).
    MISSED = "missed"
    #: Its process lost the lease (crashed, hung or was cut off).
    ABANDONED = "abandoned"
    #: Ran longer than the job's timeout.
    TIMED_OUT = "timed_out"


class Misfire(str, enum.Enum):
    """What to do with fire times that passed while nothing ran them."""

    #: Run once, for the latest missed fire time; record the others as missed.
    COALESCE = "coalesce"
    #: Run every missed fire time inside the catch-up window, oldest first.
    CATCH_UP = "catch_up"


class Overlap(str, enum.Enum):
    """What to do with fire times that pass while the job is still running."""

    #: Record them as missed and wait for the next future fire time.
    SKIP = "skip"
    #: Run once more as soon as the current run ends.
    QUEUE = "queue"


@dataclass(frozen=True)
class JobOptions:
    """The per-job policies that are stored with the job's row.

    Attributes:
        misfire: What to do with fire times that nobody ran in time.
        grace: A run that would start later than this after its fire time is
            recorded as missed instead. ``None`` means no limit.
        catch_up_window: With :attr:`Misfire.CATCH_UP`, how far back missed fire
            times are still run.
        overlap: What to do with fire times that pass during a run.
        max_attempts: How many times one fire time is tried (1 = no retries).
        timeout: A run longer than this is recorded as timed out. ``None``
            means no limit.
    """

    misfire: Misfire = Misfire.COALESCE
    grace: timedelta | None = None
    catch_up_window: timedelta = timedelta(days=1)
    overlap: Overlap = Overlap.SKIP
    max_attempts: int = 1
    timeout: timedelta | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the options as a JSON-able mapping."""
        return {
            "misfire": self.misfire.value,
            "grace": None if self.grace is None else self.grace.total_seconds(),
            "catch_up_window": self.catch_up_window.total_seconds(),
            "overlap": self.overlap.value,
            "max_attempts": self.max_attempts,
            "timeout": None if self.timeout is None else self.timeout.total_seconds(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobOptions:
        """Build options from :meth:`to_json` output (unknown keys are ignored)."""
        default = cls()
        grace = data.get("grace")
        window = data.get("catch_up_window")
        timeout = data.get("timeout")
        return cls(
            misfire=Misfire(data.get("misfire", default.misfire.value)),
            grace=None if grace is None else timedelta(seconds=float(grace)),
            catch_up_window=(
                default.catch_up_window
                if window is None
                else timedelta(seconds=float(window))
            ),
            overlap=Overlap(data.get("overlap", default.overlap.value)),
            max_attempts=int(data.get("max_attempts", default.max_attempts)),
            timeout=None if timeout is None else timedelta(seconds=float(timeout)),
        )


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job row, as the management API returns it.

    Attributes:
        name: The job's unique name.
        function: The name of the registered function that runs it.
        trigger: Its schedule, or ``None`` when the stored one is unreadable.
        status: Its state.
        next_run_at: When it is next due (UTC), if ever.
        last_run_at: When its last run started (UTC).
        last_outcome: How its last run ended.
        attempt: Attempts made for the pending fire time (0 when none failed).
        owner: The process holding its lease, while running.
        lease_until: When that lease expires.
        args: Positional arguments passed to the function.
        kwargs: Keyword arguments passed to the function.
        error: Why the row is broken, or the last error's summary.
        missed_count: Fire times of this job recorded as missed so far.
    """

    name: str
    function: str
    trigger: Trigger | None
    status: JobState
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_outcome: RunOutcome | None
    attempt: int
    owner: str | None
    lease_until: datetime | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: str | None
    missed_count: int


@dataclass(frozen=True)
class RunInfo:
    """One row of the run history.

    Attributes:
        id: The run's key, increasing with time.
        job: The job's name.
        scheduled_for: The fire time this run belongs to (UTC).
        attempt: 1 for the first try of that fire time, 2 for the first retry...
            and 0 for a fire time recorded as missed.
        owner: The process that ran it.
        started_at: When it started (UTC).
        finished_at: When it ended (UTC), unless it is still running.
        outcome: How it ended.
        error_type: The exception's qualified type name, if it failed.
        error_message: ``str()`` of that exception, or why it was missed.
        traceback: The formatted traceback, if it failed.
    """

    id: int
    job: str
    scheduled_for: datetime
    attempt: int
    owner: str | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: RunOutcome
    error_type: str | None
    error_message: str | None
    traceback: str | None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a key-paginated listing.

    Attributes:
        items: The rows on this page.
        next_cursor: Pass it as the cursor to get the next page; ``None`` on the
            last page.
    """

    items: Sequence[T]
    next_cursor: Any = None


@dataclass(frozen=True)
class RunResult:
    """What happened to one run that this process executed.

    Attributes:
        job: The job's name.
        run_id: The key of its row in the run history.
        scheduled_for: The fire time it ran for (UTC).
        attempt: Which attempt this was.
        outcome: How it ended.
        error: The exception the job raised, if any.
        duration: How long the function ran, in seconds.
    """

    job: str
    run_id: int
    scheduled_for: datetime
    attempt: int
    outcome: RunOutcome
    error: BaseException | None = field(default=None, compare=False)
    duration: float = 0.0
