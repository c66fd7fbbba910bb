"""Fixtures of the fault-injection suite: helper processes, table reads, faults.

Helper processes run ``fault_worker.py`` (one application process each, with
``Scheduler.start()``) and record every execution of a job body in a results
file outside the database (see ``faultjobs``). They are forked by one
"zygote" process per session that has already imported SQLAlchemy, the
drivers and jobsched (see ``fault_zygote``), so each starts in milliseconds
instead of a second or two of imports. A test kills, pauses or signals
them, cuts their connections from the server side, and then checks the runs
table and the results file: each (job, fire time) ran once, or as often as its
retry policy allows, and nothing stays ``running``.

Every process started here is killed when the test ends, before the test's
tables are dropped. Faults are injected from outside jobsched's code where
possible: signals, server-side connection kills, SQLite locks, and statements
recognised by their SQL (``faultsql``); the few hooks into jobsched's
internals are named in the tests that use them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faultjobs
import pytest
from faultsql import statement_steps
from sqlalchemy import Engine, create_engine, event, select, text

from jobsched import define_tables
from jobsched._tables import create_tables

HERE = Path(__file__).resolve().parent
# Lease and poll interval of the helper processes: short, so that a test
# takes seconds; recovery is expected within two lease periods.
LEASE = 1.0
POLL = 0.1


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            details = f"\n{explain()}" if explain is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{details}")
        time.sleep(interval)


class Proc:
    """One helper process (forked by the zygote; see ``fault_zygote``)."""

    def __init__(self, name: str, pid: int, config: dict[str, Any], base: Path):
        self.name = name
        self.pid = pid
        self.config = config
        self.base = base
        self.log_path = Path(config["log"])
        self.died_at: float | None = None

    def exit_code(self) -> int | None:
        try:
            return int((self.base.parent / (self.base.name + ".exit")).read_text())
        except FileNotFoundError:
            return None

    def alive(self) -> bool:
        return self.exit_code() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, *levels: str) -> list[str]:
        """Lines of the log at the given levels (``WARNING``, ``ERROR``...)."""
        return [
            line
            for line in self.log().splitlines()
            if len(line.split(" ", 4)) > 3 and line.split(" ", 4)[3] in levels
        ]

    def owner(self) -> str:
        """The scheduler's owner token, as the process logged it."""
        for line in self.log().splitlines():
            if " OWNER " in line:
                return line.rsplit(" OWNER ", 1)[1].strip()
        raise AssertionError(f"{self.name} has not logged its owner token yet")

    def conn_ids(self) -> set[int]:
        """Server-side ids of the database connections the process opened."""
        return {
            int(line.rsplit(" CONN ", 1)[1])
            for line in self.log().splitlines()
            if " CONN " in line
        }

    def started(self) -> bool:
        return " STARTED" in self.log()

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> float:
        """SIGKILL the process; return when it is gone (the time it died)."""
        os.kill(self.pid, signal.SIGKILL)
        self.wait(10)
        return self.died_at or time.time()

    def wait(self, timeout: float) -> int:
        """Wait for the process to end; return its exit code (negative: signal)."""
        deadline = time.monotonic() + timeout
        while (code := self.exit_code()) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.name, timeout)
            time.sleep(0.01)
        if self.died_at is None:
            self.died_at = time.time()
        return code

    def go(self) -> None:
        """Let a process that waits for its ``go`` file start its scheduler."""
        Path(self.config["go"]).touch()


