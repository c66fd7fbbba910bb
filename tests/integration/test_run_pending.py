"""``Scheduler.run_pending()`` end to end on every backend, with a fake clock.

Each test drives one or more schedulers on one table through fake time and
checks what ran, what was recorded in the run history and where each job was
left.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import tenacity
from sqlalchemy import event, func, insert, select, text

from jobsched import (
    JobNotFound,
    JobschedError,
    JobState,
    RunInfo,
    RunOutcome,
    Scheduler,
    SchedulerStateError,
    current_run,
)
from jobsched import _jsonbatch as jsonbatch
from jobsched._rows import MAX_TEXT
from jobsched.testing import FakeClock

UTC = timezone.utc
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


class ReportError(Exception):
    """An application's own exception type."""


def noop(*args: Any, **kwargs: Any) -> None:
    """A job body."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def job_row(scheduler: Scheduler, name: str) -> dict[str, Any]:
    jobs = scheduler.tables.jobs
    with scheduler.engine.connect() as conn:
        return dict(
            conn.execute(select(jobs).where(jobs.c.name == name)).one()._mapping
        )


def history(scheduler: Scheduler, name: str) -> list[RunInfo]:
    """Every run row of a job, oldest first."""
    return list(reversed(scheduler.runs(name, limit=1000).items))


def executed(scheduler: Scheduler, name: str) -> list[RunInfo]:
    return [r for r in history(scheduler, name) if r.outcome is not RunOutcome.MISSED]


def missed(scheduler: Scheduler, name: str) -> list[datetime]:
    return [
        r.scheduled_for
        for r in history(scheduler, name)
        if r.outcome is RunOutcome.MISSED
    ]


# -- what runs -------------------------------------------------------------------------


def test_only_jobs_registered_in_this_process_are_claimed(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """A row for a function this process lacks is never touched (B30, guarantee 5)."""
    calls: list[str] = []
    v1 = make_scheduler(clock=clock)
    v1.register(lambda: calls.append("report"), name="report", every=60)
    v1.register(noop, name="send")
    v2 = make_scheduler(clock=clock)
    v2.register(lambda: calls.append("cleanup"), name="cleanup", every=60)
    v1.jobs()
    v1.enqueue("send", name="send-1")
    v2.jobs()
    clock.advance(120)
    untouched = {name: job_row(v1, name) for name in ("report", "send-1")}

    results = v2.run_pending()

    assert [r.job for r in results] == ["cleanup"]
    assert calls == ["cleanup"]
    assert {name: job_row(v1, name) for name in ("report", "send-1")} == untouched
    assert history(v2, "report") == history(v2, "send-1") == []


def _held_while_running(
    scheduler: Scheduler, pause: float, held: list[int]
) -> Callable[[], None]:
    """A job body that records how many jobs are running, then sleeps."""
    jobs = scheduler.tables.jobs
    count_running = (
        select(func.count())
        .select_from(jobs)
        .where(jobs.c.status == JobState.RUNNING.value)
    )

    def body() -> None:
        with scheduler.engine.connect() as conn:
            held.append(conn.execute(count_running).scalar_one())
        time.sleep(pause)

    return body


def test_slow_jobs_are_claimed_one_at_a_time_after_the_first_batch(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """run_pending() claims about 0.1 s of work at the recent pace.

    With no pace known, the first batch takes 10 jobs; they take 0.15 s each,
    so from then on it claims one at a time and leaves the others due, for any
    other process to take.
    """
    held: list[int] = []
    scheduler = make_scheduler(clock=clock)
    scheduler.register(_held_while_running(scheduler, 0.15, held), name="slow")
    for number in range(13):
        scheduler.enqueue("slow", name=f"slow-{number:02d}")

    results = scheduler.run_pending()

    assert [r.outcome for r in results] == [RunOutcome.SUCCEEDED] * 13
    assert held[0] == 10  # each later job of the batch may see earlier ends
    # Each later batch holds one job, and perhaps the previous one while its
    # end is being written (a batch of three would show 3 first).
    assert len(held) == 13
    assert all(count <= 2 for count in held[10:]), held


def test_quick_jobs_are_claimed_in_large_batches(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """After a first batch of 10, quick jobs are claimed many at a time."""
    held: list[int] = []
    scheduler = make_scheduler(clock=clock, batch_size=60)
    scheduler.register(_held_while_running(scheduler, 0, held), name="quick")
    for number in range(80):
        scheduler.enqueue("quick", name=f"quick-{number:02d}")

    results = scheduler.run_pending()

    assert len(results) == 80
    assert len({r.job for r in results}) == 80
    assert held[0] == 10
    # A batch of at most batch_size, plus the previous batch while its ends
    # are being written.
    assert 10 < max(held) <= 2 * 60


def test_threads_of_one_scheduler_share_the_work_quietly(
    make_scheduler: Callable[..., Scheduler],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """run_pending() from several threads of one scheduler: each job runs once.

    The threads share the scheduler's owner token, so their claims must not
    overlap (on SQLite, without row locks, both would read the same due rows):
    no claim is rejected by the run history, nothing is logged as skipped.
    """
    caplog.set_level(logging.WARNING, logger="jobsched")
    calls: list[int] = []
    scheduler = make_scheduler(clock=clock)
    scheduler.register(calls.append, name="work")
    for number in range(120):
        scheduler.enqueue("work", args=[number])

    threads = [threading.Thread(target=scheduler.run_pending) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(calls) == list(range(120))
    assert [r.getMessage() for r in caplog.records] == []
    one_offs = [j for j in scheduler.jobs(limit=1000).items if j.name != "work"]
    assert len(one_offs) == 120
    assert {job.status for job in one_offs} == {JobState.DONE}


def test_a_long_call_claims_each_batch_with_a_lease_from_its_own_claim(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """A claim made late in a long run_pending() call gets a whole lease.

    Each job takes 2 s of (fake) time and the lease is 30 s: the jobs claimed
    after the first batch of 10 are claimed 20 s into the call, and the last
    of them starts 38 s into it. Their leases and start times count from
    their own claim, not from the start of the call, so no run starts with its
    lease already expired (which would let any other process recover it while
    it runs).
    """
    margins: list[float] = []
    scheduler = make_scheduler(clock=clock, lease=30.0)
    jobs = scheduler.tables.jobs

    def body() -> None:
        with scheduler.engine.connect() as conn:
            lease_until = conn.execute(
                select(jobs.c.lease_until).where(jobs.c.name == current_run().job)
            ).scalar_one()
        margins.append((lease_until - clock.now()).total_seconds())
        clock.advance(2)

    scheduler.register(body, name="step")
    for number in range(20):
        scheduler.enqueue("step", name=f"step-{number:02d}")

    results = scheduler.run_pending()

    assert [r.outcome for r in results] == [RunOutcome.SUCCEEDED] * 20
    assert len(margins) == 20
    assert all(margin > 0 for margin in margins), margins
    started = sorted(run.started_at for run in scheduler.runs(limit=100).items)
    assert started[0] == T0
    assert started[-1] == T0 + 20 * SECOND  # the second batch's own claim


def test_claims_behind_a_run_slower_than_its_pace_are_given_back(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """A batch sized for quick jobs gives back what a slow one keeps waiting.

    After quick jobs, a batch takes many at a time; when one of them takes
    longer than a second, the jobs claimed behind it are given back (any
    process may take them) and the next batches are sized at the new pace.
    """
    held: list[int] = []
    scheduler = make_scheduler(clock=clock)
    quick = _held_while_running(scheduler, 0, held)
    slow = _held_while_running(scheduler, 1.2, held)
    scheduler.register(quick, name="quick")
    scheduler.register(slow, name="slow")
    names = [f"a{n:02d}" for n in range(30)] + ["b"] + [f"c{n:02d}" for n in range(30)]
    for order, name in enumerate(names):
        job = "slow" if name == "b" else "quick"
        scheduler.enqueue(job, name=name, at=T0 + order * timedelta(microseconds=1))
    clock.advance(1)

    results = scheduler.run_pending()

    assert [r.job for r in results] == names
    # Itself, and perhaps runs whose ends are still being written; not the
    # thirty jobs that were claimed behind the slow one.
    after_slow = held[names.index("b") + 1]
    assert after_slow <= 3, held


def test_run_pending_records_succeeded_runs_and_returns_their_results(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    received: list[Any] = []

    def body(*args: Any, **kwargs: Any) -> None:
        received.append((args, kwargs))
        clock.advance(0.25)

    scheduler = make_scheduler(clock=clock)
    scheduler.register(body, name="a", every=60, args=[1, "x"], kwargs={"k": [None]})
    scheduler.register(body, name="b", every=60, start=T0 + 90 * SECOND)
    scheduler.jobs()
    clock.set(T0 + 90 * SECOND)

    results = scheduler.run_pending()

    assert [(r.job, r.scheduled_for, r.attempt, r.outcome) for r in results] == [
        ("a", T0 + MINUTE, 1, RunOutcome.SUCCEEDED),
        ("b", T0 + 90 * SECOND, 1, RunOutcome.SUCCEEDED),
    ]
    assert all(r.error is None and r.duration >= 0 for r in results)
    assert received == [((1, "x"), {"k": [None]}), ((), {})]
    (run,) = history(scheduler, "a")
    assert run.outcome is RunOutcome.SUCCEEDED
    assert run.started_at == T0 + 90 * SECOND
    assert run.finished_at == T0 + 90 * SECOND + 0.25 * SECOND
    assert results[0].run_id == run.id  # documented: the key of its history row
    assert scheduler.run_pending() == []


def test_a_failing_job_is_recorded_with_its_own_error_and_the_next_job_runs(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    def report() -> None:
        raise ReportError("disk full")

    calls: list[str] = []
    scheduler = make_scheduler(clock=clock)
    scheduler.register(report, name="report", every=60)
    scheduler.register(
        lambda: calls.append("ok"), name="later", every=60, start=T0 + 61 * SECOND
    )
    scheduler.jobs()
    clock.set(T0 + 61 * SECOND)

    failed, succeeded = scheduler.run_pending()

    assert (failed.job, failed.outcome) == ("report", RunOutcome.FAILED)
    assert isinstance(failed.error, ReportError)
    assert str(failed.error) == "disk full"
    assert (succeeded.job, succeeded.outcome) == ("later", RunOutcome.SUCCEEDED)
    assert calls == ["ok"]
    (run,) = history(scheduler, "report")
    assert run.outcome is RunOutcome.FAILED
    assert run.error_type == f"{__name__}.ReportError"
    assert run.error_message == "disk full"
    assert "in report" in run.traceback  # type: ignore[operator]
    assert run.traceback.rstrip().endswith("ReportError: disk full")  # type: ignore[union-attr]
    job = scheduler.get_job("report")
    assert job.status is JobState.SCHEDULED
    assert job.last_outcome is RunOutcome.FAILED
    assert job.next_run_at == T0 + 2 * MINUTE


def test_one_batch_of_ends_keeps_each_run_s_own_text_and_times(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    # The ends of one batch are written together (on some engines as one
    # statement carrying every row's values): each row must get its own
    # message, byte for byte, and its own times; a success stores no error.
    messages = {
        "quote": 'it\'s "quoted" \\ back\\slash',
        "accents": "été, Zürich, 東京 😀",
        "long": "x" * 5000 + "\n" + "ümlaut",
        "json": '[1, {"a": null}]',
    }

    def make(message: str) -> Callable[[], None]:
        def fail() -> None:
            raise ReportError(message)

        return fail

    scheduler = make_scheduler(clock=clock)
    for index, (name, message) in enumerate(messages.items()):
        scheduler.register(make(message), name=name, every=60 + index)
    scheduler.register(noop, name="fine", every=64)
    scheduler.jobs()
    clock.set(T0 + 70 * SECOND)

    results = scheduler.run_pending()

    assert sorted(r.job for r in results) == sorted([*messages, "fine"])
    for index, (name, message) in enumerate(messages.items()):
        (run,) = history(scheduler, name)
        assert (run.outcome, run.error_message) == (RunOutcome.FAILED, message)
        assert run.scheduled_for == T0 + (60 + index) * SECOND
        job = scheduler.get_job(name)
        assert job.last_outcome is RunOutcome.FAILED
        assert job.next_run_at == T0 + 2 * (60 + index) * SECOND
        assert job_row(scheduler, name)["error"] == f"failed: {ReportError(message)!r}"
    (run,) = history(scheduler, "fine")
    assert run.outcome is RunOutcome.SUCCEEDED
    assert (run.error_type, run.error_message, run.traceback) == (None, None, None)
    assert job_row(scheduler, "fine")["error"] is None
    assert scheduler.get_job("fine").next_run_at == T0 + 128 * SECOND


def test_long_texts_and_nul_characters_are_stored_clipped_and_escaped(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    # Every backend keeps a message as long as a MySQL TEXT column can hold:
    # the start and the end of a longer one, and NUL (refused by PostgreSQL,
    # cut at by SQLite's JSON functions) as a visible escape.
    message = "start\x00" + "é" * 100_000 + "the end"

    def fail() -> None:
        raise ReportError(message)

    scheduler = make_scheduler(clock=clock)
    scheduler.register(fail, name="verbose", every=60)
    scheduler.jobs()
    clock.set(T0 + MINUTE)

    (result,) = scheduler.run_pending()

    assert str(result.error) == message  # the caller still sees it whole
    (run,) = history(scheduler, "verbose")
    stored = run.error_message
    assert stored is not None and len(stored) <= MAX_TEXT
    assert stored.startswith("start\\x00éé")
    assert stored.endswith("éé" + "the end")
    assert "characters cut" in stored
    assert run.traceback is not None and run.traceback.rstrip().endswith("the end")
    assert len(run.traceback) <= MAX_TEXT
    assert "\x00" not in (job_row(scheduler, "verbose")["error"] or "x\x00")


def test_a_batch_of_ends_too_large_for_one_statement_is_sent_in_parts(
    make_scheduler: Callable[..., Scheduler],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On MariaDB and SQLite a batch travels as one JSON document; past a size
    # (here made small) it is split, in the same transaction.
    monkeypatch.setattr(jsonbatch, "MAX_DOCUMENT", 20_000)

    def make(index: int) -> Callable[[], None]:
        def fail() -> None:
            raise ReportError(f"{index}:" + "x" * 3_000)

        return fail

    scheduler = make_scheduler(clock=clock)
    for index in range(12):
        scheduler.register(make(index), name=f"j{index}", every=60)
    scheduler.jobs()
    clock.set(T0 + MINUTE)
    batches: list[str] = []  # the JSON documents sent

    @event.listens_for(scheduler.engine, "before_cursor_execute")
    def count(
        conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any
    ) -> None:
        values = parameters.values() if isinstance(parameters, dict) else parameters
        batches.extend(v for v in values if isinstance(v, str) and v.startswith("[["))

    try:
        results = scheduler.run_pending()
    finally:
        event.remove(scheduler.engine, "before_cursor_execute", count)

    assert len(results) == 12
    for index in range(12):
        (run,) = history(scheduler, f"j{index}")
        assert run.error_message == f"{index}:" + "x" * 3_000
        assert scheduler.get_job(f"j{index}").next_run_at == T0 + 2 * MINUTE
    if scheduler.store._json_dialect is not None:
        # The ends of the jobs carry 36 kB of messages, the closes of their
        # runs 75 kB with the tracebacks: both went in several documents.
        assert max(len(document) for document in batches) <= 20_000
        assert sum(len(document) for document in batches) > 100_000


def test_an_end_the_database_refuses_is_dropped_without_holding_up_the_others(
    make_scheduler: Callable[..., Scheduler],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A table rule of the application's refuses one run's message. The other
    # end of the same batch is written; the refused run is recovered as
    # abandoned once its lease expires, as if its process had died.
    def poisoned() -> None:
        raise ReportError("poison pill")

    scheduler = make_scheduler(clock=clock, lease=30.0)
    scheduler.register(poisoned, name="poisoned", every=60)
    scheduler.register(noop, name="fine", every=60)
    scheduler.jobs()
    refuse_messages_containing(scheduler, "poison")
    clock.set(T0 + MINUTE)

    with caplog.at_level(logging.ERROR, logger="jobsched"):
        results = scheduler.run_pending()

    assert sorted(r.job for r in results) == ["fine", "poisoned"]
    (run,) = history(scheduler, "fine")
    assert run.outcome is RunOutcome.SUCCEEDED
    assert scheduler.get_job("fine").status is JobState.SCHEDULED
    assert scheduler.get_job("poisoned").status is JobState.RUNNING
    assert "job 'poisoned': the database refused the result" in caplog.text
    assert scheduler._ends_count() == 0  # nothing left queued to retry for ever

    clock.advance(31)
    scheduler.run_pending()

    (run,) = history(scheduler, "poisoned")
    assert (run.scheduled_for, run.outcome) == (T0 + MINUTE, RunOutcome.ABANDONED)
    job = scheduler.get_job("poisoned")
    assert (job.status, job.next_run_at) == (JobState.SCHEDULED, T0 + 2 * MINUTE)


def refuse_messages_containing(scheduler: Scheduler, word: str) -> None:
    """Make the run history refuse error messages that contain ``word``."""
    runs = scheduler.tables.runs.name
    with scheduler.engine.begin() as conn:
        if scheduler.engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    f"CREATE TRIGGER {runs}_refuse BEFORE UPDATE ON {runs} "
                    f"WHEN NEW.error_message LIKE '%{word}%' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        else:
            conn.execute(
                text(
                    f"ALTER TABLE {runs} ADD CONSTRAINT {runs}_refuse CHECK "
                    f"(error_message IS NULL OR error_message NOT LIKE '%{word}%')"
                )
            )


# -- one-off and interval jobs ---------------------------------------------------------


def test_a_one_off_runs_once_at_its_time_and_ends_done_or_failed(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    calls: list[Any] = []

    def fails() -> None:
        raise ReportError("smtp down")

    scheduler = make_scheduler(clock=clock)
    scheduler.register(calls.append, name="send")
    scheduler.register(fails, name="fails")
    scheduler.enqueue("send", args=[{"to": "ops"}], name="send-1", at=T0 + MINUTE)
    scheduler.enqueue("fails", name="fails-1", at=T0 + MINUTE)

    clock.set(T0 + MINUTE - SECOND)
    assert scheduler.run_pending() == []
    clock.set(T0 + MINUTE)
    assert sorted((r.job, r.scheduled_for) for r in scheduler.run_pending()) == [
        ("fails-1", T0 + MINUTE),
        ("send-1", T0 + MINUTE),
    ]
    clock.advance(timedelta(days=1))
    assert scheduler.run_pending() == []

    assert calls == [{"to": "ops"}]
    done = scheduler.get_job("send-1")
    assert (done.status, done.next_run_at) == (JobState.DONE, None)
    failed = scheduler.get_job("fails-1")
    assert (failed.status, failed.next_run_at) == (JobState.FAILED, None)
    assert "smtp down" in failed.error  # type: ignore[operator]


def test_a_one_off_enqueued_for_now_runs_at_the_next_poll(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    calls: list[int] = []

    def send(value: int) -> None:
        calls.append(value)

    scheduler = make_scheduler(clock=clock)
    scheduler.register(send, name="send")
    scheduler.register(calls.append, name="append")

    by_function = scheduler.enqueue(send, args=[7])
    # ``obj.method`` makes a new bound-method object on every access.
    by_method = scheduler.enqueue(calls.append, args=[8])

    assert by_function.startswith("send") and by_method.startswith("append")
    assert sorted(r.job for r in scheduler.run_pending()) == sorted(
        [by_function, by_method]
    )
    assert sorted(calls) == [7, 8]


def test_interval_runs_stay_on_their_anchor_however_late_the_polls(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """Intervals never drift: fire times are anchor + k * every (DESIGN)."""
    scheduler = make_scheduler(clock=clock)
    scheduler.register(noop, name="tick", every=60)
    scheduler.jobs()  # anchored at T0

    fired: list[datetime] = []
    for late in (17, 59, 1, 45, 0):
        clock.set(T0 + (len(fired) + 1) * MINUTE + late * SECOND)
        fired += [r.scheduled_for for r in scheduler.run_pending()]

    assert fired == [T0 + m * MINUTE for m in range(1, 6)]
    assert scheduler.get_job("tick").next_run_at == T0 + 6 * MINUTE


# -- errors that stop the process ------------------------------------------------------


def test_keyboard_interrupt_is_recorded_then_propagates(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """Recorded, not retried, not swallowed, nothing left running (B26 slot 5)."""
    for fatal in (KeyboardInterrupt, SystemExit):
        name = fatal.__name__

        def interrupted(fatal: type[BaseException] = fatal) -> None:
            raise fatal("stop")

        calls: list[str] = []
        scheduler = make_scheduler(clock=clock)
        scheduler.register(interrupted, name=name, at=clock.now(), max_attempts=3)
        scheduler.register(
            lambda calls=calls: calls.append("next"), name=f"{name}-next"
        )
        scheduler.jobs()
        scheduler.enqueue(
            f"{name}-next", name=f"{name}-next-1", at=clock.now() + SECOND
        )
        clock.advance(2)

        with pytest.raises(fatal):
            scheduler.run_pending()

        (run,) = history(scheduler, name)
        assert (run.outcome, run.error_type) == (RunOutcome.FAILED, name)
        row = job_row(scheduler, name)
        assert (row["status"], row["owner"]) == (JobState.FAILED.value, None)
        # The job claimed in the same batch but never started is given back.
        assert job_row(scheduler, f"{name}-next-1")["status"] == "scheduled"
        assert calls == []

        assert [r.job for r in scheduler.run_pending()] == [f"{name}-next-1"]
        assert calls == ["next"]
        assert [r.attempt for r in history(scheduler, f"{name}-next-1")] == [1]


# -- retries ---------------------------------------------------------------------------


def test_retries_count_attempts_per_fire_time_and_record_the_job_error(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """Retry accounting across three slots: fail, succeed, fail (CASES B26)."""
    outcome_by_slot = {1: "boom", 2: "ok", 3: "boom"}

    def flaky() -> None:
        slot = int((clock.now() - T0) // MINUTE)
        if outcome_by_slot[slot] == "boom":
            raise ValueError("boom")

    scheduler = make_scheduler(clock=clock)
    scheduler.register(
        flaky,
        name="flaky",
        cron="* * * * *",
        max_attempts=4,
        retry_wait=tenacity.wait_fixed(1),
    )
    scheduler.jobs()

    results = []
    for slot in (1, 2, 3):
        clock.set(T0 + slot * MINUTE)
        for _ in range(6):  # a poll every second: retries are 1 s apart
            results += scheduler.run_pending()
            clock.advance(1)

    runs = executed(scheduler, "flaky")
    by_slot = {
        slot: [
            (r.attempt, r.outcome.value)
            for r in runs
            if r.scheduled_for == T0 + slot * MINUTE
        ]
        for slot in (1, 2, 3)
    }
    assert by_slot == {
        1: [(1, "failed"), (2, "failed"), (3, "failed"), (4, "failed")],
        2: [(1, "succeeded")],
        3: [(1, "failed"), (2, "failed"), (3, "failed"), (4, "failed")],
    }
    slot_one = [r for r in runs if r.scheduled_for == T0 + MINUTE]
    assert [r.started_at for r in slot_one] == [
        T0 + MINUTE + n * SECOND for n in range(4)
    ]
    for run in runs:
        if run.outcome is RunOutcome.FAILED:
            assert (run.error_type, run.error_message) == ("ValueError", "boom")
            assert run.traceback.rstrip().endswith("ValueError: boom")  # type: ignore[union-attr]
            assert "RetryError" not in run.traceback  # type: ignore[operator]
    assert all(
        isinstance(r.error, ValueError)
        for r in results
        if r.outcome is RunOutcome.FAILED
    )
    job = scheduler.get_job("flaky")
    assert (job.status, job.attempt) == (JobState.SCHEDULED, 0)
    assert job.next_run_at == T0 + 4 * MINUTE
    assert missed(scheduler, "flaky") == []


def test_a_pending_retry_is_stored_in_the_row_and_survives_a_restart(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """Retries are persisted: another process makes the next attempt (DESIGN)."""

    def flaky() -> None:
        raise ValueError("boom")

    def send() -> None:
        raise ReportError("smtp down")

    retry = {"max_attempts": 2, "retry_wait": tenacity.wait_fixed(1)}
    first = make_scheduler(clock=clock)
    first.register(flaky, name="flaky", every=60, **retry)
    first.register(send, name="send", at=T0 + MINUTE, **retry)
    first.jobs()
    clock.set(T0 + MINUTE)
    first.run_pending()

    for name in ("flaky", "send"):
        row = job_row(first, name)
        assert row["status"] == JobState.SCHEDULED.value
        assert (row["attempt"], row["scheduled_for"]) == (1, T0 + MINUTE)
        assert row["next_run_at"] == T0 + MINUTE + SECOND

    calls: list[int] = []
    restarted = make_scheduler(clock=clock)  # another process takes the retries
    restarted.register(lambda: calls.append(1), name="flaky", every=60, **retry)
    restarted.register(send, name="send", at=T0 + MINUTE, **retry)
    clock.advance(1)
    retries = {r.job: r for r in restarted.run_pending()}

    assert (retries["flaky"].scheduled_for, retries["flaky"].attempt) == (
        T0 + MINUTE,
        2,
    )
    assert retries["flaky"].outcome is RunOutcome.SUCCEEDED
    assert calls == [1]
    assert retries["send"].attempt == 2
    assert isinstance(retries["send"].error, ReportError)
    # The one-off's last attempt failed: it ends failed, with the job's error.
    assert [r.attempt for r in executed(restarted, "send")] == [1, 2]
    job = restarted.get_job("send")
    assert (job.status, job.next_run_at) == (JobState.FAILED, None)
    assert "smtp down" in job.error  # type: ignore[operator]
    clock.advance(60)
    assert [r.job for r in restarted.run_pending()] == ["flaky"]


def test_only_the_listed_exception_types_are_retried(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    errors: list[BaseException] = [KeyError("missing"), OSError("io"), OSError("io")]

    def body() -> None:
        raise errors.pop(0)

    scheduler = make_scheduler(clock=clock)
    scheduler.register(
        body,
        name="picky",
        every=60,
        max_attempts=3,
        retry_on=(OSError,),
        retry_wait=tenacity.wait_fixed(1),
    )
    scheduler.jobs()
    for minute in (1, 2):
        clock.set(T0 + minute * MINUTE)
        for _ in range(4):
            scheduler.run_pending()
            clock.advance(1)

    runs = [
        (r.scheduled_for, r.attempt, r.error_type) for r in executed(scheduler, "picky")
    ]
    assert runs[0] == (T0 + MINUTE, 1, "KeyError")
    assert runs[1:3] == [
        (T0 + 2 * MINUTE, 1, "OSError"),
        (T0 + 2 * MINUTE, 2, "OSError"),
    ]


# -- misfires after an outage ----------------------------------------------------------


def jan(day: int, hour: int = 2) -> datetime:
    return datetime(2025, 1, day, hour, tzinfo=UTC)


MISFIRE_POLICIES: dict[str, tuple[dict[str, Any], list[datetime], list[datetime]]] = {
    "coalesce": ({}, [jan(5)], [jan(1), jan(2), jan(3), jan(4)]),
    "grace": ({"grace": 1800}, [], [jan(d) for d in range(1, 6)]),
    "catch_up": (
        {"misfire": "catch_up", "catch_up_window": timedelta(days=7)},
        [jan(d) for d in range(1, 6)],
        [],
    ),
}


@pytest.mark.parametrize("policy", MISFIRE_POLICIES)
def test_an_outage_of_five_fire_times_by_policy_and_process_count(
    make_scheduler: Callable[..., Scheduler], policy: str
) -> None:
    """Down from Jan 1 01:00 to Jan 5 03:00, daily at 02:00 (CASES B23).

    The same job is restarted on one scheduler and, under another name, on three;
    both see the same runs and the same missed fire times.
    """
    options, ran, skipped = MISFIRE_POLICIES[policy]
    clock = FakeClock(jan(1, 1))
    groups = {
        "solo": [make_scheduler(clock=clock)],
        "trio": [make_scheduler(clock=clock) for _ in range(3)],
    }
    for name, group in groups.items():
        for scheduler in group:
            scheduler.register(noop, name=name, cron="0 2 * * *", **options)
        group[0].jobs()
    clock.set(jan(5, 3))

    for name, group in groups.items():
        for _ in range(10):  # poll in turn until a whole round runs nothing
            if not [r for s in group for r in s.run_pending()]:
                break
        runs = executed(group[0], name)
        assert [r.scheduled_for for r in runs] == ran, name
        assert {r.outcome for r in runs} <= {RunOutcome.SUCCEEDED}
        assert missed(group[0], name) == skipped, name
        job = group[0].get_job(name)
        assert (job.status, job.next_run_at) == (JobState.SCHEDULED, jan(6))
        assert job.missed_count == len(skipped)

    assert len(groups["trio"]) == 3


# -- rows nobody can run ---------------------------------------------------------------


NO_ARGS = '{"args":[],"kwargs":{}}'


def insert_row(
    scheduler: Scheduler, name: str, trigger: dict[str, Any], args: str
) -> None:
    with scheduler.engine.begin() as conn:
        conn.execute(
            insert(scheduler.tables.jobs).values(
                name=name,
                function="target",
                trigger=json.dumps(trigger),
                args=args,
                options="{}",
                status=JobState.SCHEDULED.value,
                paused=False,
                next_run_at=T0,
                attempt=0,
                version=0,
                missed_count=0,
                created_at=T0,
                updated_at=T0,
            )
        )


def test_broken_rows_are_marked_once_and_the_healthy_jobs_keep_running(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """Rows written by someone else with an impossible date, an unknown zone or
    undecodable arguments never stop the other jobs (B07.3, B09.3, B30)."""
    calls: list[str] = []
    scheduler = make_scheduler(clock=clock)
    scheduler.register(lambda: calls.append("pulse"), name="pulse", every=60)
    scheduler.register(lambda *a: calls.append("target"), name="target")
    scheduler.jobs()
    cron = {"kind": "cron", "timezone": "UTC", "seconds": False}
    insert_row(
        scheduler,
        "bad-date",
        {**cron, "expression": "0 0 31 2 *"},
        '{"args":[],"kwargs":{}}',
    )
    insert_row(
        scheduler,
        "bad-zone",
        {**cron, "expression": "0 * * * *", "timezone": "Mars/Phobos"},
        '{"args":[],"kwargs":{}}',
    )
    insert_row(
        scheduler, "bad-args", {"kind": "once", "at": T0.isoformat()}, "{not json"
    )
    clock.set(T0 + MINUTE)

    assert [r.job for r in scheduler.run_pending()] == ["pulse"]

    broken = {job.name: job for job in scheduler.jobs(status="broken").items}
    assert sorted(broken) == ["bad-args", "bad-date", "bad-zone"]
    assert "day-of-month 31 never occurs in month 2" in broken["bad-date"].error  # type: ignore[operator]
    assert "unknown time zone 'Mars/Phobos'" in broken["bad-zone"].error  # type: ignore[operator]
    assert broken["bad-args"].error.startswith("cannot run: ")  # type: ignore[union-attr]
    marked = {name: job_row(scheduler, name) for name in broken}

    clock.set(T0 + 2 * MINUTE)
    assert [r.job for r in scheduler.run_pending()] == ["pulse"]

    assert calls == ["pulse", "pulse"]
    assert {name: job_row(scheduler, name) for name in broken} == marked
    assert all(history(scheduler, name) == [] for name in broken)


def test_managing_a_broken_row_gives_a_jobsched_error_naming_it(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """A broken row can be inspected and paused; what cannot work says why.

    Every error is a :class:`JobschedError` naming the job (STYLE 20), never a raw
    ``json`` error and never "no job named ..." for a row that exists.
    """
    scheduler = make_scheduler(clock=clock)
    scheduler.register(lambda *a: None, name="target")
    scheduler.jobs()
    cron = {"kind": "cron", "timezone": "Mars/Phobos", "seconds": False}
    insert_row(scheduler, "bad-zone", {**cron, "expression": "0 * * * *"}, NO_ARGS)
    insert_row(scheduler, "bad-args", {"kind": "once", "at": T0.isoformat()}, "{nope")
    clock.set(T0 + MINUTE)
    scheduler.run_pending()

    for name in ("bad-zone", "bad-args"):
        assert scheduler.get_job(name).status is JobState.BROKEN
        scheduler.pause(name)  # allowed: it keeps the row out of the way
        with pytest.raises(JobschedError, match=f"'{name}'") as resumed:
            scheduler.resume(name)
        assert not isinstance(resumed.value, JobNotFound)
        with pytest.raises(SchedulerStateError, match=f"^job '{name}' is broken"):
            scheduler.run_now(name)
    with pytest.raises(JobschedError, match="'bad-zone'") as previewed:
        scheduler.preview("bad-zone")
    assert not isinstance(previewed.value, JobNotFound)
