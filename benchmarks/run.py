"""The jobsched benchmark suite: one command, every figure, side by side.

    python benchmarks/run.py [--quick] [--json out.json]

Measures, in one run on this machine (see docs/benchmarks.md for the method):

1. throughput: a backlog of no-op one-off jobs drained by 1 and 4 jobsched
   processes, on PostgreSQL, MariaDB/MySQL and SQLite, with duplicate checks;
2. baseline 1: the same backlog drained by APScheduler 3 (SQLAlchemyJobStore);
3. baseline 2: the raw-SQL ceiling on PostgreSQL (pgbench, SKIP LOCKED batches);
4. start lateness of jobs due every second, with 1 and 4 idle processes;
5. idle cost: statements per second from 4 idle processes;
6. poll cost: the poll query and a claim batch at 10k, 100k and 1M rows;

then prints the machine, a table and the ratios against the design targets,
and writes everything as JSON (default ``benchmarks/results/latest.json``).
Databases come from ``JOBSCHED_BENCH_POSTGRESQL_URL`` and
``JOBSCHED_BENCH_MYSQL_URL`` (defaults: the local test servers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _env import HERE, cleanup, databases, machine_info
from _lateness import idle_cost, lateness
from _pollcost import poll_cost
from _report import full_markdown, full_text, mode_name, ratios, table_rows
from _throughput import drain_apscheduler, drain_jobsched
from ceiling import measure as sql_ceiling

SECTIONS = ["throughput", "apscheduler", "ceiling", "lateness", "idle", "poll"]


@dataclass(frozen=True)
class Plan:
    """How big and how long each measurement is."""

    jobs: int  # backlog drained per throughput run
    drain_cap: float  # seconds a drain may take before it is cut short
    both_modes_on: tuple[str, ...]  # databases where start() and run_pending race
    ceiling_seconds: float
    ceiling_rows: int
    lateness_window: float
    idle_window: float
    poll_sizes: tuple[int, ...]
    max_workers: int = 8  # start(): worker threads per process
    batch: int = 500  # run_pending(): most jobs claimed per batch (the default)
    tick_jobs: int = 20

    @classmethod
    def full(cls) -> Plan:
        return cls(
            jobs=20_000,
            drain_cap=25.0,
            both_modes_on=("postgresql", "mysql", "sqlite"),
            ceiling_seconds=15,
            ceiling_rows=600_000,
            lateness_window=15.0,
            idle_window=15.0,
            poll_sizes=(10_000, 100_000, 1_000_000),
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            jobs=5_000,
            drain_cap=5.0,
            both_modes_on=("postgresql",),
            ceiling_seconds=5,
            ceiling_rows=200_000,
            lateness_window=5.0,
            idle_window=5.0,
            poll_sizes=(10_000, 100_000),
        )


class Suite:
    """Runs the sections, collects their results, survives a failing one."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = Plan.quick() if args.quick else Plan.full()
        self.dbs = databases(args.databases)
        self.by_name = {db.name: db for db in self.dbs}
        self.results: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.log = Path(args.json).with_suffix(".workers.log")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")

    def step(self, key: str, what: str, work: Callable[[], Any]) -> Any:
        print(f"  {what} ...", end="", flush=True)
        started = time.monotonic()
        try:
            result = work()
        except Exception as error:
            print(f" FAILED after {time.monotonic() - started:.0f} s: {error}")
            self.errors[key] = "".join(traceback.format_exception(error))[-3000:]
            return None
        print(f" {time.monotonic() - started:.0f} s")
        return result

    # -- sections ----------------------------------------------------------------

    def throughput(self) -> None:
        plan, runs = self.plan, []
        fastest_mode: dict[str, str] = {}
        for db in self.dbs:
            modes = ["pending", "start"]
            if db.name not in plan.both_modes_on:
                modes = [fastest_mode.get("postgresql", "pending")]
            one = []
            for mode in modes:
                result = self.step(
                    f"throughput/{db.name}/1/{mode}",
                    f"jobsched {db.label}, 1 process, {mode_name(mode)}",
                    lambda db=db, mode=mode: drain_jobsched(
                        db,
                        plan.jobs,
                        1,
                        mode,
                        plan.drain_cap,
                        self.log,
                        plan.max_workers,
                        plan.batch,
                    ),
                )
                if result:
                    _say(result)
                    one.append(result)
            if not one:
                continue
            best = max(one, key=lambda r: r["jobs_per_s"])
            fastest_mode[db.name] = best["mode"]
            result = self.step(
                f"throughput/{db.name}/4/{best['mode']}",
                f"jobsched {db.label}, 4 processes, {mode_name(best['mode'])}",
                lambda db=db, mode=best["mode"]: drain_jobsched(
                    db,
                    plan.jobs,
                    4,
                    mode,
                    plan.drain_cap,
                    self.log,
                    plan.max_workers,
                    plan.batch,
                ),
            )
            if result:
                _say(result)
            runs.extend([*one, *([result] if result else [])])
        self.results["throughput"] = runs

    def apscheduler(self) -> None:
        runs = []
        for db in self.dbs:
            result = self.step(
                f"apscheduler/{db.name}",
                f"APScheduler 3 {db.label}, 1 process",
                lambda db=db: drain_apscheduler(
                    db,
                    self.plan.jobs,
                    self.plan.drain_cap,
                    self.log,
                    self.plan.max_workers,
                ),
            )
            if result:
                _say(result)
                runs.append(result)
        self.results["apscheduler"] = runs

    def ceiling(self) -> None:
        db = self.by_name.get("postgresql")
        if db is None:
            return
        result = self.step(
            "ceiling",
            "raw-SQL ceiling on PostgreSQL (pgbench, 4 clients, batches of 20)",
            lambda: sql_ceiling(
                db.url, 4, 20, self.plan.ceiling_seconds, self.plan.ceiling_rows
            ),
        )
        if result:
            print(f"    {result['jobs_per_s']:.0f} jobs/s")
        self.results["ceiling"] = result

    def lateness(self) -> None:
        db = self.by_name.get("postgresql")
        if db is None:
            return
        runs = []
        for processes in (1, 4):
            result = self.step(
                f"lateness/{processes}",
                f"lateness, {self.plan.tick_jobs} jobs every 1 s, {processes} "
                "idle process(es), PostgreSQL",
                # A worker free for every due job: the process is idle and
                # waiting, as the target describes, not working off a queue.
                lambda p=processes: lateness(
                    db,
                    p,
                    self.plan.tick_jobs,
                    1.0,
                    self.plan.lateness_window,
                    self.log,
                    max_workers=self.plan.tick_jobs,
                ),
            )
            if result:
                rec, obs = result["recorded"], result["observed"]
                print(
                    f"    recorded p50 {rec['p50_ms']} / p99 {rec['p99_ms']} / max "
                    f"{rec['max_ms']} ms; observed p99 {obs['p99_ms']} ms "
                    f"({rec['count']} runs)"
                )
                runs.append(result)
        self.results["lateness"] = runs

    def idle(self) -> None:
        db = self.by_name.get("postgresql")
        if db is None:
            return
        result = self.step(
            "idle",
            "idle cost, 4 processes, 1,000 jobs not yet due, PostgreSQL",
            lambda: idle_cost(db, 4, 1000, self.plan.idle_window, self.log),
        )
        if result:
            print(
                f"    {result['statements_per_s']} statements/s "
                f"({result['statements_per_s_per_process']} per process)"
            )
        self.results["idle"] = result

    def poll(self) -> None:
        db = self.by_name.get("postgresql")
        if db is None:
            return
        result = self.step(
            "poll",
            "poll cost at "
            + ", ".join(f"{s:,}" for s in self.plan.poll_sizes)
            + " rows, PostgreSQL",
            lambda: poll_cost(db, list(self.plan.poll_sizes), 10),
        )
        if result:
            for size in result["sizes"]:
                print(
                    f"    {size['rows']:>9,} rows: poll {size['poll_ms_median']} ms, "
                    f"claim of {size['claimed_per_batch']:.0f} "
                    f"{size['claim_ms_median']} ms"
                )
        self.results["poll"] = result

    def run(self) -> None:
        for section in SECTIONS:
            if section in self.args.only:
                print(f"[{section}]", flush=True)
                getattr(self, section)()


