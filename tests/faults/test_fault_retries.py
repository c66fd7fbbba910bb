"""Failing, interrupted and hanging jobs: retry accounting and timeouts.

Cases B26 (attempt counts, the job's own error, ``retry_on``,
``KeyboardInterrupt``) and B13.4 (a hanging job with a timeout, in a thread or
in a child process).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import faultjobs
import pytest
from tenacity import wait_fixed

from conftest import wait_until
from jobsched import JobState
from jobsched.testing import FakeClock

UTC = timezone.utc
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _drive(scheduler, clock, until):
    """Poll once a second of fake time up to ``until``; return every result."""
    results = []
    while clock.now() < until:
        clock.advance(1)
        results.extend(scheduler.run_pending())
    return results


def _attempts(db, job):
    """{fire time: [(attempt, outcome, error type, message)]} of a job's runs."""
    found = defaultdict(list)
    for run in db.started_runs(job):
        found[run["scheduled_for"]].append(
            (run["attempt"], run["outcome"], run["error_type"], run["error_message"])
        )
    return dict(found)


def test_each_fire_time_gets_exactly_max_attempts(make_scheduler, db):
    """max_attempts=4 means 4 attempts per fire time, counted afresh (case B26).

    A minutely job fails at the first and third fire times and succeeds at the
    second, with 4 attempts 1 s apart. The first and third fire times get
    exactly 4 attempts each, every one recorded with the job's own
    ``ValueError('boom')`` (type, message and traceback; never a tenacity
    ``RetryError``); the second runs once. Retries of one fire time never
    consume the next one's run, and the row's attempt counter is reset.
    """
    clock = FakeClock(T0)
    scheduler = make_scheduler(clock=clock)

    def flaky() -> None:
        if clock.now().minute in (1, 3):
            raise ValueError("boom")

    scheduler.register(
        flaky, name="flaky", cron="* * * * *", max_attempts=4, retry_wait=wait_fixed(1)
    )
    assert scheduler.run_pending() == []
    _drive(scheduler, clock, T0 + MINUTE + timedelta(seconds=30))
    row = db.job("flaky")
    assert (row["status"], row["attempt"]) == ("scheduled", 0)
    assert row["next_run_at"] == T0 + 2 * MINUTE
    assert "ValueError('boom')" in row["error"]
    _drive(scheduler, clock, T0 + 3 * MINUTE + timedelta(seconds=30))

    boom = ("failed", "ValueError", "boom")
    assert _attempts(db, "flaky") == {
        T0 + MINUTE: [(n, *boom) for n in (1, 2, 3, 4)],
        T0 + 2 * MINUTE: [(1, "succeeded", None, None)],
        T0 + 3 * MINUTE: [(n, *boom) for n in (1, 2, 3, 4)],
    }
    for run in db.started_runs("flaky"):
        if run["outcome"] == "failed":
            assert "ValueError: boom" in run["traceback"]
            assert "RetryError" not in run["traceback"]
    starts = [r["started_at"] for r in db.started_runs("flaky")][:4]
    assert [b - a for a, b in itertools.pairwise(starts)] == [timedelta(seconds=1)] * 3
    db.assert_nothing_running()


def test_one_off_that_always_fails_ends_failed_after_max_attempts(make_scheduler, db):
    """A one-off failing every attempt ends ``failed`` after exactly 4 (case B26)."""
    clock = FakeClock(T0)
    scheduler = make_scheduler(clock=clock)

    def broken() -> None:
        raise ValueError("boom")

    scheduler.register(
        broken,
        name="once",
        at=T0 + timedelta(seconds=5),
        max_attempts=4,
        retry_wait=wait_fixed(1),
    )
    _drive(scheduler, clock, T0 + MINUTE)
    assert _attempts(db, "once") == {
        T0 + timedelta(seconds=5): [
            (n, "failed", "ValueError", "boom") for n in (1, 2, 3, 4)
        ]
    }
    row = db.job("once")
    assert row["status"] == JobState.FAILED.value
    assert row["next_run_at"] is None
    assert "ValueError('boom')" in row["error"]
    db.assert_nothing_running()


