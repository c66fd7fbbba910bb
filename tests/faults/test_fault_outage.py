"""Connection loss: server-side kills, idle timeouts, failed completion writes.

Cases B21 (connections killed in a loop, idle connections dropped by the
server, a connection killed in the middle of a statement or its commit) and
B18.2 (the completion write fails, then the database comes back).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import create_engine, event, text
from tenacity import wait_fixed

from conftest import (
    fail_statements,
    forget_leases,
    mysql_kill,
    pg_terminate,
    statement_steps,
    wait_until,
)
from jobsched import Scheduler

SERVERS = ["postgresql", "mysql"]
# Server-side kills of every connection, one every 0.5 s.
KILLS = 7


class Killable:
    """An engine whose connections the test can cut from the server side.

    PostgreSQL connections carry a unique ``application_name``; for MySQL the
    server-side id of every connection the engine opens is recorded.
    """

    def __init__(self, backend: str, db_url: str, **connect_args) -> None:
        self.backend = backend
        self.app = f"jobsched-fault-{uuid.uuid4().hex[:8]}"
        if backend == "postgresql":
            connect_args["application_name"] = self.app
        self.engine = create_engine(db_url, connect_args=connect_args)
        self.ids: set[int] = set()
        event.listen(self.engine, "connect", self._connected)

    def _connected(self, dbapi_connection, _record) -> None:
        self.ids.add(self.server_id(dbapi_connection))

    def server_id(self, dbapi_connection) -> int:
        if self.backend == "mysql":
            return int(dbapi_connection.thread_id())
        return int(dbapi_connection.info.backend_pid)

    def kill_all(self, admin) -> int:
        if self.backend == "postgresql":
            return pg_terminate(admin, app_name=self.app)
        return mysql_kill(admin, self.ids)

    def kill_one(self, admin, ident: int) -> None:
        if self.backend == "postgresql":
            pg_terminate(admin, pids=[ident])
            return
        mysql_kill(admin, [ident])
        wait_until(
            lambda: not _mysql_alive(admin, ident), 5, f"connection {ident} to go"
        )

    def dispose(self) -> None:
        self.engine.dispose()


def _mysql_alive(admin, ident: int) -> bool:
    with admin.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.processlist WHERE id = :i"
                ),
                {"i": ident},
            ).scalar_one()
        )


def _count_polls(scheduler: Scheduler) -> list[int]:
    """Count the scheduler's polls (each asks the table for its next event)."""
    count = [0]
    original = scheduler.store.next_event

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    scheduler.store.next_event = counted  # type: ignore[method-assign]
    return count


