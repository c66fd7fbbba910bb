"""Lock contention: SQLite's "database is locked", and racing processes.

Cases B20.1 (a writer holds the SQLite file), B20.3 (processes create the
schema at the same instant) and B11 (SQLite shared by many processes).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import faultjobs
import pytest
from sqlalchemy import create_engine, inspect, select

from conftest import sqlite_path, wait_until
from jobsched import Scheduler

pytestmark = pytest.mark.slow

# How long the outside writer holds the file; longer than one run_pending()
# gives up after (6 attempts with a 0.2 s busy timeout, plus backoff).
LOCK_HELD = 3.0
BUSY_TIMEOUT = 0.2


def _journal(path: str, mode: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA journal_mode={mode}")


class Locker:
    """An outside connection that holds ``BEGIN IMMEDIATE`` on the file."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.released_at: float | None = None

    def __enter__(self) -> Locker:
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def release(self) -> None:
        if self.released_at is None:
            self.conn.execute("ROLLBACK")
            self.released_at = time.time()

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.conn.close()


@pytest.fixture
def sqlite_engine(db_url):
    engine = create_engine(db_url, connect_args={"timeout": BUSY_TIMEOUT})
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_run_pending_returns_normally_while_sqlite_is_locked(
    sqlite_engine, prefix, db_url, db, caplog
):
    """run_pending() returns normally while another writer holds the file (case B20.1).

    An outside connection holds ``BEGIN IMMEDIATE`` for longer than one
    ``run_pending()`` keeps retrying while a one-off job becomes due. Every call
    returns a list (the lock is logged, never raised); the job runs exactly
    once, at the first call after the lock is released.
    """
    caplog.set_level(logging.WARNING, logger="jobsched")
    scheduler = Scheduler(sqlite_engine, table_prefix=prefix, lease=5.0)
    calls = []
    scheduler.register(
        lambda: calls.append(time.time()),
        name="due",
        at=datetime.now(timezone.utc) + timedelta(seconds=1.5),
    )
    assert scheduler.run_pending() == []  # tables and row exist; not due yet

    returned = []
    with Locker(sqlite_path(db_url)) as locker:
        deadline = time.monotonic() + LOCK_HELD
        while time.monotonic() < deadline:
            returned.append(scheduler.run_pending())
        assert calls == []
        locker.release()
        after = scheduler.run_pending()

    assert all(r == [] for r in returned), returned
    assert [r.job for r in after] == ["due"]
    assert len(calls) == 1 and calls[0] >= locker.released_at
    assert scheduler.run_pending() == []
    assert [(r["attempt"], r["outcome"]) for r in db.runs("due")] == [(1, "succeeded")]
    messages = [r.getMessage() for r in caplog.records]
    assert any("locked" in m for m in messages), messages
    db.assert_nothing_running()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_background_thread_survives_sqlite_lock(
    sqlite_engine, prefix, db_url, db, caplog, journal
):
    """The polling thread stays alive while the file is locked (case B20.1).

    Same lock as above with ``start()``, in both journal modes: the thread is
    alive all along, logs the failed polls without spinning, and runs the
    job exactly once, within a second of the release.
    """
    caplog.set_level(logging.DEBUG, logger="jobsched")
    _journal(sqlite_path(db_url), journal)
    scheduler = Scheduler(
        sqlite_engine, table_prefix=prefix, lease=5.0, poll_interval=0.05
    )
    calls = []
    scheduler.register(
        lambda: calls.append(time.time()),
        name="due",
        at=datetime.now(timezone.utc) + timedelta(seconds=1.5),
    )
    scheduler.jobs()  # tables and row
    try:
        with Locker(sqlite_path(db_url)) as locker:
            scheduler.start()
            deadline = time.monotonic() + LOCK_HELD
            while time.monotonic() < deadline:
                assert scheduler.running
                time.sleep(0.05)
            assert calls == []
            locker.release()
            wait_until(lambda: calls, 5, "the job to run after the release")
        time.sleep(0.3)
        assert scheduler.running
    finally:
        scheduler.stop(timeout=5)

    assert len(calls) == 1
    assert calls[0] - locker.released_at < 1.0
    assert [(r["attempt"], r["outcome"]) for r in db.runs("due")] == [(1, "succeeded")]
    failed_polls = [r for r in caplog.records if "poll failed" in r.getMessage()]
    retries = [r for r in caplog.records if "transient" in r.getMessage()]
    assert failed_polls or retries, "the lock was never hit"
    # No hot loop: each failed poll spent its retries and backed off.
    assert len(failed_polls) <= LOCK_HELD / BUSY_TIMEOUT
    db.assert_nothing_running()


