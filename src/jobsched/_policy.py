"""Pure schedule decisions: which fire time runs now, which are missed, what next.

Nothing here reads a clock or the database: every function takes ``now`` and
the job's stored state, and returns a decision that the store then applies with
one fenced statement. That keeps the rules of DESIGN's "schedule semantics"
testable on their own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ._models import JobOptions, Misfire, Overlap
from ._triggers import IntervalTrigger, Trigger

# How many past fire times one decision walks through before it stops counting
# one by one; a one-second job after a week offline must not take a second.
MAX_DUE_SCAN = 10_000
# Windows looked back over, shortest first, to find the latest fire time before
# now once a walk has gone past MAX_DUE_SCAN.
LOOKBACK_WINDOWS = (
    *(timedelta(seconds=n) for n in (1, 60, 3600, 86_400, 32 * 86_400)),
    timedelta(days=366),
    timedelta(days=366 * 400),
)
# The smallest step of time, to turn "strictly after" into "at or after".
TICK = timedelta(microseconds=1)
# How many missed fire times one decision writes as rows; the rest are counted
# on the job's ``missed_count`` only, so an outage cannot flood the history.
MAX_MISSED_ROWS = 100


@dataclass(frozen=True)
class Plan:
    """A decision about a job whose next fire time has come.

    Attributes:
        run_for: The fire time to run now, or ``None`` to run nothing.
        missed: Fire times to record as missed, oldest first (at most
            :data:`MAX_MISSED_ROWS`).
        missed_total: How many fire times were missed in all (at least
            ``len(missed)``).
        next_fire: The job's next fire time after this decision, or ``None``
            when it has none left.
        reason: Why the missed fire times were missed.
    """

    run_for: datetime | None
    missed: list[datetime] = field(default_factory=list)
    missed_total: int = 0
    next_fire: datetime | None = None
    reason: str = ""


def _due_times(
    trigger: Trigger, first: datetime, now: datetime
) -> tuple[list[datetime], int, datetime | None]:
    """Return the fire times from ``first`` up to ``now``, their count, and the next.

    Past :data:`MAX_DUE_SCAN` times the walk stops; the list then ends with the
    most recent due times instead, and the count is exact for intervals and a
    lower bound for cron.
    """
    due = [first]
    upcoming = trigger.next_after(first)
    while upcoming is not None and upcoming <= now:
        if len(due) >= MAX_DUE_SCAN:
            due.extend(_recent_due(trigger, due[-1], now))
            latest = due[-1]
            count = _count(trigger, first, latest, len(due))
            return due, count, trigger.next_after(latest)

        due.append(upcoming)
        upcoming = trigger.next_after(upcoming)

    return due, len(due), upcoming


def _count(trigger: Trigger, first: datetime, latest: datetime, scanned: int) -> int:
    """Count the fire times from ``first`` to ``latest``: exact for intervals."""
    if isinstance(trigger, IntervalTrigger) and trigger.start is not None:
        every = trigger.every
        grid = (latest - trigger.start) // every - (first - trigger.start) // every
        return 1 + grid
    return scanned  # a lower bound: the walk stopped counting


def _recent_due(trigger: Trigger, floor: datetime, now: datetime) -> list[datetime]:
    """Return the last fire times after ``floor`` and at or before ``now``.

    At most ``MAX_MISSED_ROWS + 1`` of them, oldest first. Looks back from
    ``now`` over growing windows, so a long outage is not walked fire time by
    fire time.
    """
    recent: deque[datetime] = deque(maxlen=MAX_MISSED_ROWS + 1)
    for window in LOOKBACK_WINDOWS:
        start = max(now - window, floor)
        recent.clear()
        found = trigger.next_after(start)
        for _ in range(MAX_DUE_SCAN):
            if found is None or found > now:
                break
            recent.append(found)
            found = trigger.next_after(found)

        if len(recent) == recent.maxlen or start == floor:
            break

    return list(recent)


def _limited(times: list[datetime]) -> list[datetime]:
    return times[-MAX_MISSED_ROWS:]


def plan_due(
    trigger: Trigger, first_due: datetime, now: datetime, options: JobOptions
) -> Plan:
    """Decide what to do with a job whose next fire time ``first_due`` has come.

    Args:
        trigger: The job's schedule.
        first_due: The oldest fire time not yet run or recorded (``<= now``).
        now: The current time.
        options: The job's misfire policy and grace period.

    Returns:
        The plan: under :attr:`Misfire.COALESCE` the latest due fire time runs
        and the older ones are missed; under :attr:`Misfire.CATCH_UP` the oldest
        fire time inside the catch-up window runs and the next one stays due.
        Either way a fire time later than the grace period is missed.
    """
    due, count, upcoming = _due_times(trigger, first_due, now)
    grace = options.grace

    def on_time(fire: datetime) -> bool:
        return grace is None or now - fire <= grace

    if options.misfire is Misfire.CATCH_UP:
        return _catch_up(trigger, due, count, upcoming, now, options)

    latest = due[-1]
    if on_time(latest):
        older = due[:-1]
        return Plan(
            run_for=latest,
            missed=_limited(older),
            missed_total=count - 1,
            next_fire=upcoming,
            reason=f"coalesced into the run for {latest.isoformat()}" if older else "",
        )

    return Plan(None, _limited(due), count, upcoming, "started too late (grace)")


def _catch_up(
    trigger: Trigger,
    due: list[datetime],
    count: int,
    upcoming: datetime | None,
    now: datetime,
    options: JobOptions,
) -> Plan:
    """Run the oldest due fire time that is inside the window and the grace."""
    earliest = now - options.catch_up_window
    if options.grace is not None:
        earliest = max(earliest, now - options.grace)

    # The first fire time at or after ``earliest`` (next_after is strict).
    start = due[0] if due[0] >= earliest else trigger.next_after(earliest - TICK)
    if start is None or start > now:
        return Plan(None, _limited(due), count, upcoming, "too late to catch up")

    missed = [fire for fire in due if fire < start]
    return Plan(
        run_for=start,
        missed=_limited(missed),
        missed_total=len(missed),
        next_fire=trigger.next_after(start),
        reason="older than the catch-up window or the grace period",
    )


def plan_after_run(
    trigger: Trigger, ran_for: datetime, now: datetime, options: JobOptions
) -> Plan:
    """Decide a job's next fire time once a run (or its last attempt) has ended.

    Fire times that came while the job ran are overlap: under
    :attr:`Overlap.SKIP` they are missed and the job waits for the next future
    fire time; under :attr:`Overlap.QUEUE` the latest of them runs next, at once.
    Under :attr:`Misfire.CATCH_UP` they stay due and are caught up in order.

    Args:
        trigger: The job's schedule.
        ran_for: The fire time of the run that ended.
        now: The current time.
        options: The job's policies.

    Returns:
        A plan whose ``run_for`` is always ``None`` and whose ``next_fire`` is the
        job's next run time (``None`` when the schedule has ended).
    """
    upcoming = trigger.next_after(ran_for)
    if upcoming is None or upcoming > now or options.misfire is Misfire.CATCH_UP:
        return Plan(None, next_fire=upcoming)

    due, count, future = _due_times(trigger, upcoming, now)
    if options.overlap is Overlap.QUEUE:
        older = due[:-1]
        return Plan(
            None, _limited(older), count - 1, due[-1], "coalesced into a queued run"
        )

    return Plan(None, _limited(due), count, future, "the previous run was still going")


def retry_delay(attempt: int, wait: object) -> timedelta:
    """Return the delay before the next attempt, from a tenacity wait strategy.

    Args:
        attempt: How many attempts have been made so far (1 after the first).
        wait: A tenacity wait strategy such as ``wait_exponential()``.

    Returns:
        The delay, never negative.
    """
    from tenacity import RetryCallState

    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    seconds = float(wait(state))  # type: ignore[operator]
    return timedelta(seconds=max(seconds, 0.0))
