"""Where a draining jobsched process spends its time (py-spy), and what it sends.

Seeds a backlog of no-op jobs, starts one worker process as ``run.py`` does,
records it with ``py-spy record --idle`` while it drains, and prints, for each
thread that runs jobsched code: the share of its wall time spent running Python,
waiting for the database and idle; the libraries and functions the Python time
went to; and which jobsched operations the database waits belong to. Also
prints what the process sent per job (statements, DBAPI calls, commits, CPU).

    pip install py-spy
    python benchmarks/profile_drain.py [--database postgresql]
        [--mode pending|start] [--jobs 20000] [--seconds 15] [--rate 200]
        [--raw out.txt]

py-spy needs permission to read another process's memory (root, or
``CAP_SYS_PTRACE``, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from _env import (
    cleanup,
    databases,
    drop_tables,
    fresh_tables,
    make_engine,
    new_prefix,
    seed,
)
from _procs import Fleet, merge
from _throughput import per_job

Stacks = list[tuple[list[str], int]]

LIBRARIES = (
    "jobsched",
    "sqlalchemy",
    "psycopg",
    "pymysql",
    "tenacity",
    "sqlite3",
    "logging",
    "concurrent",
    "threading",
    "json",
    "uuid",
)
# A sample is "waiting for the database" when the innermost Python frame is the
# driver blocked on its socket, and "idle" when it is a thread parked on a lock,
# an event or a timer; every other sample is Python running (or runnable: on a
# busy machine a thread also waits here for a core).
DATABASE_WAIT = (
    "Connection.wait (psycopg/connection.py",
    "SocketIO.readinto (socket.py",
    "Connection._read_bytes (pymysql",
)
IDLE = (
    "Condition.wait (",
    "Event.wait (",
    "LeaseKeeper._loop (",
    "Worker.main (",
    "_worker (concurrent/futures",
)
OPERATIONS = ("Store.", "Scheduler.", "Poller.", "RunningMixin.")


def record(pid: int, seconds: float, rate: int, out: Path) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid``, keeping the samples of blocked threads too."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            spy,
            "record",
            f"--pid={pid}",
            f"--duration={round(seconds)}",
            f"--rate={rate}",
            "--format=raw",
            "--nonblocking",
            "--threads",
            "--idle",
            f"--output={out}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def library(frame: str) -> str:
    location = frame.rsplit("(", 1)[-1]
    for name in LIBRARIES:
        if f"{name}/" in location or location.startswith(f"{name}."):
            return name
    return "python/other"


def load(raw: Path) -> dict[str, Stacks]:
    """Read py-spy's raw output: stacks (outermost first) per thread name."""
    threads: dict[str, Stacks] = defaultdict(list)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # a frame name with a line break in it
            continue
        head, *frames = stack.split(";")
        name = head.split(": ", 1)[-1]
        name = name.rstrip("_0123456789") if "jobsched-worker" in name else name
        threads[name].append((frames, int(count)))
    return threads


def inclusive(stacks: Stacks) -> Counter[str]:
    found: Counter[str] = Counter()
    for frames, count in stacks:
        for frame in dict.fromkeys(f.split(" (")[0] for f in frames):
            found[frame] += count
    return found


def classify(frames: list[str]) -> str:
    leaf = frames[-1] if frames else ""
    if leaf.startswith(DATABASE_WAIT):
        return "database"
    if leaf.startswith(IDLE):
        return "idle"
    return "python"


def _python_lines(running: Stacks, top: int) -> list[str]:
    count = sum(n for _, n in running)
    by_library: Counter[str] = Counter()
    for frames, n in running:
        by_library[library(frames[-1]) if frames else "?"] += n
    lines = [
        "   Python time by library (innermost frame): "
        + ", ".join(f"{lib} {n / count:.0%}" for lib, n in by_library.most_common(7)),
        "   Python time, inclusive, by function:",
    ]
    lines += [
        f"   {n / count:6.1%}  {frame}"
        for frame, n in inclusive(running).most_common(top)
    ]
    return lines


def summarize(raw: Path, top: int = 24) -> str:
    """Per thread that runs jobsched code: where its wall time goes."""
    out = []
    for name, stacks in sorted(load(raw).items()):
        if not any("jobsched/" in f for frames, _ in stacks for f in frames):
            continue
        groups: dict[str, Stacks] = defaultdict(list)
        for frames, count in stacks:
            groups[classify(frames)].append((frames, count))
        total = sum(n for _, n in stacks)
        share = {k: sum(n for _, n in v) / total for k, v in groups.items()}
        out.append(
            f"\n== thread {name}: {share.get('python', 0):.0%} running Python, "
            f"{share.get('database', 0):.0%} waiting for the database, "
            f"{share.get('idle', 0):.0%} idle"
        )
        if groups.get("python"):
            out += _python_lines(groups["python"], top)
        waiting = groups.get("database", [])
        if waiting:
            count = sum(n for _, n in waiting)
            out.append("   database waits, by the jobsched function that waited:")
            out += [
                f"   {n / count:6.1%}  {frame}"
                for frame, n in inclusive(waiting).most_common()
                if frame.startswith(OPERATIONS)
            ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="postgresql")
    parser.add_argument("--mode", choices=["pending", "start"], default="pending")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--raw", help="keep py-spy's raw samples in this file")
    args = parser.parse_args()

    db = databases([args.database])[0]
    engine = make_engine(db.url, 2)
    prefix = new_prefix("profile")
    raw = Path(args.raw or tempfile.mktemp(suffix=".txt", prefix="jsbench-spy-"))
    fleet = None
    try:
        fresh_tables(engine, prefix)
        seed(engine, prefix, args.jobs)
        argv = [
            "jobsched",
            f"--url={db.url}",
            f"--prefix={prefix}",
            f"--mode={args.mode}",
            f"--max-workers={args.max_workers}",
            f"--batch={args.batch}",
            f"--deadline={args.seconds + 120}",
        ]
        fleet = Fleet([argv], raw.with_suffix(".log"))
        fleet.ready()
        spy = record(fleet.workers[0].proc.pid, args.seconds, args.rate, raw)
        time.sleep(0.5)
        fleet.go()
        _, errors = spy.communicate(timeout=args.seconds + 60)
        total = merge(fleet.stop())
        fleet = None
    finally:
        if fleet is not None:
            fleet.kill()
        drop_tables(engine, prefix)
        engine.dispose()
        cleanup()

    if not raw.exists():
        sys.exit(f"py-spy recorded nothing: {errors.decode().strip()}")
    print(
        f"{db.label}, {args.mode}, {total['executions']} jobs run in "
        f"~{args.seconds:.0f} s ({total['executions'] / args.seconds:.0f} jobs/s)"
    )
    print(f"per job: {per_job(total, total['executions'])}")
    print(summarize(raw))
    print(f"\nraw samples: {raw}")


if __name__ == "__main__":
    main()