def test_processes_creating_the_schema_at_once(fleet, engine, prefix, db, tmp_path):
    """Four processes start at the same instant on an empty database (case B20.3).

    No tables exist; four processes start their schedulers within a few
    milliseconds of each other, each creating the tables and registering the
    same job. All start and run without an error; there is exactly one set of
    tables, one schema version row and one job row, and the job's fire times
    each run once.
    """
    go = str(tmp_path / "all.go")
    job = fleet.job("tick", {"every": 0.5}, seconds=0.01)
    launcher = fleet.spawn("p", [job], go=go, run_for=2.0, fork=4)
    procs = fleet.forked("p", 4)
    wait_until(
        lambda: all(" OWNER " in p.log() for p in procs),
        30,
        "all four processes to be ready",
        explain=fleet.explain,
    )
    assert not any(t.startswith(prefix) for t in inspect(engine).get_table_names()), (
        "tables existed before the race"
    )
    Path(go).touch()
    assert launcher.wait(30) == 0, fleet.explain()

    for proc in procs:
        assert proc.started()
        assert proc.log_lines("ERROR", "CRITICAL") == [], fleet.explain()
        assert [ln for ln in proc.log_lines("WARNING") if "poll failed" in ln] == []

    tables = sorted(
        t for t in inspect(engine).get_table_names() if t.startswith(prefix)
    )
    assert tables == [f"{prefix}jobs", f"{prefix}meta", f"{prefix}runs"]
    meta = db.tables.meta
    with engine.connect() as conn:
        rows = conn.execute(select(meta)).all()
    assert [tuple(r) for r in rows] == [("schema_version", "1")]
    assert [j["name"] for j in db.jobs()] == ["tick"]
    assert db.started_runs("tick"), "the job never ran"
    db.assert_once_per_fire_time("tick")
    assert len(fleet.executions("tick")) == len(db.started_runs("tick"))
    db.assert_nothing_running()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_shared_by_eight_processes_runs_each_job_once(
    fleet, engine, prefix, db, db_url, tmp_path, journal
):
    """Eight processes share one SQLite file: 200 due jobs run once each (case B11).

    200 one-off jobs of 20 ms each are due at once; eight processes start
    together and poll every 0.2 s (each with its own phase). Every job body
    runs exactly once, every job ends ``done`` after one attempt, and no poll
    fails. (Jobs that take no time at all would let the first process to poll
    claim and run the whole backlog in one batch, with no contention to test.)
    """
    _journal(sqlite_path(db_url), journal)
    enqueuer = Scheduler(engine, table_prefix=prefix)
    enqueuer.register(faultjobs.body, name="record")
    names = [
        enqueuer.enqueue(
            "record", args=[fleet.results, f"job{i:03d}", 0.02], name=f"job{i:03d}"
        )
        for i in range(200)
    ]

    go = str(tmp_path / "all.go")
    worker_job = {"name": "record", "body": "body", "schedule": {}}
    # A lease far longer than a run: this test is about claiming, and eight
    # writers on two cores can starve one of them for a second or more.
    launcher = fleet.spawn("p", [worker_job], go=go, poll=0.2, lease=10.0, fork=8)
    procs = fleet.forked("p", 8)
    wait_until(
        lambda: all(" OWNER " in p.log() for p in procs),
        60,
        "all eight processes to be ready",
        explain=fleet.explain,
    )
    Path(go).touch()
    wait_until(
        lambda: all(j["status"] in ("done", "failed") for j in db.jobs()),
        90,
        "all 200 jobs to end",
        interval=0.2,
        explain=fleet.explain,
    )
    launcher.send(signal.SIGTERM)
    assert launcher.wait(30) == 0, fleet.explain()

    executions = fleet.executions()
    assert sorted(e["job"] for e in executions) == sorted(names)
    runs = db.runs()
    not_succeeded = [r for r in runs if r["outcome"] != "succeeded"]
    assert not_succeeded == [], (
        f"{len(not_succeeded)} run(s) that did run were not recorded as succeeded"
    )
    assert sorted((r["job_name"], r["attempt"], r["outcome"]) for r in runs) == [
        (name, 1, "succeeded") for name in sorted(names)
    ]
    assert len({e["pid"] for e in executions}) > 1, "one process ran everything"
    for proc in procs:
        assert proc.log_lines("ERROR", "CRITICAL") == [], proc.log()
        assert [ln for ln in proc.log_lines("WARNING") if "poll failed" in ln] == []
    db.assert_nothing_running()