class Zygote:
    """A process that has imported everything and forks helper processes."""

    def __init__(self) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(HERE / "fault_zygote.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(HERE),
        )

    def start(self, config_path: Path) -> int:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(f"{config_path}\n".encode())
        self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError("the zygote process died")
        return int(line)

    def close(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    """One zygote for the session: helper processes start in milliseconds."""
    started = Zygote()
    try:
        yield started
    finally:
        started.close()


class Fleet:
    """Starts helper processes on the test's database and tables."""

    def __init__(self, tmp: Path, url: str, prefix: str, zygote: Zygote) -> None:
        self.tmp = tmp
        self.url = url
        self.prefix = prefix
        self.zygote = zygote
        self.results = str(tmp / "results.jsonl")
        self.procs: list[Proc] = []
        self.app_name = f"jobsched-fault-{uuid.uuid4().hex[:8]}"

    def spawn(
        self,
        name: str,
        jobs: list[dict[str, Any]],
        *,
        wait_for_go: bool = False,
        **config: Any,
    ) -> Proc:
        """Start a helper process running ``jobs`` (see ``fault_worker``)."""
        full: dict[str, Any] = {
            "url": self.url,
            "prefix": self.prefix,
            "app_name": f"{self.app_name}-{name}",
            "lease": LEASE,
            "poll": POLL,
            "log": str(self.tmp / f"{name}.log"),
            "jobs": jobs,
            **config,
        }
        if wait_for_go:
            full["go"] = str(self.tmp / f"{name}.go")
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(full), encoding="utf-8")
        pid = self.zygote.start(path)
        proc = Proc(name, pid, full, self.tmp / name)
        self.procs.append(proc)
        return proc

    def executions(self, job: str | None = None) -> list[dict[str, Any]]:
        """Executions of job bodies (all jobs, or one), in start order."""
        found = faultjobs.read_results(self.results)
        return [e for e in found if job is None or e["job"] == job]

    def job(
        self,
        name: str,
        schedule: dict[str, Any],
        *,
        seconds: float = 0.0,
        first_seconds: float | None = None,
        hold_file: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """A job definition for :meth:`spawn` whose body records executions."""
        kwargs: dict[str, Any] = {"seconds": seconds}
        if first_seconds is not None:
            kwargs.update(
                first_seconds=first_seconds, marker=str(self.tmp / f"{name}.first")
            )
        if hold_file is not None:
            kwargs.update(hold_file=hold_file)
        return {
            "name": name,
            "body": "body",
            "args": [self.results, name],
            "kwargs": kwargs,
            "schedule": schedule,
            "options": options,
        }

    def forked(self, name: str, count: int) -> list[Proc]:
        """The children of a process spawned with ``fork=count`` (logs only)."""
        launcher = next(p for p in self.procs if p.name == name)
        return [
            Proc(
                f"{name}-{i}",
                launcher.pid,
                {**launcher.config, "log": str(self.tmp / f"{name}-{i}.log")},
                launcher.base,
            )
            for i in range(count)
        ]

    def explain(self) -> str:
        """Every process's log and output, for a failure message."""
        parts = []
        for log in sorted(self.tmp.glob("*.log")):
            text = log.read_text(errors="replace")
            parts.append(f"--- {log.stem} log:\n{text[-6000:]}")
        for out in sorted(self.tmp.glob("*.out")):
            text = out.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- {out.stem} output:\n{text[-3000:]}")
        parts.append(f"--- executions: {self.executions()}")
        return "\n".join(parts)

    def cleanup(self) -> None:
        for proc in self.procs:
            # The whole group: its forked children and spawned executors too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(10)


@pytest.fixture
def fleet(
    engine: Engine, db_url: str, prefix: str, tmp_path: Path, zygote: Zygote
) -> Iterator[Fleet]:
    """Helper processes on this test's tables; all killed when the test ends.

    It depends on ``engine`` so that the processes are gone before the
    ``engine`` fixture drops the tables.
    """
    fleet = Fleet(tmp_path, db_url, prefix, zygote)
    try:
        yield fleet
    finally:
        fleet.cleanup()
        sys.stderr.write(fleet.explain() + "\n")


class Db:
    """Reads of the test's jobsched tables, through the test's own engine."""

    def __init__(self, engine: Engine, prefix: str) -> None:
        self.engine = engine
        self.tables = define_tables(prefix)

    def create(self) -> None:
        create_tables(self.engine, self.tables)

    def runs(self, job: str | None = None) -> list[dict[str, Any]]:
        runs = self.tables.runs
        query = select(runs).order_by(runs.c.id)
        if job is not None:
            query = query.where(runs.c.job_name == job)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def started_runs(self, job: str) -> list[dict[str, Any]]:
        """Runs that were started (not fire times recorded as missed)."""
        return [r for r in self.runs(job) if r["outcome"] != "missed"]

    def job(self, name: str) -> dict[str, Any] | None:
        jobs = self.tables.jobs
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.name == name)).first()
        return None if row is None else dict(row._mapping)

    def jobs(self) -> list[dict[str, Any]]:
        jobs = self.tables.jobs
        with self.engine.connect() as conn:
            return [
                dict(r._mapping) for r in conn.execute(select(jobs).order_by(jobs.c.id))
            ]

    def status(self, name: str) -> str | None:
        row = self.job(name)
        return None if row is None else row["status"]

    def assert_nothing_running(self) -> None:
        """No job row is ``running`` and no run row is left ``running``."""
        jobs = [j for j in self.jobs() if j["status"] == "running"]
        runs = [r for r in self.runs() if r["outcome"] == "running"]
        assert jobs == [], f"jobs left running: {jobs}"
        assert runs == [], f"runs left running: {runs}"

    def assert_once_per_fire_time(self, job: str) -> None:
        """No fire time of ``job`` has two started runs with the same attempt."""
        seen: dict[tuple[Any, int], int] = {}
        for run in self.started_runs(job):
            key = (run["scheduled_for"], run["attempt"])
            seen[key] = seen.get(key, 0) + 1
        doubles = {k: n for k, n in seen.items() if n > 1}
        assert doubles == {}, f"{job}: fire times started more than once: {doubles}"


@pytest.fixture
def db(engine: Engine, prefix: str) -> Db:
    """The test's tables, read through the test's engine."""
    return Db(engine, prefix)


def forget_leases(*schedulers: Any) -> None:
    """Make the lease-keeper threads of a finished test's schedulers go quiet.

    A scheduler that still holds a claim after ``stop()`` (a bug some tests
    here expose) keeps a thread renewing it; once the test's tables are
    dropped it would log warnings into the tests that follow.
    """
    for scheduler in schedulers:
        keeper = getattr(scheduler, "_leases", None)
        if keeper is None:
            continue
        with keeper._lock:
            for held in ("_claims", "_pinned"):
                getattr(keeper, held, {}).clear()
            thread = getattr(keeper, "_thread", None)
        if thread is not None:  # it ends at its next wake-up, with nothing held
            thread.join(scheduler.lease.total_seconds())


