"""Pure schedule decisions: which fire time runs now, which are missed, what next.

Nothing here reads a clock or the database: every function takes ``now`` and
the job's stored state, and returns a decision that the store then applies with
one fenced statement. That keeps the rules of DESIGN's "schedule semantics"
testable on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ._models import JobOptions, Misfire, Overlap
from ._triggers import Trigger

# How many past fire times one decision walks through before it stops counting
# one by one; a one-second job after a week offline must not take a second.
MAX_DUE_SCAN = 10_000
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

    The list holds at most :data:`MAX_DUE_SCAN` times; past that the count is a
    lower bound and the walk jumps straight to the first fire time after now.
    """
    due = [first]
    upcoming = trigger.next_after(first)
    while upcoming is not None and upcoming <= now:
        if len(due) >= MAX_DUE_SCAN:
            return due, len(due), trigger.next_after(now)

        due.append(upcoming)
        upcoming = trigger.next_after(upcoming)

    return due, len(due), upcoming


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
        oldest_allowed = now - options.catch_up_window
        for index, fire in enumerate(due):
            if fire >= oldest_allowed and on_time(fire):
                missed = due[:index]
                return Plan(
                    run_for=fire,
                    missed=_limited(missed),
                    missed_total=len(missed),
                    next_fire=trigger.next_after(fire),
                    reason="older than the catch-up window or the grace period",
                )

        return Plan(None, _limited(due), count, upcoming, "too late to catch up")

    latest = due[-1]
    if on_time(latest):
        older = due[:-1]
        return Plan(
            run_for=latest,
            missed=_limited(older),
            missed_total=count - 1,
            next_fire=upcoming,
            reason=f"coalesced into the run for {latest.isoformat()}",
        )

    return Plan(None, _limited(due), count, upcoming, "started too late (grace)")


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