def _say(result: dict[str, Any]) -> None:
    drained = (
        "all"
        if result["drained"]
        else f"{result['completed']:,} of {result['jobs']:,} (time cap)"
    )
    print(
        f"    {result['jobs_per_s']:.0f} jobs/s, drained {drained} in "
        f"{result['elapsed_s']:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Run the jobsched benchmark suite.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller and shorter (about 2 minutes)"
    )
    parser.add_argument(
        "--json",
        default=str(HERE / "results" / "latest.json"),
        help="where to write the results (%(default)s)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated sections (%(default)s)",
    )
    parser.add_argument(
        "--databases",
        default="postgresql,mysql,sqlite",
        help="comma-separated (%(default)s)",
    )
    args = parser.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.databases = [s.strip() for s in args.databases.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    started = time.monotonic()
    suite = Suite(args)
    machine = machine_info(suite.dbs)
    print(
        f"jobsched benchmarks ({'quick' if args.quick else 'full'}) on "
        f"{machine['cpu']}, {machine['cores']} cores"
    )
    try:
        suite.run()
    finally:
        cleanup()
    report = {
        "mode": "quick" if args.quick else "full",
        "plan": suite.plan.__dict__,
        "machine": machine,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "duration_s": round(time.monotonic() - started, 1),
        "results": suite.results,
        "ratios": ratios(suite.results),
        "table": table_rows(suite.results),
        "errors": suite.errors,
    }
    print("\n" + full_text(report))
    out = Path(args.json)
    out.write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(full_markdown(report) + "\n")
    print(
        f"\n{report['duration_s']:.0f} s; results in {out} and "
        f"{out.with_suffix('.md')}; worker logs in {suite.log}"
    )
    sys.exit(1 if suite.errors else 0)


if __name__ == "__main__":
    main()
