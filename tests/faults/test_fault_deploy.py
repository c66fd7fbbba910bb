"""Rolling deploys: processes with different sets of jobs share one table.

Case B30 (rows for functions that only another process knows), and an edited
schedule deployed while the old version runs the job.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import insert

from conftest import LEASE, owner_pid, wait_until

pytestmark = pytest.mark.slow


def _runs_by(db, job, status="succeeded"):
    return [r for r in db.started_runs(job) if r["outcome"] == status]


def test_jobs_only_another_version_knows_are_left_to_it(fleet, db, tmp_path):
    """Rows of jobs a process lacks are never claimed, recovered or deleted (case B30).

    v1 registers ``send_report`` and ``cleanup``; v2 only ``cleanup``. A row
    for ``cleanup`` with undecodable arguments sits in the table too.

    1. Both run: ``send_report`` runs only in v1; ``cleanup`` runs; the bad row
       is marked ``broken`` and nothing else is affected.
    2. v1 is killed while it runs ``send_report``: v2 keeps running
       ``cleanup``; it may record the dead run as abandoned, but it never
       claims, runs or deletes ``send_report``.
    3. A new v1 starts and runs ``send_report`` again (recovering the dead
       run first if v2 has not). No row was deleted; every fire time ran once.
    """
    db.create()
    now = datetime.now(timezone.utc)
    with db.engine.begin() as conn:
        conn.execute(
            insert(db.tables.jobs).values(
                name="cleanup-bad-args",
                function="cleanup",
                trigger=json.dumps({"kind": "once", "at": now.isoformat()}),
                args="{not json",
                options="{}",
                status="scheduled",
                paused=False,
                next_run_at=now,
                attempt=0,
                version=0,
                missed_count=0,
                created_at=now,
                updated_at=now,
            )
        )
    hold = str(tmp_path / "hold")
    report = fleet.job("send_report", {"every": 1.0}, seconds=0.05, hold_file=hold)
    cleanup = fleet.job("cleanup", {"every": 1.0}, seconds=0.05)
    v1 = fleet.spawn("v1", [report, cleanup])
    v2 = fleet.spawn("v2", [cleanup])
    v1b = fleet.spawn("v1b", [report, cleanup], wait_for_go=True)  # for step 3

    # 1. Both versions run.
    wait_until(
        lambda: (
            len(_runs_by(db, "send_report")) >= 1
            and len(_runs_by(db, "cleanup")) >= 2
            and v2.started()
        ),
        20,
        "both jobs to run",
        explain=fleet.explain,
    )
    bad = db.job("cleanup-bad-args")
    assert bad["status"] == "broken"
    assert "cannot run" in bad["error"]

    # 2. v1 dies in the middle of send_report; v2 carries on without it.
    open(hold, "w").close()
    wait_until(
        lambda: any(e["end"] is None for e in fleet.executions("send_report")),
        10,
        "v1 to be in the middle of send_report",
        explain=fleet.explain,
    )
    v1_owner = v1.owner()
    killed_at = v1.kill()
    time.sleep(2 * LEASE + 0.5)
    row = db.job("send_report")
    assert row is not None, "v2 deleted a job it does not know"
    # v2 may record the dead run as abandoned (any process may recover an
    # expired lease), but it never claims or runs send_report.
    assert row["status"] in ("running", "scheduled"), row
    assert all(owner_pid(r["owner"]) != v2.pid for r in db.runs("send_report"))
    assert all(e["pid"] != v2.pid for e in fleet.executions("send_report"))
    after_kill = [  # (with a margin for the database clock's skew)
        r
        for r in _runs_by(db, "cleanup")
        if r["started_at"].timestamp() > killed_at + 0.2
    ]
    assert after_kill and all(owner_pid(r["owner"]) == v2.pid for r in after_kill)

    # 3. v1 is back: it recovers its dead run and resumes the job.
    (tmp_path / "hold").unlink()
    v1b.go()
    wait_until(
        lambda: any(
            owner_pid(r["owner"]) == v1b.pid for r in _runs_by(db, "send_report")
        ),
        20,
        "the new v1 to run send_report",
        explain=fleet.explain,
    )
    for proc in (v1b, v2):
        proc.send(signal.SIGTERM)
    for proc in (v1b, v2):
        assert proc.wait(15) == 0

    runs = db.started_runs("send_report")
    abandoned = [r for r in runs if r["outcome"] == "abandoned"]
    assert [r["owner"] for r in abandoned] == [v1_owner]
    assert {owner_pid(r["owner"]) for r in runs} <= {v1.pid, v1b.pid}
    assert {j["name"] for j in db.jobs()} == {
        "send_report",
        "cleanup",
        "cleanup-bad-args",
    }
    assert db.status("cleanup-bad-args") == "broken"
    for job in ("send_report", "cleanup"):
        db.assert_once_per_fire_time(job)
    assert len(fleet.executions("send_report")) == len(runs)
    # A cleanup run that v1 had claimed but not yet started when it was killed
    # is recorded abandoned without an execution.
    cleanups = db.started_runs("cleanup")
    lost = [r for r in cleanups if r["outcome"] == "abandoned"]
    assert all(r["owner"] == v1_owner for r in lost)
    assert (
        len(cleanups) - len(lost) <= len(fleet.executions("cleanup")) <= len(cleanups)
    )
    db.assert_nothing_running()


def test_deploying_an_edited_schedule_keeps_the_running_run(fleet, db):
    """A new version with an edited schedule leaves the old one's run alone (case B30).

    v1 runs ``report`` (every second, two attempts; the first execution lasts
    three lease periods). While it runs, v2 starts with ``report`` edited to
    every two seconds. The stored schedule becomes v2's, but the run in
    progress stays v1's: its lease is still renewed, it is recorded
    ``succeeded`` by v1, and its fire time runs exactly once.
    """
    db.create()
    old = fleet.job(
        "report",
        {"every": 1.0},
        seconds=0.05,
        first_seconds=2.5 * LEASE,
        max_attempts=2,
        retry_wait_fixed=0.1,
    )
    new = {**old, "schedule": {"every": 2.0}}
    v1 = fleet.spawn("v1", [old])
    v2 = fleet.spawn("v2", [new], wait_for_go=True)
    wait_until(
        lambda: fleet.executions("report"),
        15,
        "v1 to start report",
        explain=fleet.explain,
    )
    first = db.started_runs("report")[0]
    v2.go()
    wait_until(
        lambda: json.loads(db.job("report")["trigger"]).get("every") == 2,
        10,
        "v2 to store its schedule",
        explain=fleet.explain,
    )
    wait_until(
        lambda: fleet.executions("report")[0]["end"] is not None,
        10,
        "v1's long run to end",
        explain=fleet.explain,
    )
    time.sleep(0.5)
    for proc in (v1, v2):
        proc.send(signal.SIGTERM)
    for proc in (v1, v2):
        assert proc.wait(15) == 0

    same_fire = [
        r
        for r in db.started_runs("report")
        if r["scheduled_for"] == first["scheduled_for"]
    ]
    assert [(r["attempt"], r["outcome"], owner_pid(r["owner"])) for r in same_fire] == [
        (1, "succeeded", v1.pid)
    ], fleet.explain()
    long_runs = [e for e in fleet.executions("report") if e["end"] - e["start"] > LEASE]
    assert len(long_runs) == 1
    assert not [ln for ln in v1.log_lines("WARNING") if "lost" in ln]
    db.assert_once_per_fire_time("report")
    db.assert_nothing_running()
