"""Registering jobs against a real table on every backend.

Every process registers the same jobs at start-up, so writing them to the table
must be idempotent and race-free: one row per job, nothing reset by an
unchanged registration, and an edited schedule takes effect from now without
firing at once (CASES B14). Bad input fails before anything is written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, update

from jobsched import (
    SCHEMA_VERSION,
    InvalidArguments,
    InvalidTrigger,
    JobDefinitionError,
    JobNotFound,
    JobState,
    Scheduler,
    SchedulerStateError,
    SchemaVersionError,
    define_tables,
)
from jobsched.testing import FakeClock

UTC = timezone.utc
T0 = datetime(2025, 1, 1, 10, tzinfo=UTC)


def noop(*args: Any, **kwargs: Any) -> None:
    """A job body."""


def register_all(scheduler: Scheduler) -> Scheduler:
    """The same three jobs, as every process of one application registers them."""
    scheduler.register(noop, name="minutely", cron="* * * * *")
    scheduler.register(noop, name="interval", every=90, args=[1], kwargs={"k": "v"})
    scheduler.register(noop, name="once", at=T0 + timedelta(hours=1))
    return scheduler


def job_row(scheduler: Scheduler, name: str) -> dict[str, Any]:
    jobs = scheduler.tables.jobs
    with scheduler.engine.connect() as conn:
        return dict(
            conn.execute(select(jobs).where(jobs.c.name == name)).one()._mapping
        )


def job_names(scheduler: Scheduler) -> list[str]:
    jobs = scheduler.tables.jobs
    with scheduler.engine.connect() as conn:
        return list(conn.execute(select(jobs.c.name).order_by(jobs.c.name)).scalars())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


# -- one row per job -------------------------------------------------------------------


def test_registration_writes_one_row_per_job_and_again_changes_nothing(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """A restart re-registers every job; no row is rewritten (B14.1, B14.4)."""
    first = register_all(make_scheduler(clock=clock))
    first.register(noop, name="enqueue-only")  # no schedule: no row

    assert first.run_pending() == []

    assert job_names(first) == ["interval", "minutely", "once"]
    assert job_row(first, "minutely")["next_run_at"] == T0 + timedelta(minutes=1)
    assert job_row(first, "interval")["next_run_at"] == T0 + timedelta(seconds=90)
    assert job_row(first, "once")["next_run_at"] == T0 + timedelta(hours=1)
    before = {name: job_row(first, name) for name in job_names(first)}
    assert {row["status"] for row in before.values()} == {JobState.SCHEDULED.value}

    clock.advance(timedelta(minutes=30))  # later, after an outage: jobs are due
    second = register_all(make_scheduler(clock=clock))
    second.jobs()

    assert {name: job_row(second, name) for name in job_names(second)} == before


def test_schedulers_in_threads_register_the_same_jobs_once(
    db_url: str, prefix: str, engine: Engine
) -> None:
    """Four processes start at once on an empty database (B14.2, B20.3)."""
    clock = FakeClock(T0)
    engines = [create_engine(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start(own_engine: Engine) -> None:
        scheduler = register_all(
            Scheduler(own_engine, table_prefix=prefix, clock=clock)
        )
        barrier.wait(timeout=30)
        try:
            scheduler.run_pending()
            scheduler.jobs()
        except BaseException as error:  # collected: a thread must not hide it
            errors.append(error)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for own_engine in engines:
            own_engine.dispose()

    assert errors == []
    observer = make_observer(engine, prefix, clock)
    assert job_names(observer) == ["interval", "minutely", "once"]
    meta = observer.tables.meta
    with engine.connect() as conn:
        assert conn.execute(select(meta.c.key, meta.c.value)).all() == [
            ("schema_version", str(SCHEMA_VERSION))
        ]


def make_observer(engine: Engine, prefix: str, clock: FakeClock) -> Scheduler:
    return Scheduler(engine, table_prefix=prefix, clock=clock)


def test_re_registration_does_not_disturb_a_running_job(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """Process B starts while process A runs the job (B14.1)."""
    seen: list[dict[str, Any]] = []
    newcomer = register_all(make_scheduler(clock=clock))

    def body() -> None:
        newcomer.jobs()  # another process starts and registers meanwhile
        seen.append(job_row(newcomer, "minutely"))

    running = make_scheduler(clock=clock)
    running.register(body, name="minutely", cron="* * * * *")
    running.run_pending()
    clock.set(T0 + timedelta(minutes=1))

    (result,) = running.run_pending()

    assert result.outcome.value == "succeeded"
    assert seen[0]["status"] == JobState.RUNNING.value
    assert seen[0]["owner"] == running.owner
    assert job_row(running, "minutely")["next_run_at"] == T0 + timedelta(minutes=2)


def test_an_edited_cron_applies_from_now_without_running_at_once(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """At 10:03:30 a deploy changes * * * * * to */5 * * * * (B14.3)."""
    old = make_scheduler(clock=clock)
    old.register(noop, name="report", cron="* * * * *")
    old.run_pending()
    clock.set(T0 + timedelta(minutes=3, seconds=30))  # 10:01..10:03 are due

    new = make_scheduler(clock=clock)
    new.register(noop, name="report", cron="*/5 * * * *")

    assert new.run_pending() == []
    row = job_row(new, "report")
    assert row["next_run_at"] == T0 + timedelta(minutes=5)
    assert '"*/5 * * * *"' in row["trigger"]
    assert new.get_job("report").trigger.expression == "*/5 * * * *"  # type: ignore[union-attr]

    clock.set(T0 + timedelta(minutes=5))
    assert [r.scheduled_for for r in new.run_pending()] == [T0 + timedelta(minutes=5)]


def test_an_edited_interval_or_arguments_take_effect_at_the_edit(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    calls: list[Any] = []
    old = make_scheduler(clock=clock)
    old.register(noop, name="sync", every=60)
    old.register(noop, name="greet", cron="* * * * *", args=["old"])
    old.run_pending()
    clock.advance(45)

    new = make_scheduler(clock=clock)
    new.register(noop, name="sync", every=600)
    new.register(calls.append, name="greet", cron="* * * * *", args=["new"])
    new.jobs()

    # A new interval is anchored at the edit; new arguments keep the next run.
    assert job_row(new, "sync")["next_run_at"] == T0 + timedelta(seconds=45 + 600)
    assert job_row(new, "greet")["next_run_at"] == T0 + timedelta(minutes=1)
    assert new.get_job("greet").args == ("new",)
    clock.set(T0 + timedelta(minutes=1))
    new.run_pending()
    assert calls == ["new"]


def test_a_paused_job_stays_paused_through_re_registration_and_edits(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    first = make_scheduler(clock=clock)
    first.register(noop, name="report", cron="* * * * *")
    first.register(noop, name="born-paused", cron="* * * * *", paused=True)
    first.run_pending()
    first.pause("report")
    assert first.get_job("born-paused").status is JobState.PAUSED
    clock.set(T0 + timedelta(minutes=2))

    same = make_scheduler(clock=clock)
    same.register(noop, name="report", cron="* * * * *")
    assert same.run_pending() == []
    assert same.get_job("report").status is JobState.PAUSED

    edited = make_scheduler(clock=clock)
    edited.register(noop, name="report", cron="0 * * * *")
    assert edited.run_pending() == []
    assert edited.get_job("report").status is JobState.PAUSED

    clock.set(T0 + timedelta(hours=3))
    assert first.run_pending() == []

    first.resume("born-paused")
    next_run = first.get_job("born-paused").next_run_at
    assert next_run == T0 + timedelta(hours=3, minutes=1)


# -- bad input writes nothing ----------------------------------------------------------


NOT_JSON = [
    (object(), r"args\[0\] is a object"),
    (b"\x00", r"args\[0\] is a bytes \(b'\\x00'\)"),
    (datetime(2025, 1, 1, tzinfo=UTC), r"args\[0\] is a datetime"),
    (float("nan"), r"args\[0\] is nan"),
    ({("a", 1): 1}, r"args\[0\] has the key \('a', 1\)"),
]


def test_rejected_registrations_and_enqueues_write_nothing(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """Bad input fails early and leaves the table as it was (guarantee 7, B05.3)."""
    scheduler = make_scheduler(clock=clock)
    scheduler.register(noop, name="good", every=60)
    scheduler.register(noop, name="send")

    with pytest.raises(InvalidArguments, match=r"^job 'bad': .*args\[0\] is a set"):
        scheduler.register(noop, name="bad", every=60, args=[{1, 2}])
    with pytest.raises(InvalidTrigger, match=r"^job 'worse': .*'Mars/Phobos'"):
        scheduler.register(noop, name="worse", cron="* * * * *", timezone="Mars/Phobos")
    scheduler.run_pending()
    for value, shown in NOT_JSON:
        with pytest.raises(InvalidArguments, match=r"^job 'send-1': .*" + shown):
            scheduler.enqueue("send", args=[value], name="send-1")
    with pytest.raises(
        InvalidTrigger, match=r"^job 'send-1': .*needs an aware datetime"
    ):
        scheduler.enqueue(
            "send",
            name="send-1",
            at=datetime(2025, 1, 1, 12),  # noqa: DTZ001 - naive on purpose
        )
    with pytest.raises(
        JobNotFound, match=r"^no function 'builtins\.print' is registered"
    ):
        scheduler.enqueue(print)
    with pytest.raises(
        JobNotFound, match=r"^no function 'missing' is registered in this"
    ):
        scheduler.enqueue("missing")

    assert job_names(scheduler) == ["good"]


def test_enqueue_with_a_taken_name_is_refused_and_keeps_the_first(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler(clock=clock)
    scheduler.register(noop, name="send")
    scheduler.register(noop, name="minutely", cron="* * * * *")
    scheduler.enqueue("send", args=[1], name="send-1", at=T0 + timedelta(hours=1))

    with pytest.raises(JobDefinitionError, match=r"^job 'send-1': .*exists already"):
        scheduler.enqueue("send", args=[2], name="send-1")
    with pytest.raises(JobDefinitionError, match=r"^job 'minutely': .*exists already"):
        scheduler.enqueue("send", name="minutely")

    assert scheduler.get_job("send-1").args == (1,)
    assert scheduler.get_job("send-1").next_run_at == T0 + timedelta(hours=1)
    generated = {scheduler.enqueue(noop, args=[n]) for n in range(3)}
    assert len(generated) == 3
    assert all(name.startswith("send") for name in generated)
    assert set(job_names(scheduler)) == {"minutely", "send-1", *generated}


# -- the schema ------------------------------------------------------------------------


def test_create_tables_false_needs_tables_and_says_how_to_make_them(
    make_scheduler: Callable[..., Scheduler],
    clock: FakeClock,
    engine: Engine,
    prefix: str,
) -> None:
    """An application that creates the tables itself (migrations) can run jobs."""
    scheduler = make_scheduler(clock=clock, create_tables=False)
    scheduler.register(noop, name="minutely", cron="* * * * *")

    with pytest.raises(
        SchedulerStateError,
        match=r"tables do not exist; create them with "
        r"jobsched\.define_tables\(\.\.\.\)\.metadata\.create_all\(engine\) "
        r"or pass create_tables=True",
    ):
        scheduler.run_pending()

    define_tables(prefix).metadata.create_all(engine)  # as the message advises
    assert scheduler.run_pending() == []
    clock.set(T0 + timedelta(minutes=1))
    assert [r.job for r in scheduler.run_pending()] == ["minutely"]


def test_a_schema_newer_than_the_code_is_refused(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    """A newer schema is refused with a jobsched error, never used (STYLE 19)."""
    writer = register_all(make_scheduler(clock=clock))
    writer.run_pending()
    meta = writer.tables.meta
    with writer.engine.begin() as conn:
        conn.execute(
            update(meta)
            .where(meta.c.key == "schema_version")
            .values(value=str(SCHEMA_VERSION + 1))
        )
    before = job_row(writer, "minutely")
    clock.set(T0 + timedelta(minutes=1))

    message = (
        rf"schema version {SCHEMA_VERSION + 1}, but this version of jobsched "
        rf"supports up to {SCHEMA_VERSION}; upgrade jobsched"
    )
    for create_tables in (True, False):
        newcomer = register_all(
            make_scheduler(clock=clock, create_tables=create_tables)
        )
        with pytest.raises(SchemaVersionError, match=message):
            newcomer.run_pending()
        with pytest.raises(SchemaVersionError, match=message):
            newcomer.jobs()

    assert job_row(writer, "minutely") == before