# -- B21: connections killed in a loop ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_connections_killed_in_a_loop(backend, db_url, prefix, db, admin, caplog):
    """Server-side kills every 0.5 s: thread alive, no fire time twice (case B21.1/2).

    A scheduler with ``start()`` (engine without ``pool_pre_ping``) runs a quick
    job and a 0.6 s job every second while all its connections, including the
    listening one on PostgreSQL, are killed from the server side every 0.5 s
    for 3.5 s. The polling thread is alive at the end, each fire time ran at most
    once and every execution is recorded ``succeeded``, the jobs run again
    after the kills, errors are logged without a hot loop, and no connection is
    left checked out.
    """
    caplog.set_level(logging.WARNING, logger="jobsched")
    killable = Killable(backend, db_url)
    scheduler = Scheduler(
        killable.engine, table_prefix=prefix, lease=1.0, poll_interval=0.1
    )
    executions: dict[str, list[float]] = {"quick": [], "slow": []}

    def quick() -> None:
        executions["quick"].append(time.time())

    def slow() -> None:
        executions["slow"].append(time.time())
        time.sleep(0.6)

    scheduler.register(quick, name="quick", every=1.0)
    scheduler.register(slow, name="slow", every=1.0)
    polls = _count_polls(scheduler)
    scheduler.start()
    started = time.monotonic()
    try:
        wait_until(lambda: executions["quick"], 10, "the first run")
        killed = []
        for _ in range(KILLS):
            killed.append(killable.kill_all(admin))
            time.sleep(0.5)
        kills_ended = datetime.now(timezone.utc)
        wait_until(
            lambda: (
                len(
                    [
                        r
                        for r in db.runs("quick")
                        if r["outcome"] == "succeeded" and r["started_at"] > kills_ended
                    ]
                )
                >= 2
            ),
            10,
            "the job to run again after the kills",
        )
        assert scheduler.running, "the polling thread died"
    finally:
        scheduler.stop(timeout=5)
        forget_leases(scheduler)
        elapsed = time.monotonic() - started
        checked_out = killable.engine.pool.checkedout()
        killable.dispose()

    assert sum(killed) >= KILLS, f"the kills hit nothing: {killed}"
    assert checked_out == 0
    log = "\n".join(r.getMessage() for r in caplog.records)
    for job in ("quick", "slow"):
        db.assert_once_per_fire_time(job)
        runs = db.started_runs(job)
        assert [r["outcome"] for r in runs] == ["succeeded"] * len(runs), (
            f"{job}: {runs}\nrow: {db.job(job)}\n{log}"
        )
        assert len(executions[job]) == len(runs), (job, executions[job], runs)
    db.assert_nothing_running()

    warnings = [r.getMessage() for r in caplog.records]
    assert warnings, "no error was logged: the kills went unnoticed"
    assert len(warnings) <= 15 * len(killed), warnings
    assert polls[0] <= 3 * elapsed / 0.1 + 60, f"{polls[0]} polls in {elapsed:.1f} s"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_idle_connections_dropped_by_wait_timeout(db_url, prefix, db, caplog, backend):
    """Idle connections dropped by MySQL's ``wait_timeout`` are replaced (case B21.2).

    Every session of the engine has ``wait_timeout=1``; the job fires every
    2 s, so the pooled connections idle past it between polls and the server
    closes them. The scheduler keeps running, each fire time runs once, and
    the stale connections are not reused forever.
    """
    caplog.set_level(logging.WARNING, logger="jobsched")
    engine = create_engine(
        db_url, connect_args={"init_command": "SET SESSION wait_timeout=1"}
    )
    scheduler = Scheduler(engine, table_prefix=prefix, lease=5.0, poll_interval=2.0)
    calls = []
    scheduler.register(lambda: calls.append(time.time()), name="tick", every=2.0)
    scheduler.start()
    try:
        wait_until(lambda: len(calls) >= 3, 15, "three runs", interval=0.2)
        assert scheduler.running
    finally:
        scheduler.stop(timeout=5)
        checked_out = engine.pool.checkedout()
        engine.dispose()

    assert checked_out == 0
    db.assert_once_per_fire_time("tick")
    runs = db.started_runs("tick")
    assert [r["outcome"] for r in runs] == ["succeeded"] * len(runs)
    assert len(calls) == len(runs)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(1.0 < gap < 3.5 for gap in gaps), gaps
    db.assert_nothing_running()


# -- B21.4: a connection killed in the middle of one statement ------------------------


POINTS = ["claim", "run_row", "claim_commit", "renew", "end"]


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
@pytest.mark.parametrize("point", POINTS)
def test_connection_killed_at_one_statement(
    backend, db_url, prefix, db, admin, caplog, point
):
    """A connection killed at claim, renewal, commit or completion (case B21.4, B18.2).

    The connection that is about to run one statement of the run path is
    killed from the server side, just before the statement (or the claim's
    ``COMMIT``) is sent. The transaction is retried on a new connection:
    ``run_pending()`` returns the run, the body ran once, the run is recorded
    ``succeeded`` once and nothing is left ``running``.
    """
    caplog.set_level(logging.WARNING, logger="jobsched")
    killable = Killable(backend, db_url)
    state = {"armed": False, "fired": False}
    wanted = "claim" if point == "claim_commit" else point

    def matches(statement: str) -> bool:
        return wanted in statement_steps(statement, prefix)

    def before(conn, cursor, statement, parameters, context, executemany):
        if state["fired"] or not matches(statement):
            return
        if point == "claim_commit":
            state["armed"] = True
            return
        state["fired"] = True
        killable.kill_one(admin, killable.server_id(conn.connection.driver_connection))

    def on_commit(conn):
        if state["armed"] and not state["fired"]:
            state["fired"] = True
            killable.kill_one(
                admin, killable.server_id(conn.connection.driver_connection)
            )

    event.listen(killable.engine, "before_cursor_execute", before)
    event.listen(killable.engine, "commit", on_commit)
    lease = 0.9 if point == "renew" else 10.0
    scheduler = Scheduler(killable.engine, table_prefix=prefix, lease=lease)
    calls = []

    def body() -> None:
        calls.append(time.time())
        if point == "renew":
            time.sleep(1.0)  # renewed every 0.3 s

    scheduler.register(body, name="job", at=datetime.now(timezone.utc))
    try:
        results = scheduler.run_pending()
    finally:
        killable.dispose()

    assert state["fired"], "the statement to kill never ran"
    assert [(r.job, r.outcome.value) for r in results] == [("job", "succeeded")]
    assert len(calls) == 1
    assert [(r["attempt"], r["outcome"]) for r in db.runs("job")] == [(1, "succeeded")]
    assert db.status("job") == "done"
    db.assert_nothing_running()
    messages = [r.getMessage() for r in caplog.records]
    assert any("transient" in m for m in messages), messages


