"""Recovery time: from a process killed mid-run to its job running again.

    python benchmarks/recovery.py [--url URL] [--lease SECONDS] [--poll SECONDS]

Two real processes share one database. The victim claims a one-off job (with
``max_attempts=2``) whose first attempt never returns; the survivor idles. The
victim is killed with SIGKILL. The figure is the time from the kill to the
start of the job's second attempt in the survivor, read from the run history
(database clock), printed with its ratio to the lease (design target: within
two lease periods).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

from sqlalchemy import create_engine, select

from jobsched import Scheduler, current_run

DEFAULT_URL = os.environ.get(
    "JOBSCHED_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1/test"
)


def hold() -> None:
    """First attempt: never return (until killed). Later attempts: return."""
    run = current_run()
    if run is not None and run.attempt == 1:
        time.sleep(3600)


def child(url: str, prefix: str, lease: float, poll: float) -> None:
    scheduler = Scheduler(
        create_engine(url), table_prefix=prefix, lease=lease, poll_interval=poll
    )
    scheduler.register(hold, name="hold", max_attempts=2, retry_wait=None)
    scheduler.start()
    print("ready", flush=True)
    while True:
        time.sleep(1)


def spawn(url: str, prefix: str, lease: float, poll: float) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--child", "--url", url, "--prefix", prefix]
    argv += ["--lease", str(lease), "--poll", str(poll)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("a child process did not start")
    return proc


def measure(url: str, lease: float, poll: float) -> dict[str, float]:
    """Run one recovery and return its figures."""
    prefix = f"rec_{uuid.uuid4().hex[:6]}_"
    engine = create_engine(url)
    scheduler = Scheduler(engine, table_prefix=prefix)
    scheduler.register(hold, name="hold", max_attempts=2)
    scheduler._ensure_ready()
    runs = scheduler.tables.runs

    victim = spawn(url, prefix, lease, poll)
    procs = [victim]
    try:
        scheduler.enqueue("hold", name="hold-once")
        deadline = time.monotonic() + 30
        while scheduler.get_job("hold-once").owner is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the victim never claimed the job")
            time.sleep(0.05)

        procs.append(spawn(url, prefix, lease, poll))  # the survivor, idle
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = scheduler.store.server_time()

        deadline = time.monotonic() + 3 * lease + 30
        query = select(runs.c.started_at).where(runs.c.attempt == 2)
        while True:
            with engine.connect() as conn:
                started = conn.execute(query).scalar()
            if started is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the job was not recovered")
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        scheduler.tables.metadata.drop_all(engine)
        engine.dispose()

    seconds = (started - killed_at) / timedelta(seconds=1)
    return {"recovery_s": seconds, "lease_s": lease, "ratio_to_lease": seconds / lease}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--prefix")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.url, args.prefix, args.lease, args.poll)
        return

    result = measure(args.url, args.lease, args.poll)
    verdict = "met" if result["ratio_to_lease"] <= 2 else "NOT MET"
    print(
        f"recovery {result['recovery_s']:.2f} s with a {args.lease:g} s lease "
        f"= {result['ratio_to_lease']:.2f} lease periods (target <= 2: {verdict})"
    )


if __name__ == "__main__":
    main()
