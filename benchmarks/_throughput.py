"""Draining a backlog of due no-op jobs: jobsched, and APScheduler 3 as baseline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text

import jobsched

from _env import (
    Database,
    analyze,
    drop_tables,
    fresh_tables,
    make_engine,
    new_prefix,
    seed,
)
from _procs import Fleet, merge

# How often the orchestrator looks whether the backlog is gone (seconds).
WATCH_INTERVAL = 0.05


def _backlog_left(engine: Engine, prefix: str) -> bool:
    jobs = jobsched.define_tables(prefix).jobs
    query = (
        select(jobs.c.id).where(jobs.c.status.in_(("scheduled", "running"))).limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(query).first() is not None


def _succeeded(engine: Engine, prefix: str) -> int:
    runs = jobsched.define_tables(prefix).runs
    query = select(func.count()).where(runs.c.outcome == "succeeded")
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def check_runs(engine: Engine, prefix: str, drained: bool) -> dict[str, Any]:
    """Count what must never happen, from the run history.

    Returns:
        ``duplicate_keys``: (job, fire time, attempt) recorded more than once;
        ``multiple_successes``: jobs with more than one succeeded run;
        ``without_success``: jobs with no succeeded run (counted only when the
        backlog was drained); ``done_without_success``: jobs marked done that
        have no succeeded run; ``outcomes``: runs by outcome; ``statuses``: jobs
        by status.
    """
    tables = jobsched.define_tables(prefix)
    jobs, runs = tables.jobs, tables.runs
    analyze(engine, runs.name)
    keyed = (
        select(runs.c.job_id)
        .group_by(runs.c.job_id, runs.c.scheduled_for, runs.c.attempt)
        .having(func.count() > 1)
        .subquery()
    )
    repeated = (
        select(runs.c.job_id)
        .where(runs.c.outcome == "succeeded")
        .group_by(runs.c.job_id)
        .having(func.count() > 1)
        .subquery()
    )
    succeeded = (
        select(runs.c.id)
        .where(runs.c.job_id == jobs.c.id, runs.c.outcome == "succeeded")
        .exists()
    )
    with engine.connect() as conn:
        duplicate_keys = conn.execute(select(func.count()).select_from(keyed)).scalar()
        multiple = conn.execute(select(func.count()).select_from(repeated)).scalar()
        without = conn.execute(
            select(func.count()).select_from(jobs).where(~succeeded)
        ).scalar()
        done_without = conn.execute(
            select(func.count())
            .select_from(jobs)
            .where(~succeeded, jobs.c.status == "done")
        ).scalar()
        outcomes = dict(
            conn.execute(
                select(runs.c.outcome, func.count()).group_by(runs.c.outcome)
            ).all()
        )
        statuses = dict(
            conn.execute(
                select(jobs.c.status, func.count()).group_by(jobs.c.status)
            ).all()
        )
        span = conn.execute(
            select(func.min(runs.c.started_at), func.max(runs.c.finished_at)).where(
                runs.c.outcome == "succeeded"
            )
        ).one()
    result: dict[str, Any] = {
        "duplicate_keys": int(duplicate_keys or 0),
        "multiple_successes": int(multiple or 0),
        "without_success": int(without or 0) if drained else None,
        "done_without_success": int(done_without or 0),
        "outcomes": {str(k): int(v) for k, v in outcomes.items()},
        "statuses": {str(k): int(v) for k, v in statuses.items()},
    }
    if span[0] is not None and span[1] is not None:
        result["db_span_s"] = (span[1] - span[0]).total_seconds()
    return result


def per_job(total: dict[str, Any], jobs_run: int) -> dict[str, Any]:
    """Turn a fleet's counters into per-job figures."""
    if not jobs_run:
        return {}
    return {
        "statements": round(total["statements"] / jobs_run, 2),
        "dbapi_calls": round(total["calls"] / jobs_run, 2),
        "commits": round(total["commits"] / jobs_run, 2),
        "cpu_ms": round(1000 * total["cpu_s"] / jobs_run, 3),
        "by_kind": {
            kind: round(count / jobs_run, 3)
            for kind, count in sorted(total["by_kind"].items())
        },
    }


