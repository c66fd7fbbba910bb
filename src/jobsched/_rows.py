"""The records that the store reads and writes: rows, claims and decisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from ._models import JobState, RunOutcome


@dataclass(frozen=True)
class JobRow:
    """The columns of one job row that the scheduler decides from."""

    id: int
    name: str
    function: str
    trigger: str
    args: str
    options: str
    status: JobState
    next_run_at: datetime | None
    scheduled_for: datetime | None
    attempt: int
    owner: str | None
    lease_until: datetime | None
    version: int


@dataclass(frozen=True)
class Decision:
    """What to write for one job: a claim, a skip, or a completion.

    Attributes:
        status: The job's new state.
        next_run_at: Its new next run time.
        run_for: The fire time of the run being started (claims only).
        attempt: The attempt number to store on the job.
        scheduled_for: The fire time to store on the job (pending retry or run).
        missed: Fire times to record as missed runs.
        missed_total: How many fire times were missed in all.
        reason: Why they were missed.
        error: A reason stored on the job (broken rows, last failure).
    """

    status: JobState
    next_run_at: datetime | None
    run_for: datetime | None = None
    attempt: int = 0
    scheduled_for: datetime | None = None
    missed: tuple[datetime, ...] = ()
    missed_total: int = 0
    reason: str = ""
    error: str | None = None


class ClaimSettings(NamedTuple):
    """What every claim of one batch shares."""

    owner: str
    now: datetime
    lease: timedelta
    decide: Callable[[JobRow], Decision]


@dataclass(frozen=True)
class Claim:
    """A run this process has claimed and must finish (or lose to fencing)."""

    job_id: int
    name: str
    function: str
    trigger: str
    args: str
    options: str
    owner: str
    version: int
    scheduled_for: datetime
    attempt: int
    started_at: datetime
    run_id: int = 0


@dataclass(frozen=True)
class RunEnd:
    """How a run ended, as written to its history row."""

    outcome: RunOutcome
    finished_at: datetime
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    duration: float = 0.0
