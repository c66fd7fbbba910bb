"""Turning a job's stored state into the next write: claim, skip, retry or end.

These functions read no clock and run no SQL; the scheduler passes them the row
it read and the time, and hands the :class:`~jobsched._store.Decision` they
return to the store, which applies it with one fenced statement.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from tenacity import wait_exponential

from ._errors import JobschedError
from ._models import JobOptions, JobState, RunOutcome
from ._policy import Plan, plan_after_run, plan_due, retry_delay
from ._registry import JobSpec, decode_args
from ._rows import Decision, JobRow
from ._triggers import IntervalTrigger, OnceTrigger, Trigger, trigger_from_spec

logger = logging.getLogger(__name__)

# Distinct (trigger, options) texts whose decoding is kept: every claim and end
# decodes them, and most rows share a few.
PARSED_CACHE_SIZE = 1024
# Delay before retry n when a job sets max_attempts but no retry_wait: 1 s, 2 s,
# 4 s ... capped at five minutes.
DEFAULT_RETRY_WAIT = wait_exponential(multiplier=1, min=1, max=300)


@dataclass(frozen=True)
class Parsed:
    """A job row's stored schedule and options, decoded."""

    trigger: Trigger
    options: JobOptions


def parse_row(trigger_text: str, options_text: str, args_text: str) -> Parsed:
    """Decode a row's trigger, options and arguments.

    Raises:
        ValueError: Something stored cannot be used (``InvalidTrigger`` is one).
    """
    try:
        parsed = _parse_schedule(trigger_text, options_text)
        _check_args(args_text)
    except (TypeError, KeyError, AttributeError) as error:
        raise ValueError(str(error)) from error
    return parsed


@lru_cache(maxsize=PARSED_CACHE_SIZE)
def _check_args(args_text: str) -> None:
    """Check that stored arguments decode (each distinct text once)."""
    decode_args(args_text)


@lru_cache(maxsize=PARSED_CACHE_SIZE)
def _parse_schedule(trigger_text: str, options_text: str) -> Parsed:
    """Decode a stored trigger and options; the results are immutable, so cached."""
    trigger = trigger_from_spec(json.loads(trigger_text))
    options = JobOptions.from_json(json.loads(options_text))
    return Parsed(trigger, options)


def broken(row: JobRow, error: Exception) -> Decision:
    """Mark a row that cannot be interpreted, keeping everything else as written."""
    reason = f"cannot run: {error}"
    logger.error(
        "job %r is broken and will not run until it is fixed: %s",
        row.name,
        error,
        extra={"jobsched": {"action": "job_broken", "job": row.name}},
    )
    return Decision(status=JobState.BROKEN, next_run_at=row.next_run_at, error=reason)


def _no_more_fires(plan: Plan, trigger: Trigger) -> JobState:
    if plan.next_fire is not None:
        return JobState.SCHEDULED
    if plan.missed_total and isinstance(trigger, OnceTrigger):
        return JobState.FAILED
    return JobState.DONE


def decide_claim(row: JobRow, now: datetime) -> Decision:
    """Decide what claiming a due job means: run which fire time, miss which.

    Args:
        row: The job row as read (status ``scheduled``, due).
        now: The current time.

    Returns:
        A decision to run (status ``running``), to skip missed fire times only,
        or to mark the row broken.
    """
    try:
        parsed = parse_row(row.trigger, row.options, row.args)
    except (ValueError, JobschedError) as error:
        return broken(row, error)

    # A retry, or a run released at shutdown: that very fire time is pending.
    if row.scheduled_for is not None:
        return Decision(
            status=JobState.RUNNING,
            next_run_at=parsed.trigger.next_after(row.scheduled_for),
            run_for=row.scheduled_for,
            attempt=row.attempt + 1,
            scheduled_for=row.scheduled_for,
        )

    plan = plan_due(parsed.trigger, row.next_run_at or now, now, parsed.options)
    missed = {
        "missed": tuple(plan.missed),
        "missed_total": plan.missed_total,
        "reason": plan.reason,
    }
    if plan.run_for is None:
        return Decision(
            status=_no_more_fires(plan, parsed.trigger),
            next_run_at=with_jitter(parsed.trigger, row.name, plan.next_fire),
            **missed,  # type: ignore[arg-type]
        )

    return Decision(
        status=JobState.RUNNING,
        next_run_at=with_jitter(parsed.trigger, row.name, plan.next_fire),
        run_for=plan.run_for,
        attempt=1,
        scheduled_for=plan.run_for,
        **missed,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Ended:
    """A run that has ended, as the next-state decision needs it.

    Attributes:
        name: The job's name.
        trigger_text: Its stored trigger.
        options_text: Its stored options.
        ran_for: The fire time of the run.
        attempt: The run's attempt number.
        outcome: How it ended.
        error: What it raised, if anything.
    """

    name: str
    trigger_text: str
    options_text: str
    ran_for: datetime
    attempt: int
    outcome: RunOutcome
    error: BaseException | None = None


def with_jitter(trigger: Trigger, name: str, fire: datetime | None) -> datetime | None:
    """Delay a fire time by the trigger's jitter for this job, if it has one.

    The delay is a pure function of the job's name and the fire time, so every
    process computes the same run time.
    """
    if fire is None or not isinstance(trigger, IntervalTrigger):
        return fire
    return fire + trigger.jitter_for(name, fire)


def decide_end(spec: JobSpec | None, ended: Ended, now: datetime) -> Decision:
    """Decide a job's next state once a run of it has ended.

    A failed run (including one abandoned by a lost process or timed out) is
    retried while attempts remain and its error is retryable, after the delay of
    the job's tenacity wait strategy; otherwise the job moves on to its next fire
    time, or ends as ``done`` or ``failed`` when it has none.

    Args:
        spec: The job as registered here, or ``None`` when this process does not
            know it (an abandoned run is then retried with the default wait).
        ended: The run that ended.
        now: The current time.

    Returns:
        The job's next state.
    """
    try:
        parsed = _parse_schedule(ended.trigger_text, ended.options_text)
    except (TypeError, KeyError, AttributeError) as problem:
        raise ValueError(str(problem)) from problem
    failed = ended.outcome is not RunOutcome.SUCCEEDED
    error = ended.error
    summary = None
    if failed:
        summary = ended.outcome.value + (f": {error!r}" if error is not None else "")

    attempts_left = ended.attempt < parsed.options.max_attempts
    if failed and attempts_left and _retryable(spec, error):
        wait = (spec.retry_wait if spec else None) or DEFAULT_RETRY_WAIT
        return Decision(
            status=JobState.SCHEDULED,
            next_run_at=now + retry_delay(ended.attempt, wait),
            attempt=ended.attempt,
            scheduled_for=ended.ran_for,
            error=summary,
        )

    plan = plan_after_run(parsed.trigger, ended.ran_for, now, parsed.options)
    status = JobState.SCHEDULED
    if plan.next_fire is None:
        status = JobState.FAILED if failed else JobState.DONE
    return Decision(
        status=status,
        next_run_at=with_jitter(parsed.trigger, ended.name, plan.next_fire),
        missed=tuple(plan.missed),
        missed_total=plan.missed_total,
        reason=plan.reason,
        error=summary,
    )


def _retryable(spec: JobSpec | None, error: BaseException | None) -> bool:
    if error is None:  # abandoned or timed out: the attempt counts, retry it
        return True
    if spec is None:
        return False
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return False
    return isinstance(error, spec.retry_on)