def owner_pid(owner: str | None) -> int | None:
    """The process id inside an owner token ``host:pid:random``."""
    if not owner:
        return None
    return int(owner.split(":")[-2])


def assert_no_overlap(executions: list[dict[str, Any]], what: str) -> None:
    """No two executions in the list ran at the same time.

    An execution without an end (its process was killed) lasts until its
    process died, which the caller puts in ``died``; without it, forever.
    """
    ordered = sorted(executions, key=lambda e: e["start"])
    for before, after in itertools.pairwise(ordered):
        end = (
            before["end"]
            if before["end"] is not None
            else before.get("died", float("inf"))
        )
        assert end <= after["start"], (
            f"{what}: executions overlap: {before} and {after}"
        )


# -- server-side faults -----------------------------------------------------------


def fail_statements(
    engine: Engine, prefix: str, kinds: set[str], active: Callable[[], bool]
) -> None:
    """Make the engine's statements of ``kinds`` fail while ``active()`` says so.

    They fail as a dropped connection does: with the driver's own
    ``OperationalError``, before reaching the server.
    """
    error = engine.dialect.loaded_dbapi.OperationalError

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement_steps(statement, prefix) & kinds and active():
            raise error("injected fault: the connection was lost")

    event.listen(engine, "before_cursor_execute", before)


@pytest.fixture
def admin(db_url: str) -> Iterator[Engine]:
    """A separate engine for the test's own interventions (kills, checks)."""
    engine = create_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def pg_terminate(admin: Engine, *, app_name: str | None = None, pids: Any = ()) -> int:
    """Terminate PostgreSQL backends by application name or pid; return how many."""
    with admin.connect() as conn:
        if app_name is not None:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid, 2000)) "
                    "FROM pg_stat_activity "
                    "WHERE application_name = :app AND pid <> pg_backend_pid()"
                ),
                {"app": app_name},
            ).scalar_one()
        else:
            killed = 0
            for pid in pids:
                killed += bool(
                    conn.execute(
                        text("SELECT pg_terminate_backend(:pid, 2000)"), {"pid": pid}
                    ).scalar_one()
                )
        conn.commit()
    return int(killed)


def mysql_kill(admin: Engine, ids: Any) -> int:
    """``KILL`` the MySQL/MariaDB connections among ``ids`` that still exist."""
    wanted = set(ids)
    if not wanted:
        return 0
    killed = 0
    with admin.connect() as conn:
        live = {
            row[0]
            for row in conn.execute(
                text("SELECT id FROM information_schema.processlist")
            )
        }
        for ident in sorted(wanted & live):
            killed += _kill_connection(conn, ident)
    return killed


def _kill_connection(conn: Any, ident: int) -> bool:
    try:
        conn.execute(text(f"KILL {int(ident)}"))
    except Exception:  # it went away by itself in between
        return False
    return True


def holds_transaction(
    backend: str, admin: Engine, db_path: str | None, proc: Proc
) -> bool:
    """Whether ``proc`` holds an open transaction (and so maybe row locks)."""
    if backend == "postgresql":
        with admin.connect() as conn:
            busy = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = :app AND state IN ('active', "
                    "'idle in transaction', 'idle in transaction (aborted)')"
                ),
                {"app": proc.config["app_name"]},
            ).scalar_one()
        return bool(busy)
    if backend == "mysql":
        ids = proc.conn_ids()
        if not ids:
            return False
        with admin.connect() as conn:
            open_trx = conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.innodb_trx "
                    f"WHERE trx_mysql_thread_id IN ({','.join(str(i) for i in ids)})"
                )
            ).scalar_one()
        return bool(open_trx)
    assert db_path is not None
    probe = sqlite3.connect(db_path, timeout=0)
    try:
        probe.execute("BEGIN EXCLUSIVE")
        probe.rollback()
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()
    return False


def pause_outside_transaction(
    proc: Proc, backend: str, admin: Engine, db_path: str | None
) -> None:
    """SIGSTOP ``proc`` at a moment when it holds no transaction.

    A process frozen inside a transaction would hold its row or file locks and
    block the other processes for as long as it is frozen, which is a
    different fault (a stuck transaction) from the one tested: a process that
    lost its lease.
    """
    for _ in range(100):
        proc.send(signal.SIGSTOP)
        time.sleep(0.05)
        if not holds_transaction(backend, admin, db_path, proc):
            return
        proc.send(signal.SIGCONT)
        time.sleep(0.013)
    pytest.fail(f"{proc.name} never paused outside a transaction")


def sqlite_path(db_url: str) -> str | None:
    """The file of a ``sqlite:///`` URL, or ``None`` for other backends."""
    return db_url.split("///", 1)[1] if db_url.startswith("sqlite") else None
