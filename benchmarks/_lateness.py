"""Start lateness of recurring jobs, and the cost of processes that wait."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text

import jobsched

from _env import Database, drop_tables, fresh_tables, make_engine, new_prefix, seed
from _procs import Fleet, merge

# Fire times this close to the start are left out: processes are still syncing.
WARMUP = 3.0


def percentiles(values: list[float]) -> dict[str, Any]:
    """Return count, p50, p99 and max of ``values`` (milliseconds)."""
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "count": len(ordered),
        "p50_ms": round(rank(0.50), 2),
        "p99_ms": round(rank(0.99), 2),
        "max_ms": round(ordered[-1], 2),
    }


def lateness(
    db: Database,
    processes: int,
    jobs: int,
    every: float,
    window: float,
    log: Path,
    max_workers: int = 4,
) -> dict[str, Any]:
    """Run ``jobs`` jobs due every ``every`` s on idle processes; measure lateness.

    Two figures per run: *recorded* is the run row's ``started_at`` minus its
    ``scheduled_for`` (both written by jobsched, from the database clock); and
    *observed* is the wall-clock moment the job's function was entered minus
    that fire time, which also counts the claim's own round trips.
    """
    engine = make_engine(db.url, 2)
    prefix = new_prefix("late")
    argv = [
        "jobsched",
        f"--url={db.url}",
        f"--prefix={prefix}",
        "--mode=start",
        f"--max-workers={max_workers}",
        f"--recurring={jobs}",
        f"--every={every}",
        f"--deadline={window + WARMUP + 120}",
    ]
    fleet = None
    try:
        fresh_tables(engine, prefix)
        fleet = Fleet([argv] * processes, log)
        fleet.ready()
        fleet.go()
        begin = datetime.now(timezone.utc) + timedelta(seconds=WARMUP)
        time.sleep(WARMUP + window)
        end = datetime.now(timezone.utc) - timedelta(seconds=1)
        finals = fleet.stop()
        fleet = None
        return {
            "database": db.name,
            "processes": processes,
            "jobs": jobs,
            "every_s": every,
            "window_s": window,
            **_measure(engine, prefix, finals, begin, end),
        }
    finally:
        if fleet is not None:
            fleet.kill()
        drop_tables(engine, prefix)
        engine.dispose()


def _measure(
    engine: Engine,
    prefix: str,
    finals: list[dict[str, Any]],
    begin: datetime,
    end: datetime,
) -> dict[str, Any]:
    runs = jobsched.define_tables(prefix).runs
    query = select(
        runs.c.job_name, runs.c.scheduled_for, runs.c.started_at, runs.c.outcome
    ).where(runs.c.job_name.like("tick-%"))
    with engine.connect() as conn:
        rows = conn.execute(query).all()

    recorded, fires = [], defaultdict(list)
    outcomes: dict[str, int] = defaultdict(int)
    for name, scheduled, started, outcome in rows:
        fires[name].append(scheduled.timestamp())
        if not begin <= scheduled <= end:
            continue
        outcomes[outcome] += 1
        if started is not None:
            recorded.append((started - scheduled).total_seconds() * 1000)

    observed = []
    for times in fires.values():
        times.sort()
    for final in finals:
        for name, called in final.get("ticks", []):
            times = fires.get(name, [])
            index = bisect.bisect_right(times, called) - 1
            if index < 0 or not begin.timestamp() <= times[index] <= end.timestamp():
                continue
            observed.append((called - times[index]) * 1000)

    total = merge(finals)
    return {
        "recorded": percentiles(recorded),
        "observed": percentiles(observed),
        "outcomes": dict(outcomes),
        "warnings": total["warnings"],
    }


def idle_cost(
    db: Database, processes: int, waiting_jobs: int, window: float, log: Path
) -> dict[str, Any]:
    """Count what idle processes send to the database while nothing is due."""
    engine = make_engine(db.url, 2)
    prefix = new_prefix("idle")
    argv = [
        "jobsched",
        f"--url={db.url}",
        f"--prefix={prefix}",
        "--mode=start",
        "--max-workers=4",
        f"--deadline={window + WARMUP + 120}",
    ]
    fleet = None
    try:
        fresh_tables(engine, prefix)
        seed(
            engine,
            prefix,
            waiting_jobs,
            at=datetime.now(timezone.utc) + timedelta(hours=1),
        )
        fleet = Fleet([argv] * processes, log)
        fleet.ready()
        fleet.go()
        time.sleep(WARMUP)
        before, server_before = merge(fleet.stats()), _server_counters(engine, prefix)
        started = time.monotonic()
        time.sleep(window)
        after, server_after = merge(fleet.stats()), _server_counters(engine, prefix)
        seconds = time.monotonic() - started
        fleet.stop()
        fleet = None

        def rate(key: str, a: dict[str, Any], b: dict[str, Any]) -> float:
            return round((b.get(key, 0) - a.get(key, 0)) / seconds, 2)

        kinds = {
            kind: round((count - before["by_kind"].get(kind, 0)) / seconds, 2)
            for kind, count in sorted(after["by_kind"].items())
        }
        return {
            "database": db.name,
            "processes": processes,
            "waiting_jobs": waiting_jobs,
            "window_s": round(seconds, 1),
            "statements_per_s": rate("statements", before, after),
            "statements_per_s_per_process": round(
                rate("statements", before, after) / processes, 2
            ),
            "commits_per_s": rate("commits", before, after),
            "by_kind_per_s": kinds,
            "cpu_ms_per_s": round(1000 * rate("cpu_s", before, after), 2),
            "server": {
                key: rate(key, server_before, server_after) for key in server_after
            },
            "warnings": after["warnings"],
        }
    finally:
        if fleet is not None:
            fleet.kill()
        drop_tables(engine, prefix)
        engine.dispose()


def _server_counters(engine: Engine, prefix: str) -> dict[str, float]:
    """PostgreSQL's own counts: transactions (whole database) and jobs-table scans."""
    if engine.dialect.name != "postgresql":
        return {}
    with engine.connect() as conn:
        database = conn.execute(
            text(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
        ).scalar()
        scans = conn.execute(
            text(
                "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) "
                "FROM pg_stat_user_tables WHERE relname = :name"
            ),
            {"name": f"{prefix}jobs"},
        ).scalar()
    return {
        "database_transactions_per_s": float(database or 0),
        "jobs_table_scans_per_s": float(scans or 0),
    }
