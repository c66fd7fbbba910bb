"""Fencing: a process that lost its lease writes nothing; owner tokens are unique.

Cases B15.3 (two schedulers with the same host name and process id) and
B15.4 (a paused or restarted owner must not overwrite its successor's state).
"""

from __future__ import annotations

import logging
import signal
import socket
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from tenacity import wait_fixed

from conftest import (
    LEASE,
    owner_pid,
    pause_outside_transaction,
    sqlite_path,
    wait_until,
)
from jobsched import JobState
from jobsched._decide import decide_claim
from jobsched.testing import FakeClock

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.mark.slow
def test_paused_owner_writes_nothing_after_takeover(fleet, db, backend, admin, db_url):
    """A process paused past its lease writes nothing when it resumes (case B15.4).

    A claims a one-off job (two attempts) and is frozen with SIGSTOP (at a
    moment when it holds no transaction). B recovers the run as abandoned and
    runs the second attempt to completion. A gets SIGCONT, its body ends, and
    its completion is fenced: the job row and the run history stay exactly as
    B left them, and A logs that it lost the job.
    """
    db.create()
    job = fleet.job(
        "fenced",
        {"at": datetime.now(timezone.utc).isoformat()},
        seconds=0.05,
        first_seconds=1.0,
        max_attempts=2,
        retry_wait_fixed=0.1,
    )
    a = fleet.spawn("a", [job])
    b = fleet.spawn("b", [job], wait_for_go=True)
    wait_until(
        lambda: fleet.executions("fenced"), 15, "A to start", explain=fleet.explain
    )
    pause_outside_transaction(a, backend, admin, sqlite_path(db_url))
    try:
        b.go()
        wait_until(
            lambda: db.status("fenced") == "done",
            2 * LEASE + 10,
            "B to take over and finish the job",
            explain=fleet.explain,
        )
        row_before = db.job("fenced")
        runs_before = db.runs("fenced")
    finally:
        a.send(signal.SIGCONT)

    wait_until(
        lambda: "lost" in "\n".join(a.log_lines("WARNING")),
        10,
        "A to notice that it lost the job",
        explain=fleet.explain,
    )
    wait_until(
        lambda: all(e["end"] for e in fleet.executions("fenced")),
        10,
        "A's body to end",
        explain=fleet.explain,
    )
    a.send(signal.SIGTERM)
    b.send(signal.SIGTERM)
    assert a.wait(15) == 0
    assert b.wait(15) == 0

    assert db.job("fenced") == row_before, "A wrote to the job row after losing it"
    assert db.runs("fenced") == runs_before, "A wrote to the run history"
    runs = [(r["attempt"], r["outcome"], owner_pid(r["owner"])) for r in runs_before]
    assert runs == [(1, "abandoned", a.pid), (2, "succeeded", b.pid)]
    assert row_before["status"] == "done"
    assert row_before["last_outcome"] == "succeeded"
    assert row_before["owner"] is None
    lost = [ln for ln in a.log_lines("WARNING") if "lost" in ln]
    assert lost and all("'fenced'" in ln for ln in lost), lost
    db.assert_nothing_running()


def _same_identity(monkeypatch):
    """Make every scheduler of this process look like ``host:4242``."""
    monkeypatch.setattr("os.getpid", lambda: 4242)
    monkeypatch.setattr(socket, "gethostname", lambda: "same-host")


def test_owner_tokens_differ_with_same_host_and_pid(monkeypatch, make_scheduler):
    """Two schedulers with one host name and pid get different owners (case B15.3)."""
    _same_identity(monkeypatch)
    first = make_scheduler(clock=FakeClock(T0))
    second = make_scheduler(clock=FakeClock(T0))
    assert first.owner != second.owner
    assert first.owner.startswith("same-host:4242:")
    assert second.owner.startswith("same-host:4242:")


def test_restart_with_same_pid_treats_old_run_as_foreign(
    monkeypatch, make_scheduler, db, caplog
):
    """A restart with the same host and pid does not adopt the old run (case B15.4).

    Scheduler ``old`` runs a job; in the middle of it, ``new`` (same host name,
    same process id: a restart that got the same pid) polls. While the lease
    of ``old`` is live, ``new`` leaves the run alone; once it has expired (the
    fake clock jumps past it, as if ``old`` had hung), ``new`` recovers it as
    abandoned and runs the retry. When ``old``'s body returns, its result is
    fenced off: nothing is written, and ``old`` logs that it lost the job.
    """
    caplog.set_level(logging.INFO, logger="jobsched")
    _same_identity(monkeypatch)
    clock = FakeClock(T0)
    seen = {}
    calls = []

    def make():
        scheduler = make_scheduler(clock=clock, lease=30.0)
        scheduler.register(
            work, name="job", at=T0, max_attempts=2, retry_wait=wait_fixed(1)
        )
        return scheduler

    def work() -> None:
        calls.append(clock.now())
        if len(calls) > 1:
            return  # the retry, run by ``new``
        clock.advance(29)  # the lease of ``old`` is still live
        seen["live"] = new.run_pending()
        seen["row_live"] = db.job("job")
        clock.advance(2)  # now it has expired
        seen["expired"] = new.run_pending()
        seen["row_after"] = db.job("job")
        seen["runs_after"] = db.runs("job")

    old = make()
    new = make()
    assert new.owner != old.owner

    [result] = old.run_pending()
    assert result.attempt == 1
    assert seen["live"] == []
    assert seen["row_live"]["status"] == "running"
    assert seen["row_live"]["owner"] == old.owner
    assert seen["expired"] == []  # recovered; the retry is due a second later
    assert seen["row_after"]["status"] == "scheduled"
    assert seen["row_after"]["owner"] is None
    # What ``old`` did after its body returned changed nothing.
    assert db.job("job") == seen["row_after"]
    assert db.runs("job") == seen["runs_after"]
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert lost, [r.getMessage() for r in caplog.records]

    clock.advance(1)
    assert [(r.attempt, r.outcome.value) for r in new.run_pending()] == [
        (2, "succeeded")
    ]
    assert len(calls) == 2
    runs = [(r["attempt"], r["outcome"], r["owner"]) for r in db.runs("job")]
    assert runs == [(1, "abandoned", old.owner), (2, "succeeded", new.owner)]
    assert new.get_job("job").status is JobState.DONE


def test_renewal_of_one_owner_never_extends_another(monkeypatch, make_scheduler, db):
    """Heartbeats of one owner never renew another's lease (case B15.3).

    Two schedulers in one process share host name and pid; ``first`` holds a
    run. ``second`` polling and renewing its own (empty) set of leases leaves
    the lease of ``first`` as it was, and ``first`` renewing moves it on.
    """
    _same_identity(monkeypatch)
    clock = FakeClock(T0)
    first = make_scheduler(clock=clock, lease=30.0)
    second = make_scheduler(clock=clock, lease=30.0)
    for scheduler in (first, second):
        scheduler.register(lambda: None, name="job", at=T0)
    first.jobs()  # creates the tables and the job row
    now = clock.now()
    [claim] = first.store.claim_due(
        {"job"}, first.owner, now, first.lease, 10, lambda row: decide_claim(row, now)
    )
    lease = db.job("job")["lease_until"]

    clock.advance(10)
    assert second.run_pending() == []
    # A claim of the same row and version, but under the other owner's token.
    forged = replace(claim, owner=second.owner)
    assert second.store.renew([forged], clock.now(), second.lease) == [forged]
    assert db.job("job")["lease_until"] == lease

    assert first.store.renew([claim], clock.now(), first.lease) == []
    assert db.job("job")["lease_until"] == lease + timedelta(seconds=10)
