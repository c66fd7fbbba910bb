"""Runs longer than a lease: renewal keeps them exactly once, also at shutdown.

Cases B13.1 and B13.2 (renewal, and the negative control without it) and B28
(graceful shutdown keeps renewing until the running job ends).
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import LEASE, assert_no_overlap, forget_leases, owner_pid, wait_until

pytestmark = pytest.mark.slow

# The long job lasts this many lease periods.
LONG = 3.5 * LEASE


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _long_job(fleet):
    # With two attempts, a run taken over by another process is run again: a
    # lease that is not renewed shows up as a second, concurrent execution.
    return fleet.job(
        "long", {"at": _now()}, seconds=LONG, max_attempts=2, retry_wait_fixed=0.1
    )


def _stop(*procs):
    for proc in procs:
        if proc.alive():
            proc.send(signal.SIGTERM)
    for proc in procs:
        proc.wait(15)


@pytest.mark.parametrize("renewal", ["renewed", "not_renewed"])
def test_lease_renewal_keeps_a_long_run_exactly_once(fleet, db, renewal):
    """Lease renewal keeps a run of 3.5 lease periods exactly once (case B13.1).

    Two processes poll one table; the job runs 3.5 times as long as the lease.
    With renewal the other process never takes it over: one execution, one
    ``succeeded`` run. The negative control (case B13.2) disables renewal in
    both processes (``LeaseKeeper._renew`` patched to do nothing): then the
    other process does recover the live run and runs it again concurrently,
    which proves that this test can see a duplicate.
    """
    db.create()
    job = _long_job(fleet)
    patches = [] if renewal == "renewed" else ["no_renew"]
    a = fleet.spawn("a", [job], patches=patches)
    b = fleet.spawn("b", [job], patches=patches)

    if renewal == "not_renewed":
        # Negative control: the duplicate that renewal prevents shows up about
        # one lease period into the run; no need to wait for the end.
        wait_until(
            lambda: len(fleet.executions("long")) >= 2,
            LONG + 10,
            "a duplicate execution without lease renewal",
            explain=fleet.explain,
        )
        executions = fleet.executions("long")
        assert executions[0]["end"] is None  # the first one is still running
        with pytest.raises(AssertionError, match="overlap"):
            assert_no_overlap(executions, "long")
        assert db.started_runs("long")[0]["outcome"] == "abandoned"
        return

    wait_until(
        lambda: db.status("long") in ("done", "failed"),
        LONG * 2 + 10,
        "the long job to end",
        explain=fleet.explain,
    )
    _stop(a, b)
    executions = fleet.executions("long")
    runs = db.started_runs("long")
    db.assert_nothing_running()
    assert len(executions) == 1, executions
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "succeeded")]
    assert db.status("long") == "done"


def test_stop_keeps_renewing_until_the_running_job_ends(fleet, db):
    """Graceful stop on SIGTERM keeps the lease renewed until the job ends (case B28).

    A runs a job three lease periods long and receives SIGTERM one lease
    period into it (its handler calls ``scheduler.stop(timeout=10)``), while
    B polls the same table. A keeps renewing, records ``succeeded`` and exits;
    B never starts the run: exactly one execution.
    """
    _signal_owner_mid_run(fleet, db, "SIGTERM", 10.0)


# Signal handling does not depend on the database: these variants run on SQLite.
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("signame", "stop_timeout"),
    [
        pytest.param("SIGINT", 10.0, id="sigint"),
        pytest.param("SIGTERM", 0.5, id="sigterm-short-timeout"),
    ],
)
def test_stop_variants_never_duplicate_the_running_job(
    fleet, db, signame, stop_timeout
):
    """SIGINT, or a stop timeout shorter than the job, never duplicates it (case B28).

    SIGINT arrives as ``KeyboardInterrupt`` in the main thread, which then
    calls ``stop()``: same result as SIGTERM. With a stop timeout shorter than
    the job, ``stop()`` returns early, yet the run is never duplicated: the
    process finishes it before exiting (the lease stays renewed meanwhile) or
    it is recovered only once the process is gone, so no two executions
    overlap.
    """
    _signal_owner_mid_run(fleet, db, signame, stop_timeout)


def _signal_owner_mid_run(fleet, db, signame, stop_timeout):
    db.create()
    job = fleet.job(
        "long", {"at": _now()}, seconds=3 * LEASE, max_attempts=2, retry_wait_fixed=0.1
    )
    a = fleet.spawn("a", [job], stop_timeout=stop_timeout)
    b = fleet.spawn("b", [job], wait_for_go=True)

    wait_until(
        lambda: fleet.executions("long"),
        15,
        "A to start the job",
        explain=fleet.explain,
    )
    b.go()
    wait_until(b.started, 10, "B to start", explain=fleet.explain)
    started = fleet.executions("long")[0]["start"]
    time.sleep(max(started + LEASE - time.time(), 0.0))
    a.send(getattr(signal, signame))
    assert a.wait(20) == 0, fleet.explain()
    exited_at = a.died_at

    wait_until(
        lambda: db.status("long") in ("done", "failed"),
        2 * LEASE + 10,
        "the job to end",
        explain=fleet.explain,
    )
    wait_until(
        lambda: all(e["end"] for e in fleet.executions("long")),
        2 * LEASE + 10,
        "every execution to end",
        explain=fleet.explain,
    )
    _stop(b)
    db.assert_nothing_running()
    executions = fleet.executions("long")
    for execution in executions:
        if execution["pid"] == a.pid and execution["end"] is None:
            execution["died"] = exited_at
    assert_no_overlap(executions, "long")

    log = a.log()
    assert f"SIGNAL {int(getattr(signal, signame))}" in log
    stopped_at = float(
        next(ln for ln in log.splitlines() if " STOPPED" in ln).split()[0]
    )
    runs = db.started_runs("long")
    if stop_timeout > 3 * LEASE:
        assert stopped_at >= executions[0]["end"] - 0.05, (
            "stop() returned before the job"
        )
    if stop_timeout < 3 * LEASE:
        assert stopped_at < executions[0]["end"], "stop() waited past its timeout"

    assert len(executions) == 1, executions
    assert executions[0]["pid"] == a.pid
    assert executions[0]["end"] <= exited_at
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "succeeded")]
    assert owner_pid(runs[0]["owner"]) == a.pid
    assert db.status("long") == "done"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_stop_gives_back_claims_that_never_started(make_scheduler, db, monkeypatch):
    """stop() gives back a run it claimed but never started (case B28).

    The poller claimed two due jobs, but only one worker thread is free: the
    second claim waits in the pool's queue when ``stop()`` is called. ``stop()``
    promises to give such claims back: the row must be ``scheduled`` again with
    no run left ``running``, so another process runs it at once, instead of
    the stopped process holding (and renewing) a lease on a run that will never
    start.
    """
    import jobsched._worker as worker_module

    pool = worker_module.ThreadPoolExecutor
    # One thread for two workers' worth of claims: the second claim is queued,
    # as it is when stop() comes between a claim and its pick-up by a thread.
    monkeypatch.setattr(
        worker_module, "ThreadPoolExecutor", lambda workers, **kw: pool(1, **kw)
    )
    release = threading.Event()
    ran = []
    due = datetime.now(timezone.utc) - timedelta(seconds=1)
    scheduler = make_scheduler(max_workers=2, poll_interval=0.05, lease=LEASE)
    scheduler.register(lambda: release.wait(10), name="a_long", at=due)
    scheduler.register(lambda: ran.append(1), name="b_queued", at=due)
    scheduler.jobs()
    scheduler.start()
    try:
        wait_until(
            lambda: db.status("a_long") == db.status("b_queued") == "running",
            10,
            "both jobs to be claimed",
        )
        scheduler.stop(timeout=0.5)
        time.sleep(2 * LEASE)
        row = db.job("b_queued")
        runs = db.runs("b_queued")
    finally:
        release.set()
        wait_until(lambda: db.status("a_long") == "done", 10, "the long job to end")
        forget_leases(scheduler)

    assert ran == []
    assert row["status"] == "scheduled", (
        f"a claim that never started is still held after stop(): {row}"
    )
    assert [r for r in runs if r["outcome"] == "running"] == []

    other = make_scheduler(lease=LEASE)
    other.register(lambda: ran.append(1), name="b_queued", at=due)
    assert [r.job for r in other.run_pending()] == ["b_queued"]
    assert ran == [1]
