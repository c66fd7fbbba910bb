"""A long-running process that runs jobs in background threads until told to stop.

Run it from the project's root (it needs no server):

    .venv/bin/python examples/background_start.py

then press Ctrl-C, or send it SIGTERM (``kill <pid>``) as a process manager
would. Either signal stops the scheduler cleanly: nothing new is claimed, and a
job that is running is allowed to finish before the process exits.

The database is ``background.db`` in the current directory; pass a SQLAlchemy
URL as the only argument to use another one. Run two copies at once on the same
file and each fire time still runs in only one of them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType

from sqlalchemy import create_engine

from jobsched import Scheduler

url = sys.argv[1] if len(sys.argv) > 1 else "sqlite:///background.db"
scheduler = Scheduler(create_engine(url), max_workers=2)


@scheduler.job(name="background.heartbeat", every=2)
def heartbeat() -> None:
    print(f"[{os.getpid()}] heartbeat")


@scheduler.job(name="background.report", cron="*/10 * * * * *", seconds=True)
def report() -> None:
    # A slow job, so that stopping while it runs shows stop() waiting for it.
    print(f"[{os.getpid()}] report: started")
    time.sleep(3)
    print(f"[{os.getpid()}] report: done")


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("jobsched").setLevel(logging.INFO)

    # A signal handler runs in the main thread between two bytecodes, so it
    # only records the request; the main thread then calls stop(), which waits
    # for running jobs.
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        print(f"\n{signal.Signals(signum).name} received: stopping")
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    scheduler.start()
    print(f"[{os.getpid()}] running on {url}; press Ctrl-C or send SIGTERM to stop")
    stop_requested.wait()

    scheduler.stop(timeout=30)
    print("stopped")


if __name__ == "__main__":
    main()
