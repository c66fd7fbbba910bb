"""The management API on every backend: listing, paging, pausing, triggering.

Listings are paginated by key, never by OFFSET: jobs by name, runs by id, newest
first, with a default and a hard maximum page size.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import insert, select

from jobsched import (
    ConfigurationError,
    JobNotFound,
    JobState,
    RunOutcome,
    Scheduler,
    SchedulerStateError,
)
from jobsched.testing import FakeClock

UTC = timezone.utc
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


def noop(*args: Any, **kwargs: Any) -> None:
    """A job body."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def scheduler(make_scheduler: Callable[..., Scheduler], clock: FakeClock) -> Scheduler:
    scheduler = make_scheduler(clock=clock)
    scheduler.register(noop, name="send")
    return scheduler


def add_one_offs(scheduler: Scheduler, names: list[str], at: datetime) -> None:
    """Insert many one-off job rows in one statement (enqueue writes one each)."""
    scheduler.enqueue("send", name=names[0], at=at)
    jobs = scheduler.tables.jobs
    with scheduler.engine.begin() as conn:
        template = dict(
            conn.execute(select(jobs).where(jobs.c.name == names[0])).one()._mapping
        )
        del template["id"]
        conn.execute(insert(jobs), [{**template, "name": name} for name in names[1:]])


