"""One jobsched process of the multi-process tests, started as a real OS process.

Usage::

    python _worker_process.py '{"mode": "run", "url": ..., "prefix": ..., ...}'

Modes:

``register``
    Wait until ``start_at`` (a ``time.time()`` value shared by every process, so
    they all start together), register the jobs below and write them to the
    table (creating the tables if needed), then exit.
``run``
    Register the jobs and sync them, wait until ``start_at``, ``start()`` the
    scheduler with a short poll interval, let it run until ``stop_at``,
    ``stop()`` it and exit.

Every job body inserts one row ``(job, fire, pid)`` into the results table
``<prefix>results``, in a short transaction of its own: ``fire`` is the fire time
of the run (from :func:`jobsched.current_run`). The tests count those rows per
(job, fire time) to prove each ran once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
)

from jobsched import Scheduler, current_run

#: Recurring jobs: name -> interval in seconds.
INTERVAL_JOBS = {
    **{f"every1-{n:02}": 1 for n in range(10)},
    **{f"every2-{n:02}": 2 for n in range(10)},
}
#: The registered name of the function that one-off jobs run.
ONE_OFF_FUNCTION = "record-once"


def results_table(prefix: str) -> Table:
    """The table that job bodies write to (not a jobsched table)."""
    return Table(
        f"{prefix}results",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("job", String(191), nullable=False),
        Column("fire", String(64), nullable=False),
        Column("pid", Integer, nullable=False),
    )


class Recorder:
    """The job body: record (job, fire time, pid) in the results table."""

    def __init__(self, engine: Engine, prefix: str) -> None:
        self.engine = engine
        self.results = results_table(prefix)

    def __call__(self) -> None:
        run = current_run()
        assert run is not None, "a job body runs inside a run"
        with self.engine.begin() as conn:
            conn.execute(
                insert(self.results).values(
                    job=run.job, fire=run.scheduled_for.isoformat(), pid=os.getpid()
                )
            )


def build(engine: Engine, prefix: str, anchor: datetime, **options: Any) -> Scheduler:
    """Return a scheduler with every job of these tests registered."""
    scheduler = Scheduler(engine, table_prefix=prefix, **options)
    record = Recorder(engine, prefix)
    for name, every in INTERVAL_JOBS.items():
        scheduler.register(record, name=name, every=every, start=anchor)
    scheduler.register(record, name=ONE_OFF_FUNCTION)
    return scheduler


def _sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


def main(config: dict[str, Any]) -> int:
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {os.getpid()} %(name)s %(levelname)s %(message)s",
    )
    engine = create_engine(config["url"])
    scheduler = build(
        engine,
        config["prefix"],
        datetime.fromisoformat(config["anchor"]),
        poll_interval=config.get("poll_interval", 0.05),
        max_workers=config.get("max_workers", 4),
    )

    if config["mode"] == "register":
        _sleep_until(config["start_at"])
        scheduler.jobs(limit=1)  # writes the registered jobs to the table
    elif config["mode"] == "run":
        scheduler.jobs(limit=1)  # connect and sync first: start() together, warm
        _sleep_until(config["start_at"])
        scheduler.start()
        _sleep_until(config["stop_at"])
        scheduler.stop(timeout=10)
    else:
        raise ValueError(f"unknown mode {config['mode']!r}")

    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