@pytest.mark.slow
@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_run_pending_with_the_server_unreachable_returns_normally(backend, caplog):
    """run_pending() with no server to reach logs and returns (case B21).

    The documented behaviour: a database that stays unreachable through the
    retries is logged as a warning and ``run_pending()`` returns what it ran
    (nothing); no driver exception reaches the caller.
    """
    caplog.set_level(logging.WARNING, logger="jobsched")
    url = {
        "postgresql": "postgresql+psycopg://postgres@127.0.0.1:9/test",
        "mysql": "mysql+pymysql://root@127.0.0.1:9/test",
    }[backend]
    engine = create_engine(url)
    try:
        scheduler = Scheduler(engine, table_prefix="nowhere_")
        scheduler.register(lambda: None, name="job", every=1.0)
        assert scheduler.run_pending() == []
    finally:
        engine.dispose()
    messages = [r.getMessage() for r in caplog.records]
    assert any("database unavailable" in m for m in messages), messages


# -- B18.2: the completion write fails, then the database comes back -------------


FAIL_FOR = 2.5  # seconds: longer than the lease, shorter than two of them
LEASE = 1.0


class Window:
    """A fault that lasts ``FAIL_FOR`` seconds from the first time it strikes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: float | None = None
        self.strikes = 0

    def active(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if self.started is None:
                self.started = now
            if now - self.started < FAIL_FOR:
                self.strikes += 1
                return True
            return False


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("end", id="end-write-fails"),
        pytest.param("end_and_renew", id="end-write-and-renewal-fail"),
    ],
)
def test_completion_write_fails_then_recovers(
    backend, db_url, prefix, db, caplog, fault
):
    """The completion write fails for 2.5 s, then works again (case B18.2).

    Scheduler A runs a one-off job; when it ends, writing the result fails (a
    lost connection, every time it is tried) for 2.5 s, longer than the 1 s
    lease. Scheduler B, on its own engine, polls the same table all along.

    * ``end-write-fails``: A keeps the result, keeps renewing the lease, and
      writes the result once the database takes it: the row ends ``done``
      with one ``succeeded`` run and B never recovers it. The job has two
      attempts, so a run wrongly recovered as abandoned would also run the
      body a second time.
    * ``end-write-and-renewal-fail``: renewing fails too (the database is
      away for A altogether). The lease lapses, B records the run as
      abandoned (the one-off without retries ends ``failed``), and A's late
      write is fenced off: never stuck ``running``, never overwritten.
    """
    caplog.set_level(logging.INFO, logger="jobsched")
    window = Window()
    engine_a = create_engine(db_url)
    engine_b = create_engine(db_url)
    calls = []

    def body() -> None:
        calls.append(time.time())
        time.sleep(0.2)

    fail_statements(engine_a, prefix, {"end"}, window.active)
    if fault == "end_and_renew":
        fail_statements(
            engine_a,
            prefix,
            {"renew"},
            lambda: window.started is not None and window.active(),
        )

    attempts = 1 if fault == "end_and_renew" else 2
    now = datetime.now(timezone.utc)
    a = Scheduler(engine_a, table_prefix=prefix, lease=LEASE, poll_interval=0.1)
    b = Scheduler(engine_b, table_prefix=prefix, lease=LEASE, poll_interval=0.1)
    for scheduler in (a, b):
        scheduler.register(
            body, name="job", at=now, max_attempts=attempts, retry_wait=wait_fixed(0.1)
        )
    try:
        a.start()
        wait_until(lambda: calls, 10, "A to start the job")
        b.start()
        wait_until(
            lambda: db.status("job") in ("done", "failed"),
            FAIL_FOR + 12,
            "the job to end",
        )
        if fault == "end_and_renew":
            wait_until(
                lambda: any("lost" in r.getMessage() for r in caplog.records),
                10,
                "A to try its late write",
            )
        time.sleep(0.3)
    finally:
        a.stop(timeout=5)
        b.stop(timeout=5)
        forget_leases(a, b)
        engine_a.dispose()
        engine_b.dispose()

    assert window.strikes > 0, "the fault never struck"
    runs = [(r["attempt"], r["outcome"], r["owner"]) for r in db.runs("job")]
    messages = [r.getMessage() for r in caplog.records]
    db.assert_nothing_running()
    assert len(calls) == 1, f"the body ran {len(calls)} times; runs: {runs}"
    if fault == "end_and_renew":
        assert runs == [(1, "abandoned", a.owner)], runs
        assert db.status("job") == "failed"
        assert any("lost its claim" in m for m in messages), messages
        return

    assert runs == [(1, "succeeded", a.owner)], messages
    row = db.job("job")
    assert (row["status"], row["last_outcome"]) == ("done", "succeeded")
    assert not any("recovered from" in m for m in messages), messages


@pytest.mark.slow
def test_stop_with_an_unwritten_result_does_not_hold_the_run_forever(
    backend, db_url, prefix, db, caplog
):
    """stop() while a result waits to be written never leaves the run held (case B18.2).

    A's completion write fails (a lost connection) and A is stopped while the
    database is still away; then the database comes back. Whatever A does with
    the result it kept (write it at ``stop()``, or let its lease go), the run
    must not stay ``running`` with its lease renewed for as long as the process
    lives: within a few lease periods it is either recorded by A or recovered
    by B, and the body ran once.
    """
    caplog.set_level(logging.INFO, logger="jobsched")
    away = threading.Event()
    away.set()
    engine_a = create_engine(db_url)
    engine_b = create_engine(db_url)
    fail_statements(engine_a, prefix, {"end"}, away.is_set)
    calls = []
    at = datetime.now(timezone.utc)
    a = Scheduler(engine_a, table_prefix=prefix, lease=LEASE, poll_interval=0.1)
    b = Scheduler(engine_b, table_prefix=prefix, lease=LEASE, poll_interval=0.1)
    for scheduler in (a, b):
        scheduler.register(lambda: calls.append(time.time()), name="job", at=at)
    try:
        a.start()
        wait_until(
            lambda: (
                calls and any("transient" in r.getMessage() for r in caplog.records)
            ),
            10,
            "A's completion write to fail",
        )
        b.start()
        a.stop(timeout=2)
        away.clear()  # the database is back, after A stopped
        wait_until(
            lambda: db.status("job") != "running",
            3 * LEASE + 1,
            "the run to be recorded or recovered after A stopped",
            explain=lambda: f"row: {db.job('job')}\nruns: {db.runs('job')}",
        )
    finally:
        a.stop(timeout=2)
        b.stop(timeout=2)
        forget_leases(a, b)
        engine_a.dispose()
        engine_b.dispose()

    assert len(calls) == 1
    runs = [(r["attempt"], r["outcome"]) for r in db.runs("job")]
    assert runs in ([(1, "succeeded")], [(1, "abandoned")]), runs
    db.assert_nothing_running()


def test_a_failed_write_in_the_middle_of_a_batch_does_not_drop_the_rest(
    backend, db_url, prefix, db, caplog
):
    """A database failure mid-batch keeps the batch running (case B21).

    Eight jobs are claimed in one batch; the write of the first job's end,
    and giving anything back, fail through every retry (the database is away
    for about a second and a half). The rest of the batch still runs in the
    same call, its leases kept; the ends are written once the database is
    back, and nothing is recorded abandoned.
    """
    caplog.set_level(logging.WARNING, logger="jobsched")
    engine = create_engine(db_url)
    failures = {"left": 6}  # one write and all its retries

    def away() -> bool:
        if failures["left"] > 0:
            failures["left"] -= 1
            return True
        return False

    fail_statements(engine, prefix, {"end", "update"}, away)
    calls: list[str] = []
    scheduler = Scheduler(engine, table_prefix=prefix, lease=LEASE)

    def body(name: str) -> None:
        calls.append(name)
        time.sleep(0.06)  # longer than an end may wait: a write follows each

    scheduler.register(body, name="job")
    names = [scheduler.enqueue("job", args=[f"j{n}"]) for n in range(8)]
    try:
        first = scheduler.run_pending()
        scheduler.run_pending()  # writes whatever is still queued
    finally:
        forget_leases(scheduler)
        engine.dispose()

    assert failures["left"] == 0, "the failure was never injected"
    assert sorted(calls) == [f"j{n}" for n in range(8)]
    assert len(first) == 8
    for name in names:
        assert [(r["attempt"], r["outcome"]) for r in db.runs(name)] == [
            (1, "succeeded")
        ]
        assert db.status(name) == "done"
    db.assert_nothing_running()


@pytest.mark.slow
@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_claim_committed_but_reply_lost_is_recovered(
    backend, db_url, prefix, db, admin, caplog
):
    """A claim whose COMMIT landed but whose reply was lost is recovered (case B21.4).

    The claim's ``COMMIT`` reaches the server, then the connection is killed
    before the client hears back. The client retries, finds nothing due, and
    does not run the body. The row it cannot know it holds is ``running`` under
    its own owner token with nobody renewing the lease: once the lease has
    expired, the next ``run_pending()`` of the same (only) process must recover
    it as abandoned and run the retry. Nothing stays ``running``; the body ran
    exactly once.
    """
    caplog.set_level(logging.WARNING, logger="jobsched")
    killable = Killable(backend, db_url)
    state = {"armed": False, "fired": False}

    def before(conn, cursor, statement, parameters, context, executemany):
        if "claim" in statement_steps(statement, prefix):
            state["armed"] = True

    def on_commit(conn):
        if state["armed"] and not state["fired"]:
            state["fired"] = True
            driver = conn.connection.driver_connection
            driver.commit()  # the COMMIT lands...
            if backend == "postgresql":
                # psycopg sends nothing for a COMMIT outside a transaction:
                # open one, so that the COMMIT to come goes to the dead socket.
                driver.execute("SELECT 1")
            killable.kill_one(admin, killable.server_id(driver))  # ...the reply is lost

    event.listen(killable.engine, "before_cursor_execute", before)
    event.listen(killable.engine, "commit", on_commit)
    scheduler = Scheduler(killable.engine, table_prefix=prefix, lease=LEASE)
    calls = []
    scheduler.register(
        lambda: calls.append(time.time()),
        name="job",
        at=datetime.now(timezone.utc),
        max_attempts=2,
        retry_wait=wait_fixed(0.1),
    )
    try:
        assert scheduler.run_pending() == []
        assert state["fired"]
        assert calls == [], "ran a job whose claim it never saw succeed"
        row = db.job("job")
        assert (row["status"], row["owner"]) == ("running", scheduler.owner)

        deadline = time.monotonic() + 4 * LEASE
        while db.status("job") == "running" and time.monotonic() < deadline:
            scheduler.run_pending()
            time.sleep(0.1)
        scheduler.run_pending()
    finally:
        forget_leases(scheduler)
        killable.dispose()

    runs = [(r["attempt"], r["outcome"]) for r in db.runs("job")]
    assert db.status("job") != "running", (
        f"the orphaned claim is still running {4 * LEASE} s later (lease "
        f"{LEASE} s): its own process never recovers it; runs: {runs}"
    )
    assert runs == [(1, "abandoned"), (2, "succeeded")], runs
    assert len(calls) == 1
    db.assert_nothing_running()
