"""``start()``/``stop()``: the background poller with real threads and real time.

Poll intervals are short (50 ms) and every wait is bounded, so these tests take
about a second each. Jobs that must hang block on an event the test releases.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from jobsched import (
    SCHEMA_VERSION,
    JobState,
    RunOutcome,
    Scheduler,
    SchedulerStateError,
    SchemaVersionError,
)
from jobsched._decide import decide_claim

POLL = 0.05


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def idle(scheduler: Scheduler) -> bool:
    """Whether no thread of the scheduler holds a database connection."""
    return scheduler.engine.pool.checkedout() == 0  # type: ignore[attr-defined,no-any-return]


def outcomes(scheduler: Scheduler, name: str | None = None) -> list[RunOutcome]:
    return [run.outcome for run in scheduler.runs(name, limit=1000).items]


def test_jobs_run_in_the_background(make_scheduler: Callable[..., Scheduler]) -> None:
    ran = threading.Event()
    scheduler = make_scheduler(poll_interval=POLL)
    scheduler.register(lambda: ran.set(), name="send")
    scheduler.register(lambda: None, name="tick", every=0.2)

    scheduler.start()
    assert scheduler.running
    scheduler.enqueue("send", name="send-1")

    assert ran.wait(timeout=10)
    assert wait_for(lambda: len(outcomes(scheduler, "tick")) >= 3)
    scheduler.stop(timeout=5)
    assert not scheduler.running

    assert wait_for(lambda: scheduler.get_job("send-1").status is JobState.DONE)
    ticks = sorted(r.scheduled_for for r in scheduler.runs("tick").items)
    gaps = {later - earlier for earlier, later in itertools.pairwise(ticks)}
    assert gaps <= {timedelta(seconds=0.2 * n) for n in range(1, 10)}
    assert set(outcomes(scheduler)) <= {RunOutcome.SUCCEEDED, RunOutcome.MISSED}


def test_never_more_runs_at_once_than_max_workers(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    lock = threading.Lock()
    active = [0]
    peaks: list[int] = []
    claimed: list[int] = []
    scheduler = make_scheduler(poll_interval=POLL, max_workers=2)
    jobs = scheduler.tables.jobs
    count_running = (
        select(func.count())
        .select_from(jobs)
        .where(jobs.c.status == JobState.RUNNING.value)
    )

    def busy() -> None:
        with lock:
            active[0] += 1
            peaks.append(active[0])
        with scheduler.engine.connect() as conn:
            claimed.append(conn.execute(count_running).scalar_one())
        time.sleep(0.2)
        with lock:
            active[0] -= 1

    scheduler.register(busy, name="busy")
    for number in range(6):
        scheduler.enqueue("busy", name=f"busy-{number}")

    scheduler.start()
    assert wait_for(lambda: outcomes(scheduler).count(RunOutcome.SUCCEEDED) == 6)
    scheduler.stop(timeout=5)

    assert max(peaks) == 2
    assert max(claimed) <= 2  # it does not even claim more than it can run


def test_quick_jobs_are_claimed_ahead_of_free_workers(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    """Once runs are known to be quick, busy workers get a queue of claims.

    The first claims fill the two workers only; after that the poller also
    claims what they are expected to start within about 0.1 s, so a body sees
    more jobs held than there are workers. Each job still runs once.
    """
    claimed: list[int] = []
    scheduler = make_scheduler(poll_interval=POLL, max_workers=2)
    jobs = scheduler.tables.jobs
    count_running = (
        select(func.count())
        .select_from(jobs)
        .where(jobs.c.status == JobState.RUNNING.value)
    )

    def quick() -> None:
        with scheduler.engine.connect() as conn:
            claimed.append(conn.execute(count_running).scalar_one())

    scheduler.register(quick, name="quick")
    for number in range(60):
        scheduler.enqueue("quick", name=f"quick-{number}")

    scheduler.start()
    assert wait_for(lambda: outcomes(scheduler).count(RunOutcome.SUCCEEDED) == 60)
    scheduler.stop(timeout=5)

    assert len(claimed) == 60
    assert claimed[0] <= 2  # no pace known yet: no more than the workers
    assert max(claimed) > 2, claimed


def test_a_claim_still_in_progress_when_stop_returns_is_given_back(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    """stop() that gives up waiting for a claim in progress strands nothing.

    The claim's first statement is held until ``stop()`` has returned. When
    the claim then completes, the poller does not hand its jobs to the pool
    that was shut down: it gives them back, due again for any process.
    """
    scheduler = make_scheduler(poll_interval=POLL)
    hold = threading.Event()
    held = threading.Event()

    def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        text = statement.upper()
        claim_read = text.startswith("SELECT") and "LIMIT" in text
        in_poller = threading.current_thread().name.startswith("jobsched-poller")
        if claim_read and in_poller and not held.is_set():
            held.set()
            hold.wait(10)

    calls: list[int] = []
    scheduler.register(calls.append, name="work")
    for number in range(4):
        scheduler.enqueue("work", args=[number])
    event.listen(scheduler.engine, "before_cursor_execute", before)
    try:
        scheduler.start()
        poller = scheduler._poller
        assert poller is not None
        assert held.wait(10), "the poller never claimed"
        scheduler.stop(timeout=0.2)
        assert poller.is_alive()  # still inside its claim
        hold.set()
        assert wait_for(lambda: not poller.is_alive()), "the poller never ended"
    finally:
        hold.set()
        event.remove(scheduler.engine, "before_cursor_execute", before)

    assert calls == []
    statuses = {j.status for j in scheduler.jobs(limit=100).items if j.name != "work"}
    assert statuses == {JobState.SCHEDULED}
    assert wait_for(lambda: idle(scheduler))


def test_claims_queued_behind_a_slow_run_are_given_back(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    """Quick jobs queued for a worker that a slow run holds go to another process.

    A (one worker) learns that runs are quick and queues claims for its
    worker; then a 3 s run takes the worker. The quick jobs queued behind it
    are given back after about a second, and B runs them while the slow run
    still goes on.
    """
    started: dict[str, float] = {}

    def body(name: str, seconds: float) -> None:
        started[name] = time.monotonic()
        time.sleep(seconds)

    a = make_scheduler(poll_interval=POLL, max_workers=1)
    b = make_scheduler(poll_interval=POLL, max_workers=4)
    for scheduler in (a, b):
        scheduler.register(body, name="work")
    now = datetime.now(timezone.utc)
    names = (
        [f"a{n:02d}" for n in range(40)] + ["slow"] + [f"c{n:02d}" for n in range(20)]
    )
    for order, name in enumerate(names):
        seconds = 3.0 if name == "slow" else 0.0
        at = now + order * timedelta(microseconds=1)
        a.enqueue("work", args=[name, seconds], name=name, at=at)

    a.start()
    assert wait_for(lambda: "slow" in started)
    b.start()
    assert wait_for(lambda: len(started) == len(names))
    a.stop(timeout=5)
    b.stop(timeout=5)

    slow_ends = started["slow"] + 3.0
    late = [n for n in names if n.startswith("c") and started[n] > slow_ends]
    assert late == [], late
    assert outcomes(a).count(RunOutcome.SUCCEEDED) == len(names)


def test_stop_waits_for_a_running_job_to_finish(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    started = threading.Event()
    scheduler = make_scheduler(poll_interval=POLL)

    def slow() -> None:
        started.set()
        time.sleep(0.4)

    scheduler.register(slow, name="slow")
    scheduler.enqueue("slow", name="slow-1")
    scheduler.start()
    assert started.wait(timeout=10)

    began = time.monotonic()
    scheduler.stop(timeout=10)
    elapsed = time.monotonic() - began

    assert 0.2 < elapsed < 5
    assert outcomes(scheduler, "slow-1") == [RunOutcome.SUCCEEDED]
    assert scheduler.get_job("slow-1").status is JobState.DONE


def test_stop_returns_within_its_timeout_when_a_job_hangs(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    started, release = threading.Event(), threading.Event()
    scheduler = make_scheduler(poll_interval=POLL)

    def hangs() -> None:
        started.set()
        release.wait(timeout=30)

    scheduler.register(hangs, name="hangs")
    scheduler.enqueue("hangs", name="hangs-1")
    scheduler.start()
    assert started.wait(timeout=10)

    began = time.monotonic()
    try:
        scheduler.stop(timeout=0.5)
        elapsed = time.monotonic() - began
        job = scheduler.get_job("hangs-1")
    finally:
        release.set()
        # Once it returns by itself, the run is still recorded, once.
        recorded = wait_for(
            lambda: (
                outcomes(scheduler, "hangs-1") == [RunOutcome.SUCCEEDED]
                and scheduler.get_job("hangs-1").status is JobState.DONE
            )
        )
        wait_for(lambda: idle(scheduler))  # the late write is over

    assert elapsed < 0.5 + 0.25
    assert not scheduler.running
    assert (job.status, job.owner) == (JobState.RUNNING, scheduler.owner)
    assert recorded


def test_stop_gives_back_a_claim_whose_run_never_started(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    """A claim queued behind a busy worker is released by stop(), not left running.

    The poller hands a claim to the pool just as the only worker is busy (the
    race seen with four processes on SQLite). ``stop()`` cancels it; the job must
    go back to ``scheduled`` so any process runs it, rather than stay ``running``
    until its lease expires and then count as an abandoned attempt.
    """
    started, release = threading.Event(), threading.Event()
    scheduler = make_scheduler(poll_interval=POLL, max_workers=1)

    def busy() -> None:
        started.set()
        release.wait(timeout=30)

    scheduler.register(busy, name="busy")
    scheduler.register(lambda: None, name="queued")
    scheduler.enqueue("busy", name="busy-1")
    scheduler.start()
    assert started.wait(timeout=10)
    scheduler.enqueue("queued", name="queued-1")
    now = scheduler.clock.now()
    (claim,) = scheduler.store.claim_due(
        {"queued"},
        scheduler.owner,
        now,
        scheduler.lease,
        1,
        lambda row: decide_claim(row, now),
    )
    poller = scheduler._poller
    assert poller is not None
    poller._submit(claim)  # queued: the single worker is busy

    try:
        scheduler.stop(timeout=0.3)
        job = scheduler.get_job("queued-1")
        assert (job.status, job.owner) == (JobState.SCHEDULED, None)
        assert outcomes(scheduler, "queued-1") == []
    finally:
        release.set()
        assert wait_for(lambda: outcomes(scheduler, "busy-1") == [RunOutcome.SUCCEEDED])
        assert wait_for(lambda: idle(scheduler))  # the late write is over


def test_a_context_manager_that_refuses_a_second_start_and_restarts(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    ran = threading.Event()
    scheduler = make_scheduler(poll_interval=POLL)
    scheduler.register(lambda: ran.set(), name="send")
    scheduler.enqueue("send", name="send-1")

    with scheduler as running:
        assert running is scheduler
        assert scheduler.running
        with pytest.raises(
            SchedulerStateError, match=r"^the scheduler is already started$"
        ):
            scheduler.start()
        assert ran.wait(timeout=10)

    assert not scheduler.running
    assert wait_for(lambda: outcomes(scheduler, "send-1") == [RunOutcome.SUCCEEDED])

    ran.clear()
    scheduler.start()  # a stopped scheduler starts again
    scheduler.enqueue("send", name="send-2")
    assert ran.wait(timeout=10)
    scheduler.stop(timeout=5)
    assert wait_for(lambda: outcomes(scheduler, "send-2") == [RunOutcome.SUCCEEDED])


@pytest.mark.slow
def test_a_lease_is_renewed_while_a_long_job_runs(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    """A run longer than its lease is not recovered by another process (B13.1)."""
    started, finished = threading.Event(), threading.Event()

    def long_job() -> None:
        started.set()
        time.sleep(1.0)
        finished.set()

    owner = make_scheduler(poll_interval=POLL, lease=0.3)
    owner.register(long_job, name="long")
    rival = make_scheduler(poll_interval=POLL, lease=0.3)
    rival.register(long_job, name="long")
    owner.enqueue("long", name="long-1")
    owner.start()
    assert started.wait(timeout=10)
    first_lease = owner.get_job("long-1").lease_until

    rival_ran: list[Any] = []
    last_lease = first_lease
    while not finished.is_set():  # another process polls all along
        rival_ran += rival.run_pending()
        last_lease = owner.get_job("long-1").lease_until or last_lease
        time.sleep(POLL)
    owner.stop(timeout=5)

    assert rival_ran == []
    assert outcomes(owner, "long-1") == [RunOutcome.SUCCEEDED]
    assert owner.get_job("long-1").status is JobState.DONE
    assert first_lease is not None and last_lease is not None
    assert last_lease - first_lease >= timedelta(seconds=0.5)


def test_start_refuses_missing_tables_and_a_newer_schema_at_once(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    """The schema check fails ``start()`` itself, not a log line every poll."""
    without_tables = make_scheduler(poll_interval=POLL, create_tables=False)
    with pytest.raises(SchedulerStateError, match="tables do not exist"):
        without_tables.start()
    assert not without_tables.running

    writer = make_scheduler(poll_interval=POLL)
    writer.jobs()
    meta = writer.tables.meta
    with writer.engine.begin() as conn:
        conn.execute(update(meta).values(value=str(SCHEMA_VERSION + 1)))

    scheduler = make_scheduler(poll_interval=POLL)
    with pytest.raises(
        SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"
    ):
        scheduler.start()
    assert not scheduler.running
