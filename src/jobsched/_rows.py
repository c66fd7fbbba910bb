"""The records that the store reads and writes: rows, claims and decisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from ._models import JobState, RunOutcome

#: The most characters of an error text (a message, a traceback, a reason) that
#: the tables keep. At 4 bytes a character in UTF-8 this stays within the 65,535
#: bytes of a MySQL/MariaDB ``TEXT`` column.
MAX_TEXT = 16_000
#: The most characters of an exception's type name (a ``VARCHAR(255)`` column).
MAX_TYPE = 255
# How much of a clipped text's start is kept; the rest of the room goes to its
# end, where a traceback names the error.
_HEAD = 4_000
# Room kept for the note that says how much was cut.
_MARKER_ROOM = 40


def clip_text(text: str | None, limit: int = MAX_TEXT) -> str | None:
    r"""``text`` as the tables store it: no NUL characters, at most ``limit`` long.

    PostgreSQL refuses NUL in text and SQLite's JSON functions end a string
    there, so each becomes the visible escape ``\x00``. A longer text keeps
    its start and its end, with the number of characters cut between them.
    """
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if len(text) <= limit:
        return text
    head = min(_HEAD, limit // 4)
    tail = max(limit - head - _MARKER_ROOM, 0)
    marker = f"\n[... {len(text) - head - tail} characters cut ...]\n"
    return text[:head] + marker + (text[-tail:] if tail else "")


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

    def __post_init__(self) -> None:
        if self.error is not None:
            object.__setattr__(self, "error", clip_text(self.error))
        if self.reason:
            object.__setattr__(self, "reason", clip_text(self.reason))


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

    def __post_init__(self) -> None:
        if self.error_type is not None:
            object.__setattr__(self, "error_type", clip_text(self.error_type, MAX_TYPE))
        if self.error_message is not None:
            object.__setattr__(self, "error_message", clip_text(self.error_message))
        if self.traceback is not None:
            object.__setattr__(self, "traceback", clip_text(self.traceback))
