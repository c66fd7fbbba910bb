"""A small WSGI application whose every worker process embeds a scheduler.

gunicorn starts four worker processes (see ``gunicorn.conf.py``). Each one
creates its own engine and :class:`jobsched.Scheduler` after the fork and
registers the same job, which fires every five seconds and writes the fire time
and its process id to the ``demo_ticks`` table. All four poll one jobs table,
yet each fire time is run by one of them only. The page at ``/`` shows which
process ran what, and whether any fire time was run twice.

The database URL comes from ``JOBSCHED_DEMO_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1/test``).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    func,
    insert,
    select,
)

from jobsched import RunOutcome, Scheduler

DATABASE_URL = os.environ.get(
    "JOBSCHED_DEMO_URL", "postgresql+psycopg://postgres@127.0.0.1/test"
)
JOB_NAME = "multi_worker.record_tick"

logger = logging.getLogger("multi_worker")

metadata = MetaData()
ticks = Table(
    "demo_ticks",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("scheduled_for", DateTime(timezone=True), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("recorded_at", DateTime(timezone=True), server_default=func.now()),
)

# Set in each worker process by start_scheduler(), never in the gunicorn master:
# connections and threads must not cross a fork.
engine: Engine | None = None
scheduler: Scheduler | None = None


def create_demo_table() -> None:
    """Create ``demo_ticks`` once, from the gunicorn master, before any fork."""
    setup = create_engine(DATABASE_URL)
    metadata.create_all(setup)
    setup.dispose()


def fire_time_of_current_run(scheduler: Scheduler) -> datetime:
    """Return the fire time of the run of ``JOB_NAME`` this process is executing.

    A job function receives only its own arguments, so it reads its fire time
    from the run history: the run still in progress under this process's owner.
    """
    for run in scheduler.runs(JOB_NAME, limit=10).items:
        if run.outcome is RunOutcome.RUNNING and run.owner == scheduler.owner:
            return run.scheduled_for
    raise LookupError(f"no run of {JOB_NAME!r} in progress in this process")


def record_tick() -> None:
    """The job: write (fire time, pid) to ``demo_ticks``."""
    if engine is None or scheduler is None:
        raise RuntimeError("the scheduler of this worker has not been started")
    fire_time = fire_time_of_current_run(scheduler)
    with engine.begin() as conn:
        conn.execute(insert(ticks).values(scheduled_for=fire_time, pid=os.getpid()))


def start_scheduler() -> None:
    """Create this worker's engine and scheduler and start polling."""
    global engine, scheduler

    engine = create_engine(DATABASE_URL, pool_pre_ping=True)
    scheduler = Scheduler(engine)
    # Every worker registers the same job under the same name; the first one
    # writes its row, the others find it unchanged.
    scheduler.register(record_tick, name=JOB_NAME, cron="*/5 * * * * *", seconds=True)
    scheduler.start()
    logger.info("worker %d: scheduler started as %s", os.getpid(), scheduler.owner)


def stop_scheduler() -> None:
    """Stop this worker's scheduler, letting a running job finish first."""
    if scheduler is not None:
        scheduler.stop(timeout=10)
    if engine is not None:
        engine.dispose()


def _page() -> str:
    if engine is None:
        return "<p>This worker has no scheduler (was gunicorn.conf.py used?).</p>"

    with engine.connect() as conn:
        per_worker = conn.execute(
            select(
                ticks.c.pid,
                func.count(),
                func.min(ticks.c.scheduled_for),
                func.max(ticks.c.scheduled_for),
            )
            .group_by(ticks.c.pid)
            .order_by(ticks.c.pid)
        ).all()
        duplicates = conn.execute(
            select(ticks.c.scheduled_for, func.count())
            .group_by(ticks.c.scheduled_for)
            .having(func.count() > 1)
        ).all()
        recent = conn.execute(
            select(ticks.c.scheduled_for, ticks.c.pid, ticks.c.recorded_at)
            .order_by(ticks.c.scheduled_for.desc())
            .limit(20)
        ).all()

    def cells(values: Iterable[Any], tag: str = "td") -> str:
        return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values)

    worker_rows = "".join(f"<tr>{cells(row)}</tr>" for row in per_worker)
    recent_rows = "".join(f"<tr>{cells(row)}</tr>" for row in recent)
    verdict = (
        "none: every fire time ran once"
        if not duplicates
        else ", ".join(f"{when} ({count} times)" for when, count in duplicates)
    )
    return f"""<!doctype html>
<title>jobsched: four workers, one table</title>
<h1>jobsched: four workers, one table</h1>
<p>This page was served by process {os.getpid()}.</p>
<h2>Runs per worker</h2>
<table border="1">
<tr>{cells(["pid", "runs", "first fire time", "last fire time"], "th")}</tr>
{worker_rows}
</table>
<h2>Fire times run more than once</h2>
<p>{html.escape(verdict)}</p>
<h2>Latest 20 runs</h2>
<table border="1">
<tr>{cells(["fire time", "pid", "recorded at"], "th")}</tr>
{recent_rows}
</table>
"""


def application(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> list[bytes]:
    """The WSGI entry point: ``/`` shows the runs, anything else is 404."""
    if environ.get("PATH_INFO", "/") != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    body = _page().encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]
