"""Schedules end to end: fake clock, real database, several schedulers at once.

Each scheduler stands for one process; they share the database and take turns
polling while the fake clock moves in steps, the way processes with a poll
interval would.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from jobsched import RunOutcome, Scheduler
from jobsched.testing import FakeClock

UTC = timezone.utc


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def drive(
    make_scheduler: Callable[..., Scheduler],
    *,
    start: datetime,
    end: datetime,
    step: timedelta,
    processes: int,
    **job: object,
) -> list[datetime]:
    """Run one job on ``processes`` schedulers from start to end; return its runs."""
    clock = FakeClock(start)
    schedulers = [make_scheduler(clock=clock) for _ in range(processes)]
    executed: list[datetime] = []

    def body() -> None:
        executed.append(clock.now())

    for scheduler in schedulers:
        scheduler.register(body, name="job", **job)

    while clock.now() <= end:
        for scheduler in schedulers:
            scheduler.run_pending()
        clock.advance(step)

    runs = schedulers[0].runs("job", limit=1000).items
    ran = sorted(r.scheduled_for for r in runs if r.outcome is RunOutcome.SUCCEEDED)
    assert len(executed) == len(ran), "every recorded run executed exactly once"
    return ran


def test_daily_midnight_job_keeps_every_day_across_spring_forward(make_scheduler):
    """Spring-forward day must not skip the next daily run (case B01)."""
    ran = drive(
        make_scheduler,
        start=utc("2025-03-29T22:00"),
        end=utc("2025-04-01T00:00"),
        step=timedelta(minutes=10),
        processes=2,
        cron="0 0 * * *",
        timezone="Europe/Berlin",
    )

    assert ran == [
        utc("2025-03-29T23:00"),
        utc("2025-03-30T22:00"),
        utc("2025-03-31T22:00"),
    ]


def test_fixed_hour_job_fires_once_on_fall_back_day(make_scheduler):
    """A 01:30 job fires at the first 01:30 only on fall-back day (case B02)."""
    ran = drive(
        make_scheduler,
        start=utc("2026-10-31T16:00"),
        end=utc("2026-11-02T12:00"),
        step=timedelta(minutes=10),
        processes=3,
        cron="30 1 * * *",
        timezone="America/New_York",
    )

    assert ran == [
        utc("2026-11-01T05:30"),
        utc("2026-11-02T06:30"),
    ]


def test_hourly_job_fires_in_both_repeated_hours(make_scheduler):
    """An hourly job keeps its UTC cadence through the repeated hour (case B02)."""
    ran = drive(
        make_scheduler,
        start=utc("2022-11-06T04:30"),
        end=utc("2022-11-06T09:00"),
        step=timedelta(minutes=5),
        processes=3,
        cron="0 * * * *",
        timezone="America/New_York",
    )

    assert ran == [utc(f"2022-11-06T0{hour}:00") for hour in range(5, 10)]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        pytest.param(
            "2025-03-29T12:00",
            "2025-04-01T12:00",
            ["2025-03-30T01:00", "2025-03-31T00:00", "2025-04-01T00:00"],
            id="spring",
        ),
        pytest.param(
            "2025-10-25T12:00",
            "2025-10-28T12:00",
            ["2025-10-26T00:00", "2025-10-27T01:00", "2025-10-28T01:00"],
            id="autumn",
        ),
    ],
)
def test_daily_job_at_the_changing_hour_runs_once_a_day(
    make_scheduler, start, end, expected
):
    """02:00 Berlin is skipped in spring and doubled in autumn: still one run a day.

    In spring the missing 02:00 fires at the first instant after the gap (03:00
    CEST = 01:00Z); in autumn only the first 02:00 (CEST = 00:00Z) fires.
    """
    ran = drive(
        make_scheduler,
        start=utc(start),
        end=utc(end),
        step=timedelta(minutes=15),
        processes=2,
        cron="0 2 * * *",
        timezone="Europe/Berlin",
    )

    assert ran == [utc(text) for text in expected]


def test_cron_in_new_york_fires_at_the_same_instant_for_every_process(
    make_scheduler, monkeypatch
):
    """Processes in different local time zones agree on fire times (case B05)."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    ran = drive(
        make_scheduler,
        start=utc("2025-06-01T00:00"),
        end=utc("2025-06-03T00:00"),
        step=timedelta(minutes=20),
        processes=2,
        cron="0 9 * * *",
        timezone="America/New_York",
    )

    assert ran == [utc("2025-06-01T13:00"), utc("2025-06-02T13:00")]
