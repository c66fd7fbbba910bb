"""Real OS processes sharing one database (DESIGN guarantee 1, CASES B11, B14, B20).

Each test starts at least four Python processes running
``tests/integration/_worker_process.py`` on this test's database (a SQLite file
in ``tmp_path``, or the shared server), waits for them with a deadline, and kills
whatever is left in a ``finally``. Results are counted from the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import _worker_process as worker
import pytest
from sqlalchemy import Engine, select

from jobsched import JobState, RunOutcome, Scheduler, define_tables

UTC = timezone.utc
WORKER = Path(__file__).with_name("_worker_process.py")
PROCESSES = 4
ONE_OFFS = 30
# Real seconds the run test lets its processes work.
RUN_SECONDS = 7.0
# Time given to every process to import and connect before they start together.
STARTUP_SECONDS = 3.0

pytestmark = pytest.mark.slow


def launch(config: dict[str, Any], logs: Path) -> list[subprocess.Popen[bytes]]:
    """Start the worker processes, each logging to a file of its own."""
    processes = []
    for number in range(PROCESSES):
        log = (logs / f"worker-{number}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )
        log.close()
    return processes


def wait_all(
    processes: list[subprocess.Popen[bytes]], deadline: float, logs: Path
) -> None:
    """Wait for every process until ``deadline``; kill any that is still alive."""
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    failed = [p.returncode for p in processes if p.returncode != 0]
    output = "\n".join(path.read_text() for path in sorted(logs.glob("worker-*.log")))
    assert not failed, f"worker exit codes {failed}:\n{output}"


def server_now(engine: Engine) -> datetime:
    """The database's clock, which every process schedules by."""
    return Scheduler(engine, table_prefix="unused_").store.server_time()


def test_processes_starting_together_write_one_row_per_job(
    db_url: str, prefix: str, engine: Engine, tmp_path: Path
) -> None:
    """Four processes start at once on an empty database (B14.2, B20.3)."""
    config = {
        "mode": "register",
        "url": db_url,
        "prefix": prefix,
        "anchor": datetime(2030, 1, 1, tzinfo=UTC).isoformat(),
        "start_at": time.time() + STARTUP_SECONDS,
    }

    processes = launch(config, tmp_path)
    wait_all(processes, time.monotonic() + STARTUP_SECONDS + 60, tmp_path)

    tables = define_tables(prefix)
    with engine.connect() as conn:
        names = conn.execute(select(tables.jobs.c.name)).scalars().all()
        meta = conn.execute(select(tables.meta.c.key)).scalars().all()
    assert sorted(names) == sorted(worker.INTERVAL_JOBS)
    assert meta == ["schema_version"]


def test_processes_run_each_fire_time_exactly_once(
    db_url: str, prefix: str, engine: Engine, tmp_path: Path
) -> None:
    """Four processes, 50 jobs, seven seconds: every (job, fire time) runs once.

    20 interval jobs fire every one or two seconds and 30 one-off jobs are all
    due at the same instant. Each run inserts (job, fire time, pid) into a
    results table; both that table and the run history must show no duplicate,
    every one-off exactly once, several ticks per interval job, and nothing left
    running (B10, B11, B15).
    """
    results = worker.results_table(prefix)
    results.create(engine)
    try:
        start_at = time.time() + STARTUP_SECONDS
        anchor = server_now(engine) + timedelta(seconds=STARTUP_SECONDS)
        setup = worker.build(engine, prefix, anchor)
        one_offs = [f"once-{n:02}" for n in range(ONE_OFFS)]
        for name in one_offs:
            setup.enqueue(
                worker.ONE_OFF_FUNCTION, name=name, at=anchor + timedelta(seconds=1)
            )
        config = {
            "mode": "run",
            "url": db_url,
            "prefix": prefix,
            "anchor": anchor.isoformat(),
            "start_at": start_at,
            "stop_at": start_at + RUN_SECONDS,
            "poll_interval": 0.05,
        }

        processes = launch(config, tmp_path)
        wait_all(
            processes, time.monotonic() + STARTUP_SECONDS + RUN_SECONDS + 60, tmp_path
        )

        with engine.connect() as conn:
            executions = conn.execute(
                select(results.c.job, results.c.fire, results.c.pid)
            ).all()
            runs = conn.execute(select(setup.tables.runs)).mappings().all()
            statuses: dict[str, str] = dict(
                conn.execute(
                    select(setup.tables.jobs.c.name, setup.tables.jobs.c.status)
                ).all()
            )
    finally:
        results.drop(engine)

    # The results table: one execution per (job, fire time), by several processes.
    per_fire = Counter((job, fire) for job, fire, _ in executions)
    duplicates = {key: n for key, n in per_fire.items() if n > 1}
    assert duplicates == {}
    assert len({pid for _, _, pid in executions}) >= 2, "one process did everything"

    # The run history agrees: one executed attempt per fire time, each recorded.
    ran = [r for r in runs if r["outcome"] != RunOutcome.MISSED.value]
    history = Counter((r["job_name"], r["scheduled_for"].isoformat()) for r in ran)
    assert {key: n for key, n in history.items() if n > 1} == {}
    assert set(history) == set(per_fire)
    assert {r["outcome"] for r in ran} == {RunOutcome.SUCCEEDED.value}
    assert {r["attempt"] for r in ran} == {1}
    skipped = {
        (r["job_name"], r["scheduled_for"].isoformat())
        for r in runs
        if r["outcome"] == RunOutcome.MISSED.value
    }
    assert skipped.isdisjoint(history)

    # Every one-off ran exactly once.
    ticks = Counter(job for job, _ in per_fire)
    assert {name: ticks[name] for name in one_offs} == dict.fromkeys(one_offs, 1)
    assert {statuses[name] for name in one_offs} == {JobState.DONE.value}

    # Every interval job ticked several times, and each of its fire times up to
    # the last one handled was either run or recorded as missed: no gap.
    for name, every in worker.INTERVAL_JOBS.items():
        assert ticks[name] >= 2, (name, ticks[name])
        handled = sorted(
            datetime.fromisoformat(fire)
            for job, fire in set(history) | skipped
            if job == name
        )
        step = timedelta(seconds=every)
        expected = [anchor + n * step for n in range(len(handled))]
        assert handled == expected, name

    # Nothing is left running, in the jobs or in the history.
    assert JobState.RUNNING.value not in statuses.values()
    assert RunOutcome.RUNNING.value not in {r["outcome"] for r in runs}
