"""Schedulers in pre-forked workers that inherit the master's engine.

Case B10: every web worker starts its own scheduler, on an engine (and even a
scheduler) created before ``os.fork()``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from conftest import HERE, LEASE, POLL

pytestmark = pytest.mark.slow

RUN_FOR = 4.0
# What a connection shared by several processes looks like in the drivers' errors.
SHARED_SOCKET_SIGNS = (
    "ssl",
    "decryption",
    "bad message",
    "lost synchronization",
    "packet sequence",
    "server closed the connection",
    "lost connection",
    "command out of sync",
    "unexpected",
)


def test_forked_workers_with_the_masters_engine_run_each_fire_time_once(
    db_url, prefix, db, tmp_path
):
    """Four forked workers with the master's engine run each fire time once (case B10).

    The master creates the engine, uses it, creates a scheduler and registers a
    job every second, then forks four workers (``gunicorn --preload``); two
    start the inherited scheduler, two build ``Scheduler(engine)`` on the
    inherited engine. No worker ever checks out a pooled connection that the
    master opened (its socket is shared with the master and the other
    workers), no worker logs a warning or an error (such as the SSL or
    protocol errors of a shared socket), every fire time runs exactly once,
    and every worker's thread is alive until it stops.
    """
    results = str(tmp_path / "results.jsonl")
    config = {
        "url": db_url,
        "prefix": prefix,
        "app_name": f"jobsched-fork-{prefix}",
        "lease": LEASE,
        "poll": POLL,
        "results": results,
        "log_dir": str(tmp_path),
        "run_for": RUN_FOR,
        "every": 1.0,
        "checkouts": str(tmp_path / "checkouts.jsonl"),
    }
    path = tmp_path / "fork.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    master = subprocess.run(
        [sys.executable, str(HERE / "fork_app.py"), str(path)],
        cwd=str(HERE),
        capture_output=True,
        timeout=60,
        check=False,
    )
    logs = {i: (tmp_path / f"worker{i}.log").read_text() for i in range(4)}
    everything = "\n".join(f"--- worker{i}\n{text}" for i, text in logs.items())
    assert master.returncode == 0, (
        f"{master.stdout.decode()}\n{master.stderr.decode()}\n{everything}"
    )

    # No worker ever checks out a connection that the master opened.
    checkouts = tmp_path / "checkouts.jsonl"
    inherited = checkouts.read_text().splitlines() if checkouts.exists() else []
    assert inherited == [], (
        f"workers used connections inherited from the master: {inherited}"
    )

    problems = [
        line
        for text in logs.values()
        for line in text.splitlines()
        if " WARNING " in line
        or " ERROR " in line
        or " CRITICAL " in line
        or "failed" in line.lower()
    ]
    assert problems == [], "\n".join(problems)
    shared = [
        line
        for line in everything.lower().splitlines()
        if any(sign in line for sign in SHARED_SOCKET_SIGNS)
    ]
    assert shared == [], "\n".join(shared)

    runs = db.started_runs("tick")
    assert len(runs) >= RUN_FOR - 2, runs
    per_fire_time = Counter(r["scheduled_for"] for r in runs)
    assert set(per_fire_time.values()) == {1}, per_fire_time
    assert {(r["attempt"], r["outcome"]) for r in runs} == {(1, "succeeded")}
    assert [r for r in db.runs("tick") if r["outcome"] == "missed"] == []
    with open(results, encoding="utf-8") as handle:
        starts = [json.loads(line) for line in handle if '"start"' in line]
    assert len(starts) == len(runs)
    owners = {r["owner"] for r in runs}
    assert len(owners) >= 1
    assert (
        len(
            {
                line.split(" OWNER ")[1]
                for text in logs.values()
                for line in text.splitlines()
                if " OWNER " in line
            }
        )
        == 4
    )
    db.assert_nothing_running()
