"""The raw-SQL ceiling: how fast plain SQL can claim and complete jobs here.

A table of due jobs shaped like a scheduler's (status, due time, owner, lease,
version) is filled inside PostgreSQL; then ``pgbench`` (a C client, no Python)
runs ``ceiling.sql`` from several connections at once for a fixed time: claim a
batch with ``FOR UPDATE SKIP LOCKED``, commit, mark it done, commit. The jobs
per second it reaches is the most any scheduler written against this database
could do on this machine; jobsched's multi-process throughput is compared with
it in the same run.

The rate is the number of rows actually marked done divided by the run time
(not pgbench's transactions times the batch size, which would overcount batches
that found fewer rows).

Usage (standalone)::

    python benchmarks/ceiling.py [--clients 4] [--batch 20] [--seconds 15]
        [--rows 600000] [--url postgresql+psycopg://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, text

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "ceiling.sql"
TABLE = "jsbench_ceiling"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/test"


def find_pgbench() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    if candidates:
        return str(candidates[-1])
    raise FileNotFoundError("pgbench is not installed (it comes with PostgreSQL)")


def create(engine: Engine, rows: int) -> None:
    """Create the ceiling's table with ``rows`` jobs, all due."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        conn.execute(
            text(
                f"""
                CREATE TABLE {TABLE} (
                    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    name text NOT NULL UNIQUE,
                    status text NOT NULL DEFAULT 'scheduled',
                    next_run_at timestamptz NOT NULL,
                    owner text,
                    lease_until timestamptz,
                    version integer NOT NULL DEFAULT 0,
                    last_run_at timestamptz
                )
                """
            )
        )
        conn.execute(
            text(
                f"INSERT INTO {TABLE} (name, next_run_at) "
                "SELECT 'job-' || n, now() - interval '1 minute' + n * interval '1 us' "
                "FROM generate_series(1, :rows) AS n"
            ),
            {"rows": rows},
        )
        conn.execute(
            text(
                f"CREATE INDEX {TABLE}_due ON {TABLE} (next_run_at) "
                "WHERE status = 'scheduled'"
            )
        )
        conn.execute(
            text(
                f"CREATE INDEX {TABLE}_held ON {TABLE} (owner) WHERE status = 'running'"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {TABLE}"))


def measure(
    url: str = DEFAULT_URL,
    clients: int = 4,
    batch: int = 20,
    seconds: float = 15,
    rows: int = 600_000,
) -> dict[str, Any]:
    """Run the ceiling and return jobs per second and pgbench's own figures."""
    pgbench = find_pgbench()
    target = make_url(url)
    engine = create_engine(url)
    env = dict(os.environ)
    if target.password:
        env["PGPASSWORD"] = str(target.password)
    argv = [
        pgbench,
        "--no-vacuum",
        f"--file={SCRIPT}",
        f"--client={clients}",
        f"--jobs={clients}",
        f"--time={max(1, round(seconds))}",
        f"--define=batch={batch}",
        f"--host={target.host or '127.0.0.1'}",
        f"--port={target.port or 5432}",
        f"--username={target.username or 'postgres'}",
        target.database or "postgres",
    ]
    try:
        create(engine, rows)
        finished = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=seconds + 120,
        )
        if finished.returncode != 0:
            raise RuntimeError(f"pgbench failed: {finished.stderr.strip()[-500:]}")
        output = finished.stdout
        with engine.connect() as conn:
            done = conn.execute(
                text(f"SELECT count(*) FROM {TABLE} WHERE status = 'done'")
            ).scalar_one()
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        engine.dispose()

    tps = _number(r"^tps = ([\d.]+)", output)
    latency = _number(r"^latency average = ([\d.]+) ms", output)
    duration = round(seconds)
    return {
        "clients": clients,
        "batch": batch,
        "seconds": duration,
        "rows": rows,
        "done": int(done),
        "jobs_per_s": round(done / duration, 1),
        "pgbench_tps": tps,
        "pgbench_jobs_per_s": round(tps * batch, 1) if tps else None,
        "latency_ms": latency,
        "ran_out": int(done) >= rows,
    }


def _number(pattern: str, output: str) -> float | None:
    found = re.search(pattern, output, re.MULTILINE)
    return float(found.group(1)) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rows", type=int, default=600_000)
    args = parser.parse_args()
    result = measure(args.url, args.clients, args.batch, args.seconds, args.rows)
    print(
        f"raw-SQL ceiling: {result['jobs_per_s']:.0f} jobs/s "
        f"({args.clients} clients, batches of {args.batch}, {result['seconds']} s, "
        f"{result['latency_ms']} ms per batch)"
    )
    if result["ran_out"]:
        print("warning: every row was done; rerun with more --rows", file=sys.stderr)


if __name__ == "__main__":
    main()
