from __future__ import annotations

from datetime import datetime, timezone

from jobsched import JobState
from jobsched.testing import FakeClock


def test_cron_job_runs_once_per_fire_time(make_scheduler):
    clock = FakeClock(datetime(2025, 1, 1, tzinfo=timezone.utc))
    scheduler = make_scheduler(clock=clock)
    calls = []

    @scheduler.job(cron="* * * * *", name="tick")
    def tick() -> None:
        calls.append(clock.now())

    assert scheduler.run_pending() == []
    clock.advance(60)
    assert [r.job for r in scheduler.run_pending()] == ["tick"]
    assert scheduler.run_pending() == []
    assert calls == [datetime(2025, 1, 1, 0, 1, tzinfo=timezone.utc)]
    assert scheduler.get_job("tick").status is JobState.SCHEDULED
