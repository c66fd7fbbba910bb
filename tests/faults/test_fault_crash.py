"""A process dies while it owns a run: the run is recovered, never stuck.

Cases B17 (SIGKILL mid-run) and B18.1 (death right after the claim, before the
job's body starts).
"""

from __future__ import annotations

import signal
import time
from datetime import datetime, timezone

import pytest

from conftest import LEASE, assert_no_overlap, owner_pid, wait_until

pytestmark = pytest.mark.slow

# A first execution that "never" ends on its own: only a kill ends it.
FOREVER = 60.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def test_owner_killed_mid_run_is_recovered_as_abandoned(fleet, db):
    """Owner killed with SIGKILL mid-run is recovered as abandoned (case B17).

    Process A runs three jobs whose first execution hangs; B polls the same
    table and must leave A's live leases alone. A gets SIGKILL: within two
    lease periods B records each run as ``abandoned`` with the reason, then
    the recurring job moves on to its next fire time, the job with retries
    runs its second attempt, and the one-off job without retries ends
    ``failed``. Nothing stays ``running``; no fire time runs twice.
    """
    db.create()
    now = _now()
    jobs = [
        fleet.job("recurring", {"every": 1.0}, seconds=0.05, first_seconds=FOREVER),
        fleet.job(
            "retried",
            {"at": now},
            seconds=0.05,
            first_seconds=FOREVER,
            max_attempts=2,
            retry_wait_fixed=0.2,
        ),
        fleet.job("one_off", {"at": now}, seconds=0.05, first_seconds=FOREVER),
    ]
    a = fleet.spawn("a", jobs)
    b = fleet.spawn("b", jobs, wait_for_go=True)

    wait_until(
        lambda: len(fleet.executions()) == 3,
        15,
        "A to start all three jobs",
        explain=fleet.explain,
    )
    running = [r for r in db.runs() if r["outcome"] == "running"]
    assert len(running) == 3
    assert {owner_pid(r["owner"]) for r in running} == {a.pid}

    b.go()
    wait_until(b.started, 10, "B to start", explain=fleet.explain)
    time.sleep(1.5 * LEASE)  # B polls for longer than a lease: A renews
    assert [r["outcome"] for r in db.runs()] == ["running"] * 3, (
        "B took over runs whose owner is alive and renewing"
    )

    killed_at = a.kill()
    wait_until(
        lambda: (
            db.status("retried") == "done"
            and db.status("one_off") == "failed"
            and any(r["outcome"] == "succeeded" for r in db.runs("recurring"))
        ),
        2 * LEASE + 8,
        "B to recover and move every job on",
        explain=fleet.explain,
    )
    b.send(signal.SIGTERM)
    assert b.wait(15) == 0

    a_owner = a.owner()
    for job in ("recurring", "retried", "one_off"):
        abandoned = [r for r in db.runs(job) if r["outcome"] == "abandoned"]
        assert len(abandoned) == 1, f"{job}: {db.runs(job)}"
        run = abandoned[0]
        assert run["owner"] == a_owner
        assert run["attempt"] == 1
        assert "expired" in (run["error_message"] or ""), run
        assert a_owner in (run["error_message"] or ""), run
        recovered_after = run["finished_at"].timestamp() - killed_at
        assert recovered_after <= 2 * LEASE + 0.5, (
            f"{job}: recovered {recovered_after:.2f} s after the kill"
        )
        db.assert_once_per_fire_time(job)
        executions = fleet.executions(job)
        for execution in executions:
            if execution["pid"] == a.pid:
                execution["died"] = killed_at
        assert_no_overlap(executions, job)
        # Every started run is exactly one execution of the body, and back.
        assert len(executions) == len(db.started_runs(job)), (
            f"{job}: executions {executions} vs runs {db.started_runs(job)}"
        )

    recurring = db.started_runs("recurring")
    assert [r["outcome"] for r in recurring][1:] == ["succeeded"] * (len(recurring) - 1)
    assert all(owner_pid(r["owner"]) == b.pid for r in recurring[1:])
    assert db.status("recurring") == "scheduled"

    retried = db.started_runs("retried")
    assert [(r["attempt"], r["outcome"]) for r in retried] == [
        (1, "abandoned"),
        (2, "succeeded"),
    ]
    assert owner_pid(retried[1]["owner"]) == b.pid
    assert retried[0]["scheduled_for"] == retried[1]["scheduled_for"]

    assert [r["outcome"] for r in db.started_runs("one_off")] == ["abandoned"]
    one_off = db.job("one_off")
    assert one_off["next_run_at"] is None
    assert "abandoned" in (one_off["error"] or "")
    db.assert_nothing_running()


def test_owner_dead_between_claim_and_body_is_recovered(fleet, db):
    """Death right after the claim, before the body starts, is recovered (case B18.1).

    Process A ends with ``os._exit`` as soon as its claim has committed. The
    survivor B recovers the claimed attempt as ``abandoned`` within two lease
    periods (never "silently done" without an attempt record) and runs the
    retry: the body runs exactly once in all.
    """
    db.create()
    job = fleet.job(
        "claimed",
        {"at": _now()},
        seconds=0.05,
        max_attempts=2,
        retry_wait_fixed=0.2,
    )
    a = fleet.spawn("a", [job], patches=["exit_after_claim"])
    b = fleet.spawn("b", [job], wait_for_go=True)

    assert a.wait(20) == 17, fleet.explain()  # died on its first claim
    died_at = a.died_at
    assert "EXIT_AFTER_CLAIM" in a.log()
    [claimed] = db.runs("claimed")
    assert claimed["outcome"] == "running"
    assert claimed["owner"] == a.owner()
    assert fleet.executions("claimed") == []

    b.go()
    wait_until(
        lambda: db.status("claimed") == "done",
        2 * LEASE + 8,
        "B to recover the claim and run the retry",
        explain=fleet.explain,
    )
    b.send(signal.SIGTERM)
    assert b.wait(15) == 0

    runs = db.started_runs("claimed")
    assert [(r["attempt"], r["outcome"]) for r in runs] == [
        (1, "abandoned"),
        (2, "succeeded"),
    ]
    assert runs[0]["owner"] == a.owner()
    assert "expired" in runs[0]["error_message"]
    assert owner_pid(runs[1]["owner"]) == b.pid
    assert runs[0]["finished_at"].timestamp() - died_at <= 2 * LEASE + 1.0
    executions = fleet.executions("claimed")
    assert [e["pid"] for e in executions] == [b.pid]
    db.assert_nothing_running()
