"""The claim protocol on every backend: compare-and-set, leases and fencing.

These tests drive the store directly (``Store.claim_due``, ``finish``,
``renew``) with several ``Scheduler`` objects on one table: each is a separate
owner, exactly as separate processes are (DESIGN guarantees 1-3).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, exc, insert, select

from jobsched import JobState, RunOutcome, Scheduler
from jobsched._decide import decide_claim
from jobsched._store import Claim, Decision, RunEnd
from jobsched.testing import FakeClock

UTC = timezone.utc
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


def noop() -> None:
    """The body of most jobs here: what runs does not matter, who runs it does."""


def with_tick(scheduler: Scheduler, body: Callable[[], None] = noop) -> Scheduler:
    """Register ``tick``: every minute, anchored at T0 (first fire T0 + 1 min)."""
    scheduler.register(body, name="tick", every=60, start=T0 + MINUTE)
    return scheduler


def claim(scheduler: Scheduler, limit: int = 10) -> list[Claim]:
    """Claim what is due for ``scheduler`` at its clock's now, as its poller does."""
    now = scheduler.clock.now()
    return scheduler.store.claim_due(
        scheduler._registry.names(),
        scheduler.owner,
        now,
        scheduler.lease,
        limit,
        lambda row: decide_claim(row, now),
    )


def job_row(scheduler: Scheduler, name: str) -> dict[str, Any]:
    jobs = scheduler.tables.jobs
    with scheduler.engine.connect() as conn:
        return dict(
            conn.execute(select(jobs).where(jobs.c.name == name)).one()._mapping
        )


def run_rows(scheduler: Scheduler, name: str | None = None) -> list[dict[str, Any]]:
    runs = scheduler.tables.runs
    query = select(runs).order_by(runs.c.id)
    if name is not None:
        query = query.where(runs.c.job_name == name)
    with scheduler.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


# -- claiming --------------------------------------------------------------------------


