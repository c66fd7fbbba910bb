"""Quick start: three kinds of job on a SQLite file, run for a few seconds.

Run it from the project's root:

    python3 -m venv .venv
    .venv/bin/pip install -e .
    .venv/bin/python examples/quickstart.py

It needs no server. The database is ``quickstart.db`` in a new temporary
directory; pass a SQLAlchemy URL as the only argument to use another one, for
example ``sqlite:///quickstart.db`` to keep the file in the current directory.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine

from jobsched import Scheduler

RUN_FOR = 6.0  # seconds of polling before the history is printed


def database_url() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    directory = Path(tempfile.mkdtemp(prefix="jobsched-quickstart-"))
    return f"sqlite:///{directory / 'quickstart.db'}"


def main() -> None:
    url = database_url()
    print(f"database: {url}")
    scheduler = Scheduler(create_engine(url))

    # A cron schedule. With seconds=True the expression has six fields and the
    # first one is the second: this fires at :00, :02, :04 ... of every minute.
    @scheduler.job(name="quickstart.tick", cron="*/2 * * * * *", seconds=True)
    def tick() -> None:
        print("  tick")

    # An interval: every 3 seconds of elapsed time, counted from registration.
    @scheduler.job(name="quickstart.heartbeat", every=3)
    def heartbeat() -> None:
        print("  heartbeat")

    # No schedule: this job runs only when it is enqueued, with JSON arguments.
    @scheduler.job(name="quickstart.greet")
    def greet(who: str, times: int = 1) -> None:
        print("  " + " ".join([f"hello, {who}!"] * times))

    in_two_seconds = datetime.now(timezone.utc) + timedelta(seconds=2)
    one_off = scheduler.enqueue(
        greet, args=["world"], kwargs={"times": 2}, at=in_two_seconds
    )
    print(f"enqueued {one_off}")

    # The polling loop of a host application: run whatever is due, then wait.
    deadline = time.monotonic() + RUN_FOR
    while time.monotonic() < deadline:
        for result in scheduler.run_pending():
            print(
                f"ran {result.job} for {result.scheduled_for:%H:%M:%S}: "
                f"{result.outcome.value} in {result.duration * 1000:.1f} ms"
            )
        time.sleep(0.1)

    print("\nrun history, oldest first:")
    history = scheduler.runs(limit=100).items
    for run in reversed(history):
        print(
            f"  #{run.id:<3} {run.job:<40} fire time {run.scheduled_for:%H:%M:%S}"
            f"  attempt {run.attempt}  {run.outcome.value}"
        )


if __name__ == "__main__":
    main()
