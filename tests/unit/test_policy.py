"""The pure misfire, overlap and retry decisions (``jobsched._policy``).

These functions decide which fire time runs and which are recorded as missed;
the store then applies the decision with one fenced statement. They read no
clock and no database, so every rule is pinned here with exact times.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from tenacity import wait_exponential, wait_fixed

from jobsched import CronTrigger, IntervalTrigger, Misfire, OnceTrigger, Overlap
from jobsched._models import JobOptions
from jobsched._policy import (
    MAX_MISSED_ROWS,
    plan_after_run,
    plan_due,
    retry_delay,
)

UTC = timezone.utc
T0 = datetime(2025, 1, 1, tzinfo=UTC)
DAILY_2AM = CronTrigger("0 2 * * *")


def at(day: int, hour: int = 2) -> datetime:
    return datetime(2025, 1, day, hour, tzinfo=UTC)


# -- a job whose fire time has come ----------------------------------------------------


def test_on_time_fire_runs_and_nothing_is_missed() -> None:
    plan = plan_due(DAILY_2AM, at(1), at(1) + timedelta(seconds=3), JobOptions())

    assert plan.run_for == at(1)
    assert plan.missed == []
    assert plan.missed_total == 0
    assert plan.next_fire == at(2)


def test_coalesce_runs_the_latest_of_five_missed_fire_times() -> None:
    """Several days down, default policy: 1 run, 4 missed (CASES B23)."""
    plan = plan_due(DAILY_2AM, at(1), at(5, 3), JobOptions())

    assert plan.run_for == at(5)
    assert plan.missed == [at(1), at(2), at(3), at(4)]
    assert plan.missed_total == 4
    assert plan.next_fire == at(6)
    assert plan.reason


def test_grace_shorter_than_the_outage_runs_nothing() -> None:
    """Each missed fire time is recorded; none is dropped silently (B23 skip)."""
    options = JobOptions(grace=timedelta(minutes=30))

    plan = plan_due(DAILY_2AM, at(1), at(5, 3), options)

    assert plan.run_for is None
    assert plan.missed == [at(1), at(2), at(3), at(4), at(5)]
    assert plan.missed_total == 5
    assert plan.next_fire == at(6)


def test_a_fire_exactly_grace_late_still_runs() -> None:
    options = JobOptions(grace=timedelta(hours=1))

    plan = plan_due(DAILY_2AM, at(5), at(5, 3), options)

    assert plan.run_for == at(5)


def test_catch_up_runs_the_oldest_fire_time_and_keeps_the_rest_due() -> None:
    options = JobOptions(misfire=Misfire.CATCH_UP, catch_up_window=timedelta(days=7))

    plan = plan_due(DAILY_2AM, at(1), at(5, 3), options)

    assert plan.run_for == at(1)
    assert plan.missed == []
    assert plan.next_fire == at(2)


def test_catch_up_misses_fire_times_older_than_its_window() -> None:
    options = JobOptions(misfire=Misfire.CATCH_UP, catch_up_window=timedelta(days=2))

    plan = plan_due(DAILY_2AM, at(1), at(5, 3), options)

    assert plan.run_for == at(4)
    assert plan.missed == [at(1), at(2), at(3)]
    assert plan.missed_total == 3
    assert plan.next_fire == at(5)


def test_catch_up_with_everything_too_late_runs_nothing() -> None:
    options = JobOptions(
        misfire=Misfire.CATCH_UP,
        catch_up_window=timedelta(days=7),
        grace=timedelta(minutes=1),
    )

    plan = plan_due(DAILY_2AM, at(1), at(5, 3), options)

    assert plan.run_for is None
    assert plan.missed_total == 5
    assert plan.next_fire == at(6)


def test_a_one_off_that_is_due_runs_and_then_has_no_next_fire() -> None:
    plan = plan_due(OnceTrigger(T0), T0, T0 + timedelta(hours=5), JobOptions())

    assert plan.run_for == T0
    assert plan.next_fire is None


def test_a_long_outage_is_decided_quickly_and_stores_few_missed_rows() -> None:
    """A one-second job after a day offline: bounded work and history."""
    every_second = IntervalTrigger(timedelta(seconds=1), start=T0)
    now = T0 + timedelta(days=1)

    started = time.perf_counter()
    plan = plan_due(every_second, T0, now, JobOptions())
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0
    assert len(plan.missed) <= MAX_MISSED_ROWS
    assert plan.next_fire == now + timedelta(seconds=1)


def test_a_long_outage_coalesces_into_the_latest_fire_time() -> None:
    """Coalescing runs the latest due fire time, however long the outage.

    With more due fire times than the scan limit, the run must still be for the
    latest one (``now``) and every fire time before it must be counted.
    """
    every_second = IntervalTrigger(timedelta(seconds=1), start=T0)
    now = T0 + timedelta(days=1)

    plan = plan_due(every_second, T0, now, JobOptions())

    assert plan.run_for == now
    assert plan.missed_total == 86_400
    assert plan.missed[-1] == now - timedelta(seconds=1)


def test_a_long_outage_with_grace_still_runs_the_fire_time_in_grace() -> None:
    every_second = IntervalTrigger(timedelta(seconds=1), start=T0)
    now = T0 + timedelta(days=1)

    plan = plan_due(every_second, T0, now, JobOptions(grace=timedelta(seconds=5)))

    assert plan.run_for == now


# -- a run that ended ------------------------------------------------------------------


def test_after_a_short_run_the_next_fire_time_follows() -> None:
    plan = plan_after_run(DAILY_2AM, at(1), at(1) + timedelta(minutes=5), JobOptions())

    assert plan.run_for is None
    assert plan.next_fire == at(2)
    assert plan.missed_total == 0


def test_fire_times_passed_during_a_run_are_missed_under_skip() -> None:
    """Overlap: at most one run in progress; passed fire times are recorded."""
    hourly = CronTrigger("0 * * * *")
    ran_for = datetime(2025, 1, 1, 10, tzinfo=UTC)

    plan = plan_after_run(
        hourly, ran_for, ran_for + timedelta(hours=3, minutes=5), JobOptions()
    )

    assert plan.missed == [ran_for + timedelta(hours=h) for h in (1, 2, 3)]
    assert plan.missed_total == 3
    assert plan.next_fire == ran_for + timedelta(hours=4)


def test_queue_runs_once_more_for_the_latest_passed_fire_time() -> None:
    hourly = CronTrigger("0 * * * *")
    ran_for = datetime(2025, 1, 1, 10, tzinfo=UTC)
    options = JobOptions(overlap=Overlap.QUEUE)

    plan = plan_after_run(
        hourly, ran_for, ran_for + timedelta(hours=3, minutes=5), options
    )

    assert plan.next_fire == ran_for + timedelta(hours=3)
    assert plan.missed == [ran_for + timedelta(hours=h) for h in (1, 2)]
    assert plan.missed_total == 2


def test_catch_up_keeps_passed_fire_times_due_after_a_run() -> None:
    options = JobOptions(misfire=Misfire.CATCH_UP)

    plan = plan_after_run(DAILY_2AM, at(1), at(3, 5), options)

    assert plan.next_fire == at(2)
    assert plan.missed_total == 0


def test_interval_fire_times_stay_anchored_however_late_the_run() -> None:
    """Intervals never drift: the next fire is anchored, not run end + every."""
    every_minute = IntervalTrigger(timedelta(minutes=1), start=T0)
    ran_for = T0 + timedelta(minutes=1)

    plan = plan_after_run(
        every_minute, ran_for, ran_for + timedelta(seconds=41), JobOptions()
    )

    assert plan.next_fire == T0 + timedelta(minutes=2)


def test_a_one_off_has_nothing_after_its_run() -> None:
    plan = plan_after_run(OnceTrigger(T0), T0, T0 + timedelta(hours=1), JobOptions())

    assert plan.next_fire is None
    assert plan.missed_total == 0


# -- retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 7])
def test_retry_delay_of_a_fixed_wait(attempt: int) -> None:
    assert retry_delay(attempt, wait_fixed(1)) == timedelta(seconds=1)


def test_retry_delay_follows_tenacity_exponential_backoff() -> None:
    wait = wait_exponential(multiplier=1, min=1, max=8)

    delays = [retry_delay(attempt, wait) for attempt in range(1, 7)]

    assert delays == [timedelta(seconds=s) for s in (1, 2, 4, 8, 8, 8)]


def test_retry_delay_is_never_negative() -> None:
    assert retry_delay(1, lambda state: -3.0) == timedelta(0)