def test_a_due_job_is_claimed_by_exactly_one_of_several_owners(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """Once per tick: N owners poll, one wins, the others get nothing."""
    schedulers = [with_tick(make_scheduler(clock=clock)) for _ in range(4)]
    for scheduler in schedulers:
        scheduler._ensure_ready()
    clock.set(T0 + MINUTE - timedelta(microseconds=1))
    assert [claim(scheduler) for scheduler in schedulers] == [[]] * 4  # not yet due
    clock.set(T0 + MINUTE)

    claims = [claim(scheduler) for scheduler in schedulers]

    assert [len(c) for c in claims] == [1, 0, 0, 0]
    assert claims[0][0].scheduled_for == T0 + MINUTE
    assert len(run_rows(schedulers[0], "tick")) == 1


def test_the_claim_is_a_compare_and_set_not_a_lock(
    make_scheduler: Callable[..., Scheduler],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claimer that read the row before a rival claimed it wins nothing.

    Row locks are turned off, so only the conditional UPDATE on status and
    version can stop the second claim (DESIGN guarantee 1: locks are never the
    only guard).
    """
    first, second = (with_tick(make_scheduler(clock=clock)) for _ in range(2))
    first._ensure_ready()
    second._ensure_ready()
    monkeypatch.setattr(second.store, "_lock_candidates", lambda: False)
    clock.set(T0 + MINUTE)
    now = clock.now()
    won_by_first: list[Claim] = []

    def rival_claims_in_between(row: Any) -> Decision:
        # ``second`` has read the row; ``first`` claims it before ``second`` writes.
        won_by_first.extend(claim(first))
        return decide_claim(row, now)

    lost = second.store.claim_due(
        second._registry.names(),
        second.owner,
        now,
        second.lease,
        10,
        rival_claims_in_between,
    )

    assert lost == []
    assert len(won_by_first) == 1
    row = job_row(first, "tick")
    assert row["owner"] == first.owner
    assert row["version"] == won_by_first[0].version
    assert [r["owner"] for r in run_rows(first, "tick")] == [first.owner]


def test_a_claim_writes_a_running_run_row_then_the_outcome(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    def body() -> None:
        clock.advance(2)  # the run takes two seconds of fake time

    scheduler = with_tick(make_scheduler(clock=clock, lease=30), body)
    scheduler._ensure_ready()
    version = job_row(scheduler, "tick")["version"]
    clock.set(T0 + MINUTE)

    (claimed,) = claim(scheduler)

    (run,) = run_rows(scheduler, "tick")
    assert run["outcome"] == RunOutcome.RUNNING.value
    assert run["owner"] == scheduler.owner
    assert run["attempt"] == 1
    assert run["scheduled_for"] == T0 + MINUTE
    assert run["started_at"] == T0 + MINUTE
    assert run["finished_at"] is None
    row = job_row(scheduler, "tick")
    assert row["status"] == JobState.RUNNING.value
    assert row["owner"] == scheduler.owner
    assert row["lease_until"] == T0 + MINUTE + timedelta(seconds=30)
    assert row["version"] == version + 1 == claimed.version

    result = scheduler.run_claim(claimed)

    assert result.outcome is RunOutcome.SUCCEEDED
    (run,) = run_rows(scheduler, "tick")
    assert run["outcome"] == RunOutcome.SUCCEEDED.value
    assert run["finished_at"] == T0 + MINUTE + timedelta(seconds=2)
    assert run["error_type"] is None
    row = job_row(scheduler, "tick")
    assert row["status"] == JobState.SCHEDULED.value
    assert row["owner"] is None
    assert row["lease_until"] is None
    assert row["next_run_at"] == T0 + 2 * MINUTE
    assert row["last_outcome"] == RunOutcome.SUCCEEDED.value
    assert row["version"] == version + 2


def due_left(scheduler: Scheduler) -> bool:
    """Whether any job of ``scheduler`` is still waiting to be claimed."""
    jobs = scheduler.tables.jobs
    query = select(jobs.c.id).where(
        jobs.c.status == JobState.SCHEDULED.value,
        jobs.c.next_run_at <= scheduler.clock.now(),
    )
    with scheduler.engine.connect() as conn:
        return conn.execute(query.limit(1)).first() is not None


def _race(schedulers: list[Scheduler], limit: int) -> list[Claim]:
    """Every scheduler claims in its own thread, all starting at once."""
    barrier = threading.Barrier(len(schedulers))

    def claim_all(scheduler: Scheduler) -> list[Claim]:
        barrier.wait(timeout=30)
        won: list[Claim] = []
        while True:
            got = claim(scheduler, limit)
            won.extend(got)
            time.sleep(0.002)  # let the other threads in between rounds
            # A lost compare-and-set returns nothing while rows are still due.
            if not got and not due_left(scheduler):
                return won

    with ThreadPoolExecutor(len(schedulers)) as pool:
        return [c for won in pool.map(claim_all, schedulers) for c in won]


@pytest.mark.slow
@pytest.mark.parametrize("row_locks", [True, False], ids=["skip-locked", "cas-only"])
def test_threads_with_their_own_engines_claim_each_run_once(
    db_url: str,
    prefix: str,
    engine: Engine,
    row_locks: bool,
) -> None:
    """N threads, each with its own connection pool, race for the same rows.

    One recurring job and 30 one-off jobs are due at once; every thread claims
    until nothing is left. Each run is claimed exactly once (STYLE 36, B11, B15).
    SQLite has no row locks, so there both variants exercise the same path.
    """
    clock = FakeClock(T0)
    setup = with_tick(Scheduler(engine, table_prefix=prefix, clock=clock))
    setup.register(noop, name="once")
    for number in range(30):
        setup.enqueue("once", name=f"once-{number:02}", at=T0 + MINUTE)

    engines = [create_engine(db_url) for _ in range(6)]
    try:
        schedulers = []
        for own_engine in engines:
            scheduler = with_tick(
                Scheduler(own_engine, table_prefix=prefix, clock=clock)
            )
            scheduler.register(noop, name="once")
            scheduler._ensure_ready()
            if not row_locks:
                scheduler.store._lock_candidates = lambda: False  # type: ignore[method-assign]
            schedulers.append(scheduler)
        clock.set(T0 + MINUTE)

        claims = _race(schedulers, limit=1)
    finally:
        for own_engine in engines:
            own_engine.dispose()

    per_run = Counter((c.name, c.scheduled_for, c.attempt) for c in claims)
    assert len(per_run) == 31
    assert set(per_run.values()) == {1}
    assert len({c.owner for c in claims}) >= 2, "the race had a single participant"
    runs = run_rows(setup)
    assert len(runs) == 31
    assert {r["outcome"] for r in runs} == {RunOutcome.RUNNING.value}


# -- leases and fencing ----------------------------------------------------------------


def test_an_expired_claim_is_recovered_as_abandoned_and_moves_on(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """No lost runs: a dead owner's run is recorded and the job continues (B17).

    The lease holds at exactly ``lease_until`` and expires one tick later.
    """
    owner = with_tick(make_scheduler(clock=clock, lease=30))
    rescuer = with_tick(make_scheduler(clock=clock, lease=30))
    owner._ensure_ready()
    clock.set(T0 + MINUTE)
    claim(owner)

    clock.set(T0 + MINUTE + 30 * SECOND)
    assert rescuer.run_pending() == []
    assert job_row(rescuer, "tick")["owner"] == owner.owner

    clock.advance(timedelta(microseconds=1))
    assert rescuer.run_pending() == []

    (run,) = run_rows(rescuer, "tick")
    assert run["outcome"] == RunOutcome.ABANDONED.value
    assert run["owner"] == owner.owner
    assert run["finished_at"] == clock.now()
    assert owner.owner in run["error_message"]
    row = job_row(rescuer, "tick")
    assert row["status"] == JobState.SCHEDULED.value
    assert row["owner"] is None
    assert row["next_run_at"] == T0 + 2 * MINUTE
    assert row["last_outcome"] == RunOutcome.ABANDONED.value


def test_an_owner_never_recovers_its_own_live_run(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    owner = with_tick(make_scheduler(clock=clock, lease=30))
    owner._ensure_ready()
    clock.set(T0 + MINUTE)
    (claimed,) = claim(owner)
    owner._leases.add([claimed])  # held and renewed, as every real run is

    clock.advance(31)
    owner.run_pending()

    assert job_row(owner, "tick")["owner"] == owner.owner
    assert owner.run_claim(claimed).outcome is RunOutcome.SUCCEEDED
    assert [r["outcome"] for r in run_rows(owner, "tick")] == ["succeeded"]


def test_an_owner_recovers_its_own_claim_that_it_does_not_hold(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """A claim whose commit reply was lost is orphaned, even for its owner (B18.3)."""
    owner = with_tick(make_scheduler(clock=clock, lease=30))
    owner._ensure_ready()
    clock.set(T0 + MINUTE)
    claim(owner)  # committed, but never handed to a worker or the lease keeper

    clock.advance(31)
    owner.run_pending()

    assert [r["outcome"] for r in run_rows(owner, "tick")][:1] == ["abandoned"]
    assert job_row(owner, "tick")["status"] != JobState.RUNNING.value


def lost_claim(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> tuple[Scheduler, Scheduler, Claim]:
    """An owner's claim of ``tick`` at T0 + 1 min, lost to a rescuer's recovery.

    Returns the owner, the rescuer and the lost claim, with the clock at
    T0 + 2 min, when the next fire time is due.
    """
    owner = with_tick(make_scheduler(clock=clock, lease=30))
    rescuer = with_tick(make_scheduler(clock=clock, lease=30))
    owner._ensure_ready()
    clock.set(T0 + MINUTE)
    (stale,) = claim(owner)
    clock.advance(31)
    rescuer.run_pending()  # recovers the run of T0 + 1 min as abandoned
    clock.set(T0 + 2 * MINUTE)
    return owner, rescuer, stale


def test_a_fenced_out_owner_writes_nothing(
    make_scheduler: Callable[..., Scheduler],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fencing: after a takeover the first owner's writes all fail (guarantee 3)."""
    owner, rescuer, stale = lost_claim(make_scheduler, clock)
    (fresh,) = claim(rescuer)  # and claims the next one
    jobs_before, runs_before = job_row(owner, "tick"), run_rows(owner)

    end = RunEnd(RunOutcome.SUCCEEDED, clock.now())
    decision = Decision(status=JobState.SCHEDULED, next_run_at=T0 + 10 * MINUTE)
    assert owner.store.finish(stale, end, decision) is False
    assert owner.store.release(stale, clock.now()) is False
    assert owner.store.renew([stale], clock.now(), owner.lease) == [stale]
    with caplog.at_level("WARNING", logger="jobsched"):
        assert owner.run_claim(stale).outcome is RunOutcome.SUCCEEDED

    assert job_row(owner, "tick") == jobs_before
    assert run_rows(owner) == runs_before
    assert "lost its claim" in caplog.text
    assert rescuer.run_claim(fresh).outcome is RunOutcome.SUCCEEDED
    assert job_row(owner, "tick")["next_run_at"] == T0 + 3 * MINUTE


def test_a_batch_with_a_stale_and_a_fresh_end_of_one_job_writes_only_the_fresh(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """One batch can hold two ends of one job: a lost claim's and a later one's."""
    owner, _, stale = lost_claim(make_scheduler, clock)
    (fresh,) = claim(owner)  # the same owner claims the next fire time
    assert (fresh.job_id, fresh.version) == (stale.job_id, stale.version + 3)

    finished = clock.now()
    failed = RunEnd(RunOutcome.FAILED, finished, "builtins.ValueError", "stale")
    succeeded = RunEnd(RunOutcome.SUCCEEDED, finished)
    written = owner.store.finish_many(
        [
            (stale, failed, Decision(JobState.SCHEDULED, T0 + 10 * MINUTE)),
            (fresh, succeeded, Decision(JobState.SCHEDULED, T0 + 3 * MINUTE)),
        ]
    )

    assert written == [False, True]
    row = job_row(owner, "tick")
    assert (row["next_run_at"], row["owner"]) == (T0 + 3 * MINUTE, None)
    assert row["last_outcome"] == RunOutcome.SUCCEEDED.value
    outcomes = {r["scheduled_for"]: r for r in run_rows(owner, "tick")}
    assert outcomes[T0 + MINUTE]["outcome"] == RunOutcome.ABANDONED.value
    assert outcomes[T0 + MINUTE]["error_message"] != "stale"
    assert outcomes[T0 + 2 * MINUTE]["outcome"] == RunOutcome.SUCCEEDED.value


def test_renew_extends_held_leases_and_returns_the_lost_ones(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    owner = make_scheduler(clock=clock, lease=30)
    owner.register(noop, name="taken", every=60, start=T0 + MINUTE)
    owner.register(noop, name="kept", every=60, start=T0 + MINUTE + 20 * SECOND)
    rescuer = make_scheduler(clock=clock, lease=30)
    owner._ensure_ready()
    clock.set(T0 + MINUTE)
    (taken,) = claim(owner)  # its lease ends at T0 + 1:30
    clock.set(T0 + MINUTE + 20 * SECOND)
    (kept,) = claim(owner)  # its lease ends at T0 + 1:50
    clock.set(T0 + MINUTE + 31 * SECOND)
    rescuer.run_pending()  # recovers "taken" only
    taken_before = job_row(owner, "taken")

    lost = owner.store.renew([taken, kept], clock.now(), owner.lease)

    assert lost == [taken]
    assert job_row(owner, "kept")["lease_until"] == clock.now() + 30 * SECOND
    assert job_row(owner, "kept")["owner"] == owner.owner
    assert job_row(owner, "taken") == taken_before
    assert job_row(owner, "taken")["owner"] is None


def test_a_released_claim_is_claimed_again_for_the_same_fire_time(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """A claim given back before it started (stop()) runs later, not lost."""
    first, second = (with_tick(make_scheduler(clock=clock)) for _ in range(2))
    first._ensure_ready()
    clock.set(T0 + MINUTE)
    (claimed,) = claim(first)

    assert first.store.release(claimed, clock.now()) is True
    assert run_rows(first) == []

    (again,) = claim(second)
    assert (again.scheduled_for, again.attempt) == (T0 + MINUTE, 1)
    assert second.run_claim(again).outcome is RunOutcome.SUCCEEDED
    assert job_row(second, "tick")["next_run_at"] == T0 + 2 * MINUTE


def test_a_claim_given_back_after_a_pause_stays_paused(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """A job paused while claimed but not started stays paused when given back.

    ``stop()`` gives back the claims it never started; one whose job was
    paused in the meantime must come back ``paused`` (with its fire time still
    pending), not ``scheduled`` for another process to run.
    """
    first, second = (with_tick(make_scheduler(clock=clock)) for _ in range(2))
    first._ensure_ready()
    clock.set(T0 + MINUTE)
    (claimed,) = claim(first)
    first.pause("tick")

    assert first.store.release(claimed, clock.now()) is True

    row = job_row(first, "tick")
    assert (row["status"], row["paused"]) == ("paused", True)
    assert claim(second) == []
    second.resume("tick")  # from its next fire time after now
    clock.set(T0 + 2 * MINUTE)
    (again,) = claim(second)
    assert again.attempt == 1


def test_the_run_history_rejects_a_second_row_for_one_attempt(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """The second, independent guard: unique (job, fire time, attempt)."""
    scheduler = with_tick(make_scheduler(clock=clock))
    scheduler._ensure_ready()
    clock.set(T0 + MINUTE)
    (claimed,) = claim(scheduler)
    runs = scheduler.tables.runs
    duplicate = {
        "job_id": claimed.job_id,
        "job_name": "tick",
        "scheduled_for": claimed.scheduled_for,
        "attempt": claimed.attempt,
        "outcome": RunOutcome.RUNNING.value,
    }

    with pytest.raises(exc.IntegrityError), scheduler.engine.begin() as conn:
        conn.execute(insert(runs).values(duplicate))

    with scheduler.engine.begin() as conn:  # the next attempt is a different row
        conn.execute(insert(runs).values({**duplicate, "attempt": 2}))
    assert len(run_rows(scheduler, "tick")) == 2