def test_only_listed_exception_types_are_retried(make_scheduler, db):
    """retry_on=(OSError,): KeyError fails at once, OSError is retried (case B26)."""
    clock = FakeClock(T0)
    scheduler = make_scheduler(clock=clock)

    def lookup() -> None:
        raise KeyError("missing")

    def disk() -> None:
        raise FileNotFoundError("gone")

    for name, func in (("lookup", lookup), ("disk", disk)):
        scheduler.register(
            func,
            name=name,
            at=T0 + timedelta(seconds=5),
            max_attempts=4,
            retry_wait=wait_fixed(1),
            retry_on=(OSError,),
        )
    _drive(scheduler, clock, T0 + MINUTE)
    fire = T0 + timedelta(seconds=5)
    assert _attempts(db, "lookup") == {fire: [(1, "failed", "KeyError", "'missing'")]}
    assert _attempts(db, "disk") == {
        fire: [(n, "failed", "FileNotFoundError", "gone") for n in (1, 2, 3, 4)]
    }
    assert db.status("lookup") == db.status("disk") == "failed"
    db.assert_nothing_running()


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_interrupt_is_recorded_then_propagates(make_scheduler, db, fatal):
    """KeyboardInterrupt/SystemExit: recorded, not retried, re-raised (case B26).

    ``run_pending()`` claimed two due jobs; the first raises. The run is
    recorded ``failed`` with the exception's type (no retry, despite
    ``max_attempts=4``), the exception propagates to the caller, the row is
    not left ``running``, and the second job, claimed but not started, is
    given back and runs at the next call.
    """
    clock = FakeClock(T0)
    scheduler = make_scheduler(clock=clock)
    ran = []

    def stop_now() -> None:
        raise fatal()

    scheduler.register(
        stop_now, name="a_stop", at=T0, max_attempts=4, retry_wait=wait_fixed(1)
    )
    scheduler.register(
        lambda: ran.append(clock.now()),
        name="b_next",
        at=T0 + timedelta(milliseconds=1),
    )
    clock.advance(1)
    with pytest.raises(fatal):
        scheduler.run_pending()

    assert [
        (r["attempt"], r["outcome"], r["error_type"]) for r in db.runs("a_stop")
    ] == [(1, "failed", fatal.__name__)]
    assert db.status("a_stop") == "failed"
    assert db.runs("b_next") == []
    assert db.status("b_next") == "scheduled"
    db.assert_nothing_running()

    clock.advance(5)
    assert [r.job for r in scheduler.run_pending()] == ["b_next"]
    assert len(ran) == 1
    assert db.runs("a_stop")[0]["attempt"] == 1  # never retried


def test_interrupt_in_the_background_stops_claiming(make_scheduler, db):
    """KeyboardInterrupt in a job under start(): recorded; claiming stops (case B26)."""
    clock = FakeClock(T0)
    scheduler = make_scheduler(clock=clock, poll_interval=0.05)

    def stop_now() -> None:
        raise KeyboardInterrupt

    scheduler.register(stop_now, name="stop", at=T0)
    scheduler.start()
    wait_until(lambda: not scheduler.running, 5, "the polling thread to stop")
    scheduler.stop(timeout=2)
    assert [(r["outcome"], r["error_type"]) for r in db.runs("stop")] == [
        ("failed", "KeyboardInterrupt")
    ]
    db.assert_nothing_running()


# -- B13.4: timeouts ------------------------------------------------------------------