def collect_jobs(scheduler: Scheduler, limit: int, **filters: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = scheduler.jobs(after=cursor, limit=limit, **filters)
        pages.append([job.name for job in page.items])
        cursor = page.next_cursor
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not end"


# -- listing jobs ----------------------------------------------------------------------


def test_job_pages_cover_every_job_once_in_name_order(scheduler: Scheduler) -> None:
    names = [f"job-{n:03}" for n in range(20)]
    add_one_offs(scheduler, names, T0 + MINUTE)

    by_seven = collect_jobs(scheduler, limit=7)
    by_ten = collect_jobs(scheduler, limit=10)

    assert [len(page) for page in by_seven] == [7, 7, 6]
    assert [name for page in by_seven for name in page] == names
    # A full last page has a cursor; the page after it is empty and ends.
    assert [len(page) for page in by_ten] == [10, 10, 0]
    assert [name for page in by_ten for name in page] == names


def test_a_key_cursor_neither_skips_nor_repeats_when_jobs_are_added(
    scheduler: Scheduler,
) -> None:
    """Unlike OFFSET, a key cursor does not shift when rows appear before it."""
    add_one_offs(scheduler, [f"job-{n:03}" for n in range(0, 20, 2)], T0 + MINUTE)
    first = scheduler.jobs(limit=4)

    scheduler.enqueue("send", name="job-001", at=T0 + MINUTE)  # before the cursor
    scheduler.enqueue("send", name="job-009", at=T0 + MINUTE)  # after it
    second = scheduler.jobs(after=first.next_cursor, limit=100)

    assert [j.name for j in first.items] == ["job-000", "job-002", "job-004", "job-006"]
    assert [j.name for j in second.items] == [
        "job-008",
        "job-009",
        *(f"job-{n:03}" for n in range(10, 20, 2)),
    ]
    assert second.next_cursor is None


def test_jobs_filtered_by_status_page_by_key_too(scheduler: Scheduler) -> None:
    add_one_offs(scheduler, [f"due-{n}" for n in range(3)], T0)
    add_one_offs(scheduler, [f"later-{n}" for n in range(7)], T0 + timedelta(days=1))
    for name in ("later-1", "later-3", "later-4", "later-6"):
        scheduler.pause(name)
    scheduler.run_pending()

    done = scheduler.jobs(status=JobState.DONE)
    scheduled = scheduler.jobs(status="scheduled")
    paused = collect_jobs(scheduler, limit=3, status="paused")

    assert [j.name for j in done.items] == ["due-0", "due-1", "due-2"]
    assert {j.status for j in done.items} == {JobState.DONE}
    assert [j.name for j in scheduled.items] == ["later-0", "later-2", "later-5"]
    assert paused == [["later-1", "later-3", "later-4"], ["later-6"]]
    assert scheduler.jobs(status="failed").items == []
    with pytest.raises(ValueError, match="'sleeping'"):
        scheduler.jobs(status="sleeping")


def test_page_size_defaults_to_100_and_is_at_most_1000(scheduler: Scheduler) -> None:
    names = [f"job-{n:03}" for n in range(105)]
    add_one_offs(scheduler, names, T0 + MINUTE)

    first = scheduler.jobs()
    second = scheduler.jobs(after=first.next_cursor)

    assert len(first.items) == 100
    assert first.next_cursor == "job-099"
    assert [j.name for j in second.items] == names[100:]
    assert second.next_cursor is None
    assert len(scheduler.jobs(limit=1000).items) == 105
    assert scheduler.runs(limit=1000).items == []
    for limit in (0, -1, 1001, 2.5, "10", None, True):
        message = rf"page size must be an integer from 1 to 1000, got {limit!r}"
        with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
            scheduler.jobs(limit=limit)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
            scheduler.runs(limit=limit)  # type: ignore[arg-type]


def test_get_job_returns_the_stored_state_or_job_not_found(
    scheduler: Scheduler,
) -> None:
    scheduler.register(noop, name="nightly", cron="0 2 * * *", kwargs={"to": "ops"})
    scheduler.run_pending()

    job = scheduler.get_job("nightly")

    assert job.name == job.function == "nightly"
    assert job.status is JobState.SCHEDULED
    assert job.next_run_at == T0 + timedelta(hours=2)
    assert job.trigger.expression == "0 2 * * *"  # type: ignore[union-attr]
    assert (job.args, job.kwargs) == ((), {"to": "ops"})
    assert (job.attempt, job.missed_count, job.owner, job.error) == (0, 0, None, None)
    with pytest.raises(JobNotFound, match=r"^no job named 'nope'$"):
        scheduler.get_job("nope")


# -- listing and pruning runs ----------------------------------------------------------


def run_five_times(scheduler: Scheduler, clock: FakeClock) -> None:
    scheduler.register(noop, name="tick", every=60, start=T0 + MINUTE)
    scheduler.register(noop, name="tock", every=60, start=T0 + MINUTE)
    scheduler.jobs()  # written at T0: the first fire time is T0 + 1 min
    for minute in range(1, 6):
        clock.set(T0 + minute * MINUTE)
        scheduler.run_pending()


def test_runs_are_listed_newest_first_a_page_at_a_time(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    run_five_times(scheduler, clock)

    pages = []
    cursor = None
    while True:
        page = scheduler.runs("tick", before=cursor, limit=2)
        pages.append([run.scheduled_for for run in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break

    fired = [T0 + m * MINUTE for m in range(5, 0, -1)]
    assert pages == [fired[0:2], fired[2:4], fired[4:]]
    everything = scheduler.runs(limit=1000).items
    assert len(everything) == 10
    ids = [r.id for r in everything]
    assert ids == sorted(ids, reverse=True)
    assert {r.job for r in everything} == {"tick", "tock"}
    newest = scheduler.runs("tock", limit=1).items[0]
    assert newest.scheduled_for == newest.started_at == newest.finished_at
    assert newest.scheduled_for == T0 + 5 * MINUTE
    assert (newest.attempt, newest.outcome) == (1, RunOutcome.SUCCEEDED)
    assert newest.owner == scheduler.owner
    assert (newest.error_type, newest.error_message, newest.traceback) == (None,) * 3


def test_prune_runs_by_age_then_by_count_per_job(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    run_five_times(scheduler, clock)  # runs finished at minutes 1..5
    clock.set(T0 + 10 * MINUTE)

    by_age = scheduler.prune_runs(older_than=timedelta(minutes=7, seconds=30))

    assert by_age == 4  # minutes 1 and 2 of both jobs
    assert scheduler.prune_runs(older_than=450.0) == 0
    assert scheduler.prune_runs(keep=2) == 2  # minute 3 of both jobs
    for name in ("tick", "tock"):
        kept = [r.scheduled_for for r in scheduler.runs(name).items]
        assert kept == [T0 + 5 * MINUTE, T0 + 4 * MINUTE]
    assert scheduler.prune_runs(keep=2) == 0
    with pytest.raises(ConfigurationError, match="keep must be at least 1, got 0"):
        scheduler.prune_runs(keep=0)


def test_prune_runs_never_deletes_a_run_in_progress(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    pruned: list[int] = []

    def prunes_while_running() -> None:
        clock.advance(timedelta(days=1))
        pruned.append(scheduler.prune_runs(older_than=0, keep=1))

    scheduler.register(noop, name="tick", every=60, start=T0 + MINUTE)
    scheduler.register(prunes_while_running, name="pruner", at=T0 + 90 * SECOND)
    scheduler.jobs()
    clock.set(T0 + MINUTE)
    scheduler.run_pending()
    clock.set(T0 + 2 * MINUTE)
    scheduler.run_pending()

    assert pruned == [1]  # tick's run of minute 1, not the pruner's own
    (run,) = scheduler.runs("pruner").items
    assert run.outcome is RunOutcome.SUCCEEDED


# -- pause, resume, run now, remove ----------------------------------------------------


def test_a_paused_job_does_not_run_and_resumes_from_now(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    scheduler.register(noop, name="tick", every=60, start=T0 + MINUTE)
    scheduler.enqueue("send", name="later", at=T0 + 5 * MINUTE)
    scheduler.pause("tick")
    scheduler.pause("tick")  # pausing twice is harmless
    scheduler.pause("later")

    clock.set(T0 + 10 * MINUTE + timedelta(seconds=30))
    assert scheduler.run_pending() == []
    assert scheduler.get_job("tick").status is JobState.PAUSED

    scheduler.resume("tick")
    scheduler.resume("later")
    job = scheduler.get_job("tick")
    assert job.status is JobState.SCHEDULED
    assert job.next_run_at == T0 + 11 * MINUTE  # no burst of paused fire times
    assert scheduler.get_job("later").next_run_at == T0 + 5 * MINUTE  # one-off
    assert [r.job for r in scheduler.run_pending()] == ["later"]
    clock.set(T0 + 11 * MINUTE)
    assert [r.scheduled_for for r in scheduler.run_pending()] == [T0 + 11 * MINUTE]


def test_pausing_a_running_job_takes_effect_when_its_run_ends(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    during: list[JobState] = []

    def body() -> None:
        scheduler.pause("tick")  # e.g. from an admin page, while it runs
        during.append(scheduler.get_job("tick").status)
        if len(during) > 1:
            scheduler.resume("tick")

    scheduler.register(body, name="tick", every=60, start=T0 + MINUTE)
    scheduler.jobs()
    clock.set(T0 + MINUTE)

    (result,) = scheduler.run_pending()

    assert result.outcome is RunOutcome.SUCCEEDED
    assert during == [JobState.RUNNING]
    job = scheduler.get_job("tick")
    assert job.status is JobState.PAUSED
    assert job.last_outcome is RunOutcome.SUCCEEDED
    clock.set(T0 + 5 * MINUTE)
    assert scheduler.run_pending() == []

    scheduler.resume("tick")
    clock.set(T0 + 6 * MINUTE)
    assert [r.scheduled_for for r in scheduler.run_pending()] == [T0 + 6 * MINUTE]
    # Pausing and resuming again within that run left it scheduled.
    assert scheduler.get_job("tick").status is JobState.SCHEDULED


def test_run_now_makes_a_job_due_at_once(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    scheduler.register(noop, name="hourly", cron="0 * * * *")
    scheduler.enqueue("send", name="report")
    scheduler.run_pending()
    assert scheduler.get_job("report").status is JobState.DONE
    clock.set(T0 + 20 * MINUTE)

    scheduler.run_now("hourly")
    scheduler.run_now("report")  # a finished one-off runs once more

    ran = scheduler.run_pending()
    assert sorted((r.job, r.scheduled_for) for r in ran) == [
        ("hourly", T0 + 20 * MINUTE),
        ("report", T0 + 20 * MINUTE),
    ]
    assert scheduler.get_job("hourly").next_run_at == T0 + 60 * MINUTE
    assert scheduler.get_job("report").status is JobState.DONE
    assert len(scheduler.runs("report").items) == 2
    assert scheduler.run_pending() == []


def test_run_now_refuses_a_paused_job_and_unknown_names(scheduler: Scheduler) -> None:
    scheduler.enqueue("send", name="report", at=T0 + MINUTE)
    scheduler.pause("report")

    with pytest.raises(
        SchedulerStateError,
        match=r"^job 'report' is paused; only a scheduled, done or failed job",
    ):
        scheduler.run_now("report")
    with pytest.raises(JobNotFound, match="'nope'"):
        scheduler.run_now("nope")
    with pytest.raises(JobNotFound, match="'nope'"):
        scheduler.pause("nope")
    with pytest.raises(JobNotFound, match="'nope'"):
        scheduler.resume("nope")


def test_remove_deletes_the_job_and_keeps_its_history(
    scheduler: Scheduler, make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler.register(noop, name="tick", every=60, start=T0 + MINUTE)
    scheduler.jobs()
    clock.set(T0 + MINUTE)
    scheduler.run_pending()

    scheduler.remove("tick")

    with pytest.raises(JobNotFound, match="'tick'"):
        scheduler.get_job("tick")
    assert [r.job for r in scheduler.runs().items] == ["tick"]
    clock.set(T0 + 5 * MINUTE)
    assert scheduler.run_pending() == []
    with pytest.raises(JobNotFound, match="'tick'"):
        scheduler.remove("tick")

    restarted = make_scheduler(clock=clock)  # a process that still has it
    restarted.register(noop, name="tick", every=60, start=T0 + MINUTE)
    restarted.jobs()
    assert restarted.get_job("tick").next_run_at == T0 + 6 * MINUTE


def test_removing_a_running_job_does_not_leave_its_run_running(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    """Nothing stays ``running`` forever, not even in the history (guarantee 2)."""

    def removes_itself() -> None:
        scheduler.remove("tick")  # e.g. from an admin page, while it runs

    scheduler.register(removes_itself, name="tick", every=60, start=T0 + MINUTE)
    scheduler.jobs()
    clock.set(T0 + MINUTE)
    scheduler.run_pending()

    with pytest.raises(JobNotFound, match="'tick'"):
        scheduler.get_job("tick")
    (run,) = scheduler.runs("tick").items
    assert run.outcome is not RunOutcome.RUNNING
    assert run.finished_at is not None
    clock.advance(timedelta(days=1))
    assert scheduler.prune_runs(older_than=3600) == 1