def drain_jobsched(
    db: Database,
    count: int,
    processes: int,
    mode: str,
    cap: float,
    log: Path,
    max_workers: int,
    batch: int,
) -> dict[str, Any]:
    """Seed ``count`` due jobs and time ``processes`` processes draining them."""
    engine = make_engine(db.url, 2)
    prefix = new_prefix("drain")
    fleet = None
    try:
        fresh_tables(engine, prefix)
        seeded = time.monotonic()
        seed(engine, prefix, count)
        seed_s = time.monotonic() - seeded

        argv = [
            "jobsched",
            f"--url={db.url}",
            f"--prefix={prefix}",
            f"--mode={mode}",
            f"--max-workers={max_workers}",
            f"--batch={batch}",
            f"--deadline={cap + 180}",
        ]
        fleet = Fleet([argv] * processes, log)
        fleet.ready()
        ready_s = time.monotonic() - seeded - seed_s
        started = fleet.go()
        drained = False
        while time.monotonic() - started < cap:
            time.sleep(WATCH_INTERVAL)
            if fleet.errors():
                raise RuntimeError("; ".join(fleet.errors()))
            if not _backlog_left(engine, prefix):
                drained = True
                break
        elapsed = time.monotonic() - started
        completed = count if drained else _succeeded(engine, prefix)
        stopping = time.monotonic()
        finals = fleet.stop()
        stop_s = time.monotonic() - stopping
        fleet = None
        total = merge(finals)
        problems = [
            f"{count} x {message}"
            for message, count in total["warnings"].items()
            if "unexpected error" in message
        ]
        if not completed or problems:
            raise RuntimeError(
                f"{completed} jobs completed; {'; '.join(problems) or 'see the log'}"
            )
        checks = check_runs(engine, prefix, drained)
        succeeded = checks["outcomes"].get("succeeded", 0)
        checks["executions_minus_successes"] = total["executions"] - succeeded
        return {
            "database": db.name,
            "scheduler": "jobsched",
            "processes": processes,
            "mode": mode,
            "max_workers": max_workers if mode == "start" else None,
            "batch_size": batch if mode == "pending" else None,
            "jobs": count,
            "seed_s": round(seed_s, 2),
            "ready_s": round(ready_s, 2),
            "stop_s": round(stop_s, 2),
            "completed": completed,
            "drained": drained,
            "cap_s": cap,
            "elapsed_s": round(elapsed, 3),
            "jobs_per_s": round(completed / elapsed, 1),
            "per_job": per_job(total, total["executions"]),
            "warnings": total["warnings"],
            "checks": checks,
        }
    finally:
        if fleet is not None:
            fleet.kill()
        drop_tables(engine, prefix)
        engine.dispose()


def drain_apscheduler(
    db: Database, count: int, cap: float, log: Path, max_workers: int
) -> dict[str, Any]:
    """Time APScheduler 3 (one process, SQLAlchemyJobStore) draining ``count``."""
    table = new_prefix("aps").rstrip("_")
    argv = [
        "apscheduler",
        f"--url={db.url}",
        f"--prefix={table}",
        f"--count={count}",
        f"--max-workers={max_workers}",
        f"--deadline={cap + 240}",
    ]
    fleet = Fleet([argv], log)
    engine = make_engine(db.url, 1)
    try:
        fleet.ready(timeout=180)
        started = fleet.go()
        while time.monotonic() - started < cap and not fleet.all_done():
            time.sleep(WATCH_INTERVAL)
        drained = fleet.all_done()
        elapsed = (fleet.last_done() if drained else time.monotonic()) - started
        stats = fleet.stats()[0]
        completed = stats["executions"]
        final = merge(fleet.stop())
        with engine.connect() as conn:
            left = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
        return {
            "database": db.name,
            "scheduler": "apscheduler3",
            "processes": 1,
            "mode": "BackgroundScheduler",
            "max_workers": max_workers,
            "jobs": count,
            "completed": completed,
            "drained": drained,
            "cap_s": cap,
            "elapsed_s": round(elapsed, 3),
            "jobs_per_s": round(completed / elapsed, 1),
            "per_job": per_job(final, final["executions"]),
            "warnings": final["warnings"],
            "checks": {
                "executions": final["executions"],
                "duplicate_executions": max(final["executions"] - count, 0),
                "rows_left": int(left or 0),
            },
        }
    finally:
        fleet.kill()
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
