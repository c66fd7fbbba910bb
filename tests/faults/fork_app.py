"""A pre-forking application server in miniature, as ``gunicorn --preload`` runs one.

Run as ``python fork_app.py CONFIG.json``. The "application module" part builds
one SQLAlchemy engine, uses it (so its pool holds a live connection), builds a
:class:`jobsched.Scheduler` and registers a job; then the process forks four
workers. Workers 0 and 2 start the scheduler object inherited from the parent;
workers 1 and 3 build their own ``Scheduler(engine)`` on the inherited engine,
as an application that creates its scheduler in a post-fork hook does. Each
worker polls for ``run_for`` seconds, stops, and exits; the parent exits 0 when
every worker did. Each worker logs to ``worker<N>.log`` in ``log_dir``.

Config keys: ``url``, ``prefix``, ``app_name``, ``lease``, ``poll``,
``results``, ``log_dir``, ``run_for``, ``every``, ``checkouts`` (a file
that records each checkout of a connection another process opened).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import faultjobs
from sqlalchemy import create_engine, event, text

from jobsched import Scheduler


def make_scheduler(engine: Any, config: dict[str, Any]) -> Scheduler:
    scheduler = Scheduler(
        engine,
        table_prefix=config["prefix"],
        lease=config["lease"],
        poll_interval=config["poll"],
    )
    scheduler.register(
        faultjobs.body,
        name="tick",
        every=config["every"],
        args=[config["results"], "tick"],
    )
    return scheduler


def worker(
    index: int, engine: Any, preloaded: Scheduler, config: dict[str, Any]
) -> int:
    logging.basicConfig(
        filename=os.path.join(config["log_dir"], f"worker{index}.log"),
        level=logging.DEBUG,
        format="%(created).3f %(process)d %(threadName)s %(levelname)s %(name)s "
        "%(message)s",
    )
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    log = logging.getLogger("fork_app")
    scheduler = preloaded if index % 2 == 0 else make_scheduler(engine, config)
    scheduler.start()
    log.info("STARTED %s", "inherited" if index % 2 == 0 else "own")
    time.sleep(config["run_for"])
    alive = scheduler.running
    scheduler.stop(timeout=10)
    log.info("OWNER %s", scheduler.owner)
    log.info("EXITING alive=%s", alive)
    return 0 if alive else 3


def record_checkouts(engine: Any, path: str) -> None:
    """Record every pool checkout of a connection opened by another process.

    A connection is known by the process that opened it and its object id;
    after ``fork()`` a worker holds copies of the master's connection objects,
    which share the master's sockets.
    """
    opened: set[tuple[int, int]] = set()

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        opened.add((os.getpid(), id(dbapi_connection)))

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if (os.getpid(), id(dbapi_connection)) not in opened:
            faultjobs.append(path, {"pid": os.getpid(), "conn": id(dbapi_connection)})


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    connect_args = {}
    if config["url"].startswith("postgresql"):
        connect_args["application_name"] = config["app_name"]

    # -- the application module, imported once in the master ----------------------
    engine = create_engine(config["url"], connect_args=connect_args)
    record_checkouts(engine, config["checkouts"])
    with engine.connect() as conn:  # the app talks to its database at import
        conn.execute(text("SELECT 1"))
    preloaded = make_scheduler(engine, config)
    preloaded.jobs()  # creates the tables and the job row, from the master

    # -- the master forks its workers ------------------------------------------
    children = []
    for index in range(4):
        pid = os.fork()
        if pid == 0:  # a worker
            code = 1
            try:
                code = worker(index, engine, preloaded, config)
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)

    statuses = [os.waitpid(pid, 0)[1] for pid in children]
    return 0 if all(status == 0 for status in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