def test_hanging_job_times_out_and_later_fire_times_run(make_scheduler, db):
    """A hanging job with timeout=0.5 is recorded ``timed_out`` (case B13.4).

    The thread executor cannot kill the thread, but the run is recorded
    ``timed_out`` with the reason and the next fire time runs normally.
    """
    clock = FakeClock(T0)
    scheduler = make_scheduler(clock=clock)
    release = threading.Event()
    calls = []

    def hang() -> None:
        calls.append(clock.now())
        if len(calls) == 1:
            release.wait(30)

    scheduler.register(hang, name="hang", every=60, start=T0 + MINUTE, timeout=0.5)
    try:
        scheduler.run_pending()
        clock.set(T0 + MINUTE)
        started = time.monotonic()
        [first] = scheduler.run_pending()
        waited = time.monotonic() - started
        clock.set(T0 + 2 * MINUTE)
        [second] = scheduler.run_pending()
    finally:
        release.set()

    assert first.outcome.value == "timed_out"
    assert 0.4 < waited < 3.0
    assert second.outcome.value == "succeeded"
    runs = db.started_runs("hang")
    assert [(r["scheduled_for"], r["outcome"]) for r in runs] == [
        (T0 + MINUTE, "timed_out"),
        (T0 + 2 * MINUTE, "succeeded"),
    ]
    assert "timeout" in runs[0]["error_message"]
    db.assert_nothing_running()


@pytest.mark.slow
def test_hanging_jobs_do_not_block_a_single_worker(make_scheduler, db):
    """With one worker, hanging runs time out and later ones still run (case B13.4)."""
    scheduler = make_scheduler(max_workers=1, poll_interval=0.05, lease=5.0)
    release = threading.Event()
    calls = []

    def hang() -> None:
        calls.append(time.time())
        release.wait(30)

    scheduler.register(hang, name="hang", every=0.5, timeout=0.3)
    scheduler.jobs()  # tables and row, before the test reads them
    scheduler.start()
    try:
        wait_until(
            lambda: (
                len([r for r in db.runs("hang") if r["outcome"] == "timed_out"]) >= 3
            ),
            10,
            "three timed-out runs",
        )
    finally:
        scheduler.stop(timeout=3)
        release.set()
    db.assert_once_per_fire_time("hang")
    runs = db.started_runs("hang")
    assert {r["outcome"] for r in runs} == {"timed_out"}, runs
    assert len(calls) == len(runs)
    db.assert_nothing_running()


# The executor does not depend on the database: run it on SQLite only.
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_process_executor_kills_the_hanging_child(make_scheduler, db, tmp_path):
    """The process executor kills a hanging child at the timeout (case B13.4).

    The job's function lives in an importable module (``faultjobs``) so the
    ``spawn`` child can import it. The first run hangs: it is recorded
    ``timed_out`` and its child process is gone afterwards; the next fire time
    runs in a new child and succeeds.
    """
    clock = FakeClock(T0)
    scheduler = make_scheduler(clock=clock)
    results = str(tmp_path / "results.jsonl")
    marker = str(tmp_path / "hang")
    scheduler.register(
        faultjobs.hang_first,
        name="hang",
        every=60,
        start=T0 + MINUTE,
        args=[results, "hang", marker],
        timeout=3.0,
        executor="process",
    )
    scheduler.run_pending()
    clock.set(T0 + MINUTE)
    [first] = scheduler.run_pending()
    assert first.outcome.value == "timed_out"
    assert multiprocessing.active_children() == []
    if os.path.exists(marker + ".pid"):  # the body had started before the timeout
        with open(marker + ".pid", encoding="utf-8") as handle:
            child = int(handle.read())
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)

    clock.set(T0 + 2 * MINUTE)
    [second] = scheduler.run_pending()
    assert second.outcome.value == "succeeded"
    assert [(r["scheduled_for"], r["outcome"]) for r in db.started_runs("hang")] == [
        (T0 + MINUTE, "timed_out"),
        (T0 + 2 * MINUTE, "succeeded"),
    ]
    assert "killed" in db.started_runs("hang")[0]["error_message"]
    db.assert_nothing_running()
